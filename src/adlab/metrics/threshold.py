"""Score ranking and the F1-optimal threshold (F1-max).

torchmetrics' binary curve metrics treat scores outside ``[0, 1]`` as logits and apply a sigmoid.
Anomaly scores are unbounded (feature distances, reconstruction errors), and the float32 sigmoid
saturates to exactly 1.0 above ~17, which turns distinct scores into ties and silently corrupts
AUROC, AP and thresholds. :func:`sort_by_score` therefore replaces scores by their dense ranks
scaled to ``[0, 1]``: order and ties are kept exactly, so every rank-based metric is unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_precision_recall_curve


class SortedScores(NamedTuple):
    """Flattened scores in descending order with their ranks and labels.

    Attributes:
        values: ``(M,)`` original scores, descending.
        ranks: ``(M,)`` float64 dense ranks in ``[0, 1]`` (equal scores share a rank, the highest
            score has rank 1), descending.
        target: ``(M,)`` int64 labels in ``{0, 1}``, in the same order.
        order: ``(M,)`` int64 permutation: ``values == scores.flatten()[order]``.
    """

    values: Tensor
    ranks: Tensor
    target: Tensor
    order: Tensor


def sort_by_score(scores: Tensor, target: Tensor) -> SortedScores:
    """Sort scores once and replace them by ranks that torchmetrics will not squash with a sigmoid.

    The sort is shared by all pixel metrics, and torchmetrics' internal argsort is much faster on
    already sorted ranks.

    Args:
        scores: ``(...)`` float scores, higher = more anomalous.
        target: ``(...)`` labels in ``{0, 1}`` with as many elements as ``scores``.

    Returns:
        The sorted :class:`SortedScores`.
    """
    values, order = torch.sort(scores.flatten(), descending=True)
    is_new = torch.ones_like(values, dtype=torch.bool)
    is_new[1:] = values[1:] != values[:-1]
    dense = torch.cumsum(is_new, dim=0)  # 1 for the highest score, U for the lowest
    n_unique = int(dense[-1]) if dense.numel() else 1
    ranks = (n_unique - dense).double() / max(n_unique - 1, 1)
    return SortedScores(values, ranks, target.flatten()[order].long(), order)


def f1_max_sorted(scores: SortedScores) -> tuple[float, float]:
    """F1-max of :class:`SortedScores`; see :func:`f1_max`."""
    if not bool((scores.target == 1).any()):
        return float("nan"), float("nan")
    precision, recall, thresholds = binary_precision_recall_curve(
        scores.ranks, scores.target, thresholds=None, validate_args=False
    )
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, 0.0)
    best = int(torch.argmax(f1))
    n_positive = int((scores.ranks >= thresholds[best]).sum())
    return float(f1[best]), float(scores.values[n_positive - 1])


def f1_max(preds: Tensor, target: Tensor) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold that achieves it.

    Uses torchmetrics' exact precision-recall curve (``thresholds=None``): every distinct score is
    a candidate threshold, and a sample is predicted anomalous when ``score >= threshold``. Among
    equal F1 values the lowest threshold wins.

    Args:
        preds: ``(...)`` float scores, any range, higher = more anomalous.
        target: ``(...)`` labels in ``{0, 1}`` with as many elements as ``preds``.

    Returns:
        ``(f1, threshold)``, where ``threshold`` is one of the input scores. Both are nan when
        ``target`` has no positives (F1 is undefined). Without negatives, F1 is 1 at the lowest
        score.
    """
    return f1_max_sorted(sort_by_score(preds, target))
