"""AnomalyMetrics: every image- and pixel-level metric of an evaluation epoch in one Metric."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.utilities import dim_zero_cat, rank_zero_warn

from adlab.metrics.aupro import aupro_sorted
from adlab.metrics.threshold import SortedScores, f1_max_sorted, sort_by_score

IMAGE_METRIC_NAMES = ("img_auroc", "img_f1max", "img_ap", "img_threshold")
PIXEL_METRIC_NAMES = ("pixel_auroc", "pixel_f1max", "pixel_ap", "pixel_aupro", "pixel_threshold")
METRIC_NAMES = IMAGE_METRIC_NAMES + PIXEL_METRIC_NAMES
"""Keys of :meth:`AnomalyMetrics.compute`, in order (pixel keys only when maps were given)."""


class AnomalyMetrics(Metric):
    """Image AUROC/F1-max/AP/threshold and pixel AUROC/F1-max/AP/AUPRO/threshold.

    ``compute`` returns a dict keyed by :data:`METRIC_NAMES`. The thresholds are the F1-optimal
    scores (predict anomalous when ``score >= threshold``). Pixel metrics pool the pixels of the
    images whose mask is known (``has_mask``); pixel keys are present when ``pixel_metrics`` is True
    and ``update`` received anomaly maps. Undefined metrics (e.g. a validation set of normal images
    only) are nan, with one warning per ``compute``.

    States are lists concatenated across processes (``dist_reduce_fx="cat"``), so the metric is
    exact under DDP. Memory: per image one score and label, plus ``H * W`` float32 scores and uint8
    masks (5 bytes per pixel, 66 MB for 200 images at 256x256) for images with a mask; ``compute``
    briefly needs about 40 bytes per pixel. Pass ``compute_on_cpu=True`` to keep the states on CPU.

    Args:
        pixel_metrics: compute pixel-level metrics from ``anomaly_map`` and ``gt_mask``.
        aupro_fpr_limit: FPR integration limit of AUPRO, in ``(0, 1]``.
        **kwargs: torchmetrics ``Metric`` options (``compute_on_cpu``, ``dist_sync_on_step``, ...).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(
        self, pixel_metrics: bool = True, aupro_fpr_limit: float = 0.3, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < aupro_fpr_limit <= 1:
            raise ValueError(f"aupro_fpr_limit must be in (0, 1], got {aupro_fpr_limit}")
        self.pixel_metrics = pixel_metrics
        self.aupro_fpr_limit = aupro_fpr_limit
        for name in ("pred_scores", "gt_labels", "anomaly_maps", "gt_masks"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        pred_score: Tensor,
        gt_label: Tensor,
        anomaly_map: Tensor | None = None,
        gt_mask: Tensor | None = None,
        has_mask: Tensor | None = None,
    ) -> None:
        """Store one batch.

        Args:
            pred_score: ``(B,)`` image scores, higher = more anomalous.
            gt_label: ``(B,)`` image labels, 0 = normal, 1 = anomalous.
            anomaly_map: ``(B, 1, H, W)`` pixel scores; ignored when ``pixel_metrics`` is False.
            gt_mask: ``(B, 1, H, W)`` in ``{0, 1}``; required with ``anomaly_map``.
            has_mask: ``(B,)`` bool, False for images whose mask is unknown (skipped by pixel
                metrics); None means all masks are known.
        """
        _check_finite("pred_score", pred_score)
        self.pred_scores.append(pred_score.detach().flatten().float())
        self.gt_labels.append(gt_label.detach().flatten().long())
        if anomaly_map is None or not self.pixel_metrics:
            return
        if gt_mask is None:
            raise ValueError("gt_mask is required when anomaly_map is given")
        size = (len(pred_score), *anomaly_map.shape[-2:])
        maps, masks = anomaly_map.detach().reshape(size), gt_mask.detach().reshape(size)
        if has_mask is not None:
            keep = has_mask.to(device=maps.device, dtype=torch.bool).flatten()
            maps, masks = maps[keep], masks[keep]
        _check_finite("anomaly_map", maps)
        self.anomaly_maps.append(maps.float())
        self.gt_masks.append((masks > 0.5).to(torch.uint8))

    def compute(self) -> dict[str, float]:
        """All metrics as Python floats (nan where undefined), keyed by :data:`METRIC_NAMES`."""
        labels = _cat(self.gt_labels)
        results = _binary_metrics(sort_by_score(_cat(self.pred_scores), labels), "img")
        notes = [_class_counts("images", labels)]
        if self.pixel_metrics and _stored(self.anomaly_maps):
            masks = _cat(self.gt_masks)
            pixels = sort_by_score(_cat(self.anomaly_maps), masks)
            results |= _binary_metrics(pixels, "pixel")
            # masks.ndim is 1 when every process's list was empty (torchmetrics syncs a 1-D [])
            results["pixel_aupro"] = (
                aupro_sorted(pixels, masks, self.aupro_fpr_limit) if masks.ndim == 3 else math.nan
            )
            notes.append(_class_counts("pixels of images with a mask", masks))
        undefined = [name for name, value in results.items() if math.isnan(value)]
        if undefined:
            rank_zero_warn(
                f"AnomalyMetrics: {', '.join(undefined)} undefined (a single class or no data), "
                f"returned as nan; {'; '.join(notes)}.",
                UserWarning,
            )
        return {name: results[name] for name in METRIC_NAMES if name in results}


def _check_finite(name: str, values: Tensor) -> None:
    """Refuse NaN/inf scores: every ranking metric would silently treat them as ordinary values."""
    bad = int((~torch.isfinite(values.detach())).sum())
    if bad:
        raise ValueError(
            f"{name} has {bad} non-finite value(s) (NaN or inf) out of {values.numel()}; "
            "the model has diverged or a post-processing step divided by zero"
        )


def _stored(state: list[Tensor] | Tensor) -> bool:
    """Whether a list state holds data (under DDP, ``compute`` sees it synced to one tensor)."""
    return state.numel() > 0 if isinstance(state, Tensor) else len(state) > 0


def _cat(state: list[Tensor]) -> Tensor:
    """Concatenate a list state along dim 0 (an empty float tensor when nothing was stored)."""
    return dim_zero_cat(state) if len(state) else torch.empty(0)


def _class_counts(what: str, target: Tensor) -> str:
    """E.g. ``"images: 20 normal, 0 anomalous"`` for a warning."""
    n_positive = int((target == 1).sum())
    return f"{what}: {target.numel() - n_positive} normal, {n_positive} anomalous"


def _binary_metrics(scores: SortedScores, prefix: str) -> dict[str, float]:
    """AUROC, F1-max, AP and the F1-optimal threshold via torchmetrics' exact curves.

    Args:
        scores: image or pixel scores and labels from :func:`sort_by_score`.
        prefix: ``"img"`` or ``"pixel"``.

    Returns:
        ``{prefix}_auroc``, ``_f1max``, ``_ap``, ``_threshold``. AUROC needs both classes; AP,
        F1-max and the threshold need positives. Undefined values are nan.
    """
    names = [f"{prefix}_{name}" for name in ("auroc", "f1max", "ap", "threshold")]
    results = dict.fromkeys(names, math.nan)
    n_positive = int(scores.target.sum())
    if n_positive == 0:
        return results
    if n_positive < scores.target.numel():
        auroc = binary_auroc(scores.ranks, scores.target, validate_args=False)
        results[names[0]] = float(auroc)
    results[names[1]], results[names[3]] = f1_max_sorted(scores)
    ap = binary_average_precision(scores.ranks, scores.target, validate_args=False)
    results[names[2]] = float(ap)
    return results
