"""Foreground masks: where the object is, estimated from normal training images or read from disk.

The estimate assumes the image border shows background (true for centred objects such as MVTec's
bottle, hazelnut or screw; not for textures, which need no mask). Each pixel's distance to the
background colour is thresholded (Otsu's method, or a given value), the per-image masks vote, and
kornia morphology removes specks, fills small holes and adds a safety margin.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from kornia.filters import otsu_threshold
from kornia.morphology import closing, dilation, opening

from adlab.data.io import read_mask


def _disc(radius: int) -> torch.Tensor:
    """``(2r+1, 2r+1)`` disc-shaped structuring element of ones."""
    axis = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return (axis[:, None] ** 2 + axis[None, :] ** 2 <= radius**2 + 0.5).float()


def background_distance(images: torch.Tensor, border: int = 2) -> torch.Tensor:
    """Per-pixel colour distance to the background colour seen on the image border.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        border: width in pixels of the frame read as background.

    Returns:
        ``(N, 1, H, W)`` Euclidean RGB distance to the median border colour of all images.
    """
    if images.ndim != 4 or not 0 < 2 * border < min(images.shape[-2:]):
        raise ValueError(
            f"expected (N, C, H, W) images larger than twice border={border}, "
            f"got {tuple(images.shape)}"
        )
    frame = torch.ones(images.shape[-2:], dtype=torch.bool)
    frame[border:-border, border:-border] = False
    pixels = rearrange(images[..., frame], "n c p -> (n p) c")
    background = pixels.median(dim=0).values
    return (images - background[None, :, None, None]).norm(dim=1, keepdim=True)


def estimate_foreground_mask(
    images: torch.Tensor,
    border: int = 2,
    threshold: float | None = None,
    min_fraction: float = 0.5,
    cleanup_radius: int = 2,
    margin: int = 2,
) -> torch.Tensor:
    """Estimate the object's mask from normal images.

    Args:
        images: ``(N, 3, H, W)`` normal training images in ``[0, 1]``.
        border: width in pixels of the frame assumed to be background.
        threshold: RGB distance to the background above which a pixel is foreground; None picks
            it with Otsu's method on the distances of all images.
        min_fraction: a pixel is foreground when at least this fraction of images says so.
        cleanup_radius: radius of the disc used for opening then closing (0 = no cleanup).
        margin: final dilation radius in pixels, a tolerance for object shifts (0 = none).

    Returns:
        ``(1, 1, H, W)`` float mask in ``{0, 1}``, 1 on the object.
    """
    distance = background_distance(images, border)
    if threshold is None:
        _, threshold_t = otsu_threshold(rearrange(distance, "n 1 h w -> (n h) w"))
        threshold = float(threshold_t.flatten()[0])
    votes = (distance > threshold).float().mean(dim=0, keepdim=True)
    mask = (votes >= min_fraction).float()
    if cleanup_radius > 0:
        kernel = _disc(cleanup_radius)
        mask = closing(opening(mask, kernel), kernel)
    if margin > 0:
        mask = dilation(mask, _disc(margin))
    if not mask.any():
        raise ValueError(
            f"foreground estimate is empty (threshold {threshold:.4g} on the distance to the "
            "border colour): give foreground.threshold, or a mask image with foreground.mask_path"
        )
    return mask


def load_mask(
    path: str | Path, size: tuple[int, int], center_crop: int | None = None
) -> torch.Tensor:
    """Read a user-provided mask image (nonzero = foreground) in the original image frame, resized
    (nearest) to ``size`` and centre-cropped to ``center_crop`` as the data module does.

    Returns:
        ``(1, 1, H, W)`` float mask in ``{0, 1}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"foreground mask image not found: {path} (expected an image file)")
    mask = read_mask(path)[None]
    mask = F.interpolate(mask, size=size, mode="nearest-exact")
    if center_crop is not None:
        top, left = (size[0] - center_crop) // 2, (size[1] - center_crop) // 2
        mask = mask[..., top : top + center_crop, left : left + center_crop]
    if not mask.any():
        raise ValueError(f"foreground mask {path} is all zeros: expected nonzero object pixels")
    return (mask > 0).float()
