"""Map-level post-processing shared by every method: smoothing, resizing, masking, scores."""

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


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size`` x ``size`` window of ``(B, C, H, W)`` (torchvision ``CenterCrop``'s
    offsets ``round((H - size) / 2)``): DDAD's official evaluation crops map and mask to 224."""
    height, width = x.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"postprocess.eval_crop={size} is larger than the map ({height}x{width})")
    top, left = int(round((height - size) / 2)), int(round((width - size) / 2))
    return x[..., top : top + size, left : left + size]


def max_score(anomaly_map: torch.Tensor) -> torch.Tensor:
    """Image score as the maximum of the map: ``(B, 1, H, W) -> (B,)``."""
    return anomaly_map.flatten(1).amax(dim=1)


def mask_map(anomaly_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Restrict a map to a region: pixels outside ``mask`` get the least anomalous value.

    Background pixels are set to ``min(0, anomaly_map.min())``: zero for the usual non-negative
    (error) maps, and never above a foreground pixel for signed maps. The minimum is over the
    whole tensor, so signed maps give results independent of batching only when all images are
    masked at once (as ``evaluate.py`` does); non-negative maps always get 0.

    Args:
        anomaly_map: ``(B, 1, H, W)``.
        mask: ``(1, 1, H, W)`` or ``(B, 1, H, W)``, nonzero inside the region.

    Returns:
        ``(B, 1, H, W)`` masked map.
    """
    if mask.shape[-2:] != anomaly_map.shape[-2:]:
        raise ValueError(
            f"mask of size {tuple(mask.shape[-2:])} does not match the anomaly map size "
            f"{tuple(anomaly_map.shape[-2:])}"
        )
    fill = anomaly_map.amin().clamp(max=0.0)
    return torch.where(mask.to(anomaly_map.device) > 0, anomaly_map, fill)
