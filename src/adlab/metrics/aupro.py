"""AUPRO: area under the per-region-overlap curve up to a false-positive-rate limit.

Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021: each connected component
``C_k`` of the ground truth is one region, and at threshold ``t``

    PRO(t) = 1/K * sum_k |P(t) & C_k| / |C_k|,    FPR(t) = |P(t) & normal pixels| / |normal pixels|,

with ``P(t)`` the pixels scoring ``>= t``. PRO is integrated over FPR in ``[0, fpr_limit]`` and
divided by ``fpr_limit``, so a perfect map scores 1 and a constant map scores ``fpr_limit / 2``.

All thresholds are evaluated at once: with pixels sorted by score, ``sum_k |P(t) & C_k| / |C_k|``
is a cumulative sum of the weight ``1 / |C_k|`` of each defect pixel, and the false positives are a
cumulative count of normal pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from adlab.metrics.threshold import SortedScores, sort_by_score


def aupro(anomaly_maps: Tensor, masks: Tensor, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve for ``FPR <= fpr_limit``.

    Regions are the 8-connected components of each image's mask; normal pixels of all images
    (including the background of defective images) define the FPR.

    Args:
        anomaly_maps: ``(N, 1, H, W)`` or ``(N, H, W)`` float scores, higher = more anomalous.
        masks: ground truth of the same shape, in ``{0, 1}``.
        fpr_limit: upper integration limit in ``(0, 1]``.

    Returns:
        AUPRO in ``[0, 1]``; nan when there is no anomalous region or no normal pixel.
    """
    if anomaly_maps.shape != masks.shape:
        raise ValueError(f"shape mismatch: maps {anomaly_maps.shape}, masks {masks.shape}")
    return aupro_sorted(sort_by_score(anomaly_maps, masks > 0.5), masks, fpr_limit)


def aupro_sorted(scores: SortedScores, masks: Tensor, fpr_limit: float = 0.3) -> float:
    """:func:`aupro` from pixel scores already sorted by :func:`sort_by_score`.

    Args:
        scores: ``sort_by_score(anomaly_maps, masks)``, shared with the other pixel metrics.
        masks: ``(N, 1, H, W)`` or ``(N, H, W)`` ground truth in ``{0, 1}``.
        fpr_limit: upper integration limit in ``(0, 1]``.

    Returns:
        AUPRO in ``[0, 1]``; nan when there is no anomalous region or no normal pixel.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    weights, n_regions = region_weights(masks.reshape(-1, *masks.shape[-2:]) > 0.5)
    is_normal = scores.target == 0
    if n_regions == 0 or not bool(is_normal.any()):
        return float("nan")
    weights = weights.flatten()[scores.order] / n_regions
    fpr, pro = pro_curve(scores.values, weights, is_normal)
    return float(_area_up_to(fpr, pro, fpr_limit) / fpr_limit)


def region_weights(masks: Tensor) -> tuple[Tensor, int]:
    """Weight ``1 / |C_k|`` of every defect pixel, labelling 8-connected regions per image.

    Args:
        masks: ``(N, H, W)`` bool ground truth.

    Returns:
        ``(weights, K)``: ``(N, H, W)`` float64 weights on ``masks.device`` (0 on normal pixels) and
        the number of regions ``K`` over all images.
    """
    structure = np.ones((3, 3), dtype=int)
    weights = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i, mask in enumerate(masks.cpu().numpy()):
        labels, n = ndimage.label(mask, structure=structure)
        if n == 0:
            continue
        inv_size = np.zeros(n + 1)
        inv_size[1:] = 1.0 / np.bincount(labels.ravel(), minlength=n + 1)[1:]
        weights[i] = inv_size[labels]
        n_regions += n
    return torch.from_numpy(weights).to(masks.device), n_regions


def pro_curve(scores: Tensor, weights: Tensor, is_normal: Tensor) -> tuple[Tensor, Tensor]:
    """PRO and FPR at every distinct score, from two cumulative sums over sorted pixels.

    Args:
        scores: ``(M,)`` pixel scores, descending.
        weights: ``(M,)`` float64 ``1 / (K |C_k|)`` for defect pixels, 0 for normal pixels.
        is_normal: ``(M,)`` bool, True for normal pixels (at least one).

    Returns:
        ``(fpr, pro)``, each ``(T + 1,)`` float64 and non-decreasing: ``(0, 0)`` followed by one
        point per distinct score ``t`` (descending), for the prediction ``score >= t``.
    """
    is_last = torch.ones_like(scores, dtype=torch.bool)  # last pixel of a group of equal scores
    is_last[:-1] = scores[1:] != scores[:-1]
    last = torch.nonzero(is_last).squeeze(1)
    false_pos = torch.cumsum(is_normal, dim=0)
    fpr = false_pos[last].double() / false_pos[-1]
    pro = torch.cumsum(weights, dim=0)[last]
    zero = fpr.new_zeros(1)
    return torch.cat([zero, fpr]), torch.cat([zero, pro])


def _area_up_to(fpr: Tensor, pro: Tensor, fpr_limit: float) -> Tensor:
    """Trapezoidal area under ``pro(fpr)`` on ``[0, fpr_limit]``, interpolating at the limit.

    Args:
        fpr: ``(T,)`` non-decreasing, starting at 0 and ending at 1.
        pro: ``(T,)`` matching PRO values.
        fpr_limit: upper limit in ``(0, 1]``.

    Returns:
        Scalar tensor with the area.
    """
    end = int(torch.searchsorted(fpr, fpr.new_tensor([fpr_limit]), right=True))
    x, y = fpr[:end], pro[:end]
    if end < len(fpr):  # fpr[end - 1] <= fpr_limit < fpr[end]
        weight = (fpr_limit - fpr[end - 1]) / (fpr[end] - fpr[end - 1])
        y_limit = torch.lerp(pro[end - 1], pro[end], weight)
        x = torch.cat([x, x.new_tensor([fpr_limit])])
        y = torch.cat([y, y_limit[None]])
    return torch.trapezoid(y, x)
