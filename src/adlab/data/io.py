"""Image and mask file I/O: listing, cheap header checks, decoding to float tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# PIL modes holding 16- or 32-bit integer grey levels; scaled by the 16-bit range.
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_UINT16_MAX = 65535.0


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file with an accepted image extension."""
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def list_images(directory: Path, recursive: bool = False) -> list[Path]:
    """Sorted image files in ``directory``, ignoring hidden and non-image files.

    Args:
        directory: folder to scan.
        recursive: also scan visible sub-folders.
    """
    if recursive:
        candidates = (
            p
            for p in directory.rglob("*")
            if not any(part.startswith(".") for part in p.relative_to(directory).parts)
        )
    else:
        candidates = directory.iterdir()
    return sorted(p for p in candidates if is_image_file(p))


def verify_image(path: Path) -> None:
    """Check that PIL recognises the file and its container is intact, without decoding pixels.

    Raises:
        OSError, SyntaxError or ValueError: from PIL when the file is not a readable image.
    """
    with Image.open(path) as img:
        img.verify()


def _visible_bands(img: Image.Image) -> np.ndarray:
    """Pixel array ``(H, W)`` or ``(H, W, C)`` without alpha; palettes are expanded."""
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    arr = np.asarray(img)
    bands = img.getbands()
    if arr.ndim == 3 and any(b in ("A", "a") for b in bands):
        arr = arr[..., [i for i, b in enumerate(bands) if b not in ("A", "a")]]
    return arr


def read_image(path: Path) -> torch.Tensor:
    """Decode an image file to RGB.

    Grey images are replicated to 3 channels, alpha is dropped, palettes are expanded, and 16-bit
    (PIL modes ``I;16*``/``I``) images are scaled by 65535; float images (mode ``F``) are clipped.

    Returns:
        float32 ``(3, H, W)`` in ``[0, 1]``.
    """
    with Image.open(path) as img:
        if img.mode in _INT_MODES:
            arr = np.asarray(img, dtype=np.float32) / _UINT16_MAX
        elif img.mode == "F":
            arr = np.asarray(img, dtype=np.float32)
        else:
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(arr)).clamp_(0.0, 1.0)
    if x.ndim == 2:
        return x.expand(3, -1, -1).clone()
    return x.permute(2, 0, 1).contiguous()


def read_mask(path: Path) -> torch.Tensor:
    """Decode a mask file; any nonzero (non-alpha) value is foreground.

    Returns:
        float32 ``(1, H, W)`` in ``{0, 1}``.
    """
    with Image.open(path) as img:
        arr = _visible_bands(img)
    fg = arr != 0
    if fg.ndim == 3:
        fg = fg.any(axis=-1)
    return torch.from_numpy(fg).to(torch.float32).unsqueeze(0)
