"""Shared post-processing of anomaly maps, applied once for every method."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d


def gaussian_smooth(anomaly_map: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-smooth a map; ``sigma <= 0`` returns it unchanged.

    Args:
        anomaly_map: ``(B, 1, H, W)``.
        sigma: standard deviation in pixels; the kernel spans +-4 sigma (odd size), cut to
            ``2 * min(H, W) - 1`` so reflect padding works on small maps.

    Returns:
        ``(B, 1, H, W)`` smoothed map.
    """
    if sigma <= 0:
        return anomaly_map
    size = min(2 * math.ceil(4 * sigma) + 1, 2 * min(anomaly_map.shape[-2:]) - 1)
    return gaussian_blur2d(anomaly_map, (size, size), (sigma, sigma), border_type="reflect")


def resize_map(anomaly_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``(B, 1, h, w)`` to ``(B, 1, *size)``; a no-op at the right size."""
    if tuple(anomaly_map.shape[-2:]) == tuple(size):
        return anomaly_map
    return F.interpolate(anomaly_map, size=size, mode="bilinear", align_corners=False)


def max_score(anomaly_map: torch.Tensor) -> torch.Tensor:
    """Image score as the maximum of the map: ``(B, 1, H, W) -> (B,)``."""
    return anomaly_map.flatten(1).amax(dim=1)
