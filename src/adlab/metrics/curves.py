"""ROC and precision-recall curves for plots (the metric values come from AnomalyMetrics)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc


class Curves(NamedTuple):
    """``fpr``/``tpr`` of the ROC and ``precision``/``recall`` of the PR curve, 1-D tensors."""

    fpr: torch.Tensor
    tpr: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor


def _unit_range(scores: torch.Tensor) -> torch.Tensor:
    """Min-max scale to ``[0, 1]``: torchmetrics applies a sigmoid to scores outside it, which
    would merge large raw scores; a monotone rescaling leaves both curves unchanged."""
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low).clamp_min(torch.finfo(scores.dtype).tiny)


def roc_pr_curves(scores: torch.Tensor, target: torch.Tensor, bins: int | None = None) -> Curves:
    """Both curves of a binary scoring.

    Args:
        scores: any shape, higher = more positive (e.g. ``(N,)`` image scores or
            ``(N, 1, H, W)`` pixel scores).
        target: same shape, in ``{0, 1}``.
        bins: None for the exact curves; an int evaluates that many evenly spaced thresholds
            on the rescaled scores (bounded time and memory for millions of pixels).

    Returns:
        :class:`Curves`; empty tensors when ``target`` lacks a class.
    """
    scores, target = scores.detach().flatten().float().cpu(), target.detach().flatten().long().cpu()
    n_positive = int(target.sum())
    if n_positive in (0, target.numel()):
        empty = torch.empty(0)
        return Curves(empty, empty, empty, empty)
    preds = _unit_range(scores)
    fpr, tpr, _ = binary_roc(preds, target, thresholds=bins, validate_args=False)
    precision, recall, _ = binary_precision_recall_curve(
        preds, target, thresholds=bins, validate_args=False
    )
    return Curves(fpr, tpr, precision, recall)
