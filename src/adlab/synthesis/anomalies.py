"""Synthetic anomalies for self-supervised training: DRAEM texture blends and labelled cutout.

DRAEM (Zavrtanik et al., ICCV 2021, sec. 3.3): an anomaly source image ``A`` (a texture folder
such as DTD, or generated Perlin textures), augmented by 3 random ops, is blended into the normal
image ``I`` inside a thresholded Perlin mask ``M``:
``I_a = (1 - M) I + (1 - beta) M A + beta M I`` (eq. 4). Labelled cutout (our extension, spec
section 7) replaces 1-3 rectangles by a fill and labels them anomalous. Every generator takes an
optional ``torch.Generator`` and returns ``(augmented, mask)`` with the mask exactly where the
image changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from kornia.enhance import (
    adjust_brightness,
    adjust_gamma,
    adjust_hue,
    adjust_saturation,
    equalize,
    invert,
    normalize_min_max,
    posterize,
    sharpness,
    solarize,
)
from kornia.geometry.transform import rotate
from torch import Tensor

from adlab.data.io import IMAGE_EXTENSIONS, read_image
from adlab.data.io import list_images as _list_image_files
from adlab.synthesis.noise import (
    _pair,
    _uniform,
    fractal_perlin_noise_2d,
    perlin_mask,
    random_perlin_resolutions,
)


def _rand(n: int, low: float, high: float, like: Tensor, g: torch.Generator | None) -> Tensor:
    """``(n,)`` samples of U[low, high) on ``like``'s device."""
    return low + (high - low) * _uniform((n,), like, g)


# ------------------------------------------------------------------ anomaly-source augmentations
# Kornia versions of the imgaug augmenters of the official code (data_loader.py); parameter
# ranges follow imgaug's (8-bit values / 255, imgaug hue 255 = 360 degrees).
SourceOp = Callable[[Tensor, "torch.Generator | None"], Tensor]


def _posterize(x: Tensor, g: torch.Generator | None) -> Tensor:
    return posterize(x, _rand(len(x), 1, 9, x, g).floor().long())  # imgaug nb_bits 1..8


def _sharpness(x: Tensor, g: torch.Generator | None) -> Tensor:
    return sharpness(x, _rand(len(x), 0.0, 2.0, x, g)).clamp(0, 1)


def _solarize(x: Tensor, g: torch.Generator | None) -> Tensor:
    return solarize(x, _rand(len(x), 32 / 255, 128 / 255, x, g))


def _brightness(x: Tensor, g: torch.Generator | None) -> Tensor:
    mul = _rand(len(x), 0.8, 1.2, x, g).view(-1, 1, 1, 1)
    return adjust_brightness((x * mul).clamp(0, 1), _rand(len(x), -30 / 255, 30 / 255, x, g))


def _hue_saturation(x: Tensor, g: torch.Generator | None) -> Tensor:
    hue = _rand(len(x), -50 / 255, 50 / 255, x, g) * 2 * math.pi
    return adjust_saturation(adjust_hue(x, hue), _rand(len(x), 0.6, 1.4, x, g))


def _gamma(x: Tensor, g: torch.Generator | None) -> Tensor:
    return adjust_gamma(x, _rand(len(x), 0.5, 2.0, x, g))


def _rotate(x: Tensor, g: torch.Generator | None) -> Tensor:
    return rotate(x, _rand(len(x), -45.0, 45.0, x, g))


SOURCE_OPS: dict[str, SourceOp] = {
    "posterize": _posterize,
    "sharpness": _sharpness,
    "solarize": _solarize,
    "equalize": lambda x, g: equalize(x),
    "brightness": _brightness,
    "hue_saturation": _hue_saturation,
    "autocontrast": lambda x, g: normalize_min_max(x),
    "gamma": _gamma,
    "invert": lambda x, g: invert(x),
    "rotate": _rotate,
}
"""Augmentations of anomaly sources: ``(n, 3, H, W)`` in [0, 1] and a generator -> same shape."""
PAPER_SOURCE_OPS = (
    "posterize",
    "sharpness",
    "solarize",
    "equalize",
    "brightness",
    "hue_saturation",
    "autocontrast",
)
"""The ops listed in the DRAEM paper (sec. 4.1)."""
CODE_SOURCE_OPS = (
    "gamma",
    "brightness",
    "sharpness",
    "hue_saturation",
    "solarize",
    "posterize",
    "invert",
    "autocontrast",
    "equalize",
    "rotate",
)
"""The 10 augmenters of the official code (data_loader.py)."""


def augment_sources(
    sources: Tensor,
    ops: Sequence[str] = PAPER_SOURCE_OPS,
    n_ops: int = 3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Apply ``n_ops`` distinct ops of ``ops`` in random order, drawn per image (DRAEM sec. 3.3).

    Args:
        sources: ``(n, 3, H, W)`` in [0, 1].
        ops: Names in :data:`SOURCE_OPS`.
        n_ops: Ops per image (paper: 3).
        generator: Optional ``torch.Generator``.

    Returns:
        ``(n, 3, H, W)`` in [0, 1].
    """
    unknown = set(ops) - set(SOURCE_OPS)
    if unknown or not 0 <= n_ops <= len(ops):
        raise ValueError(
            f"source ops must be {n_ops} or more of {sorted(SOURCE_OPS)}; got {list(ops)}"
        )
    order = _uniform((len(sources), len(ops)), sources, generator).argsort(dim=1)[:, :n_ops]
    out = sources.clone()
    for slot in range(n_ops):
        for k, name in enumerate(ops):
            idx = (order[:, slot] == k).nonzero().squeeze(1)
            if len(idx):
                out[idx] = SOURCE_OPS[name](out[idx], generator).clamp(0, 1)
    return out


# --------------------------------------------------------------------------- anomaly sources
def perlin_textures(
    n: int,
    size: tuple[int, int],
    octaves: int = 4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Coloured fractal Perlin textures, the offline stand-in for DTD.

    Each channel is fractal Perlin noise with the image's random base resolution ``2^[0, 4)`` per
    axis, stretched to [0, 1] per channel.

    Returns:
        ``(n, 3, H, W)`` in [0, 1].
    """
    res = repeat(random_perlin_resolutions(n, (0, 4), generator, device), "n r -> (n c) r", c=3)
    noise = fractal_perlin_noise_2d(size, res, octaves, generator=generator)
    return normalize_min_max(rearrange(noise, "(n c) h w -> n c h w", c=3))


def list_images(folder: str | Path) -> list[Path]:
    """Every image below ``folder`` (recursively, sorted), e.g. DTD's ``images/<class>/*.jpg``.

    Raises:
        FileNotFoundError: ``folder`` does not exist or holds no image.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"anomaly_source folder not found: {root} (expected a texture folder such as DTD's "
            "'images/'; use anomaly_source=null for generated Perlin textures)"
        )
    paths = _list_image_files(root, recursive=True)
    if not paths:
        raise FileNotFoundError(
            f"anomaly_source folder {root} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths


def load_sources(paths: Sequence[Path], size: tuple[int, int], device: torch.device) -> Tensor:
    """Read RGB images and resize them (bilinear, antialiased) to ``size``: ``(n, 3, H, W)``."""
    images = [
        F.interpolate(read_image(p)[None], size=size, mode="bilinear", antialias=True)
        for p in paths
    ]
    return torch.cat(images).clamp(0, 1).to(device)


# ------------------------------------------------------------------------------------- cutout
def _cutout_fill(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Per image one fill: zeros, mean colour, random colour or the image shifted (cut-paste)."""
    n, c, h, w = images.shape
    mean = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    colour = _uniform((n, c, 1, 1), images, generator).expand_as(images)
    dy = (_rand(n, 0.25, 0.75, images, generator) * h).long().view(n, 1, 1, 1)
    dx = (_rand(n, 0.25, 0.75, images, generator) * w).long().view(n, 1, 1, 1)
    rows = (torch.arange(h, device=images.device).view(1, 1, h, 1) - dy) % h
    cols = (torch.arange(w, device=images.device).view(1, 1, 1, w) - dx) % w
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    shifted = images[batch, torch.arange(c, device=images.device).view(1, c, 1, 1), rows, cols]
    fills = torch.stack([torch.zeros_like(images), mean, colour, shifted], dim=1)
    kind = (_uniform((n,), images, generator) * 4).long()
    return fills[torch.arange(n, device=images.device), kind]


def labelled_cutout(
    images: Tensor,
    size_range: Sequence[float] = (0.05, 0.25),
    max_cuts: int = 3,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Replace 1..``max_cuts`` axis-aligned rectangles per image by a fill, labelled anomalous.

    Rectangle sides are ``U(size_range)`` times the image side, at random positions; the fill
    (one per image) is zeros, the mean colour, a random colour or the image shifted by a random
    offset (cut-paste).

    Args:
        images: ``(n, 3, H, W)`` in [0, 1].
        size_range: Side range as a fraction of the image side.
        max_cuts: Most rectangles per image.
        generator: Optional ``torch.Generator``.

    Returns:
        ``augmented (n, 3, H, W)`` and ``region (n, 1, H, W)`` in {0, 1}, the union of rectangles.
    """
    n, _, h, w = images.shape
    low, high = _pair(size_range)
    count = 1 + (_uniform((n, 1), images, generator) * max_cuts).long()
    sides = (
        low + (high - low) * _uniform((n, max_cuts, 2), images, generator)
    ) * images.new_tensor([h, w])
    corner = _uniform((n, max_cuts, 2), images, generator) * (images.new_tensor([h, w]) - sides)
    top, left = rearrange(corner, "n r k -> k n r 1 1")
    height, width = rearrange(sides, "n r k -> k n r 1 1")
    yy = torch.arange(h, device=images.device).view(1, 1, h, 1)
    xx = torch.arange(w, device=images.device).view(1, 1, 1, w)
    used = (torch.arange(max_cuts, device=images.device) < count).view(n, max_cuts, 1, 1)
    inside = (yy >= top) & (yy < top + height) & (xx >= left) & (xx < left + width) & used
    region = inside.any(dim=1, keepdim=True)
    return torch.where(region, _cutout_fill(images, generator), images), region.float()


# ---------------------------------------------------------------------------------- synthesizer
class DraemAnomalySynthesizer:
    """DRAEM's anomaly simulator (sec. 3.3) with an optional labelled-cutout anomaly type.

    Per image: with probability ``p_normal`` it stays normal (all-zero mask); otherwise an
    augmented anomaly source is blended inside a Perlin mask with opacity ``beta`` (eq. 4), or,
    with probability ``cut``, a labelled cutout replaces that blend. The returned mask is the
    anomaly region restricted to the pixels that changed, so it is exactly where the image changed.

    Args:
        anomaly_source: Texture folder in DTD layout (images found recursively), or ``None`` for
            generated coloured Perlin textures.
        p_normal: Probability of leaving an image normal (paper and code: 0.5).
        beta_range: Opacity range of the source (paper ``(0.1, 1.0)``; code ``(0.0, 0.8)``).
        source_ops: Augmentation names from :data:`SOURCE_OPS` (default: the paper's list).
        n_source_ops: Distinct ops applied per source (paper: 3).
        scale_exp_range: Perlin lattice resolution ``2^[low, high)`` per axis (code ``(0, 6)``).
        threshold: Perlin threshold, or a ``(low, high)`` range drawn per mask.
        mask_rotation: Rotation range of the Perlin noise in degrees, or ``None``.
        texture_octaves: Octaves of the generated textures.
        cut: Probability that an anomalous image gets a labelled cutout instead (0 = off).
        cut_size: Cutout side range as a fraction of the image side.
        max_cuts: Most cutout rectangles per image.
    """

    def __init__(
        self,
        anomaly_source: str | Path | None = None,
        p_normal: float = 0.5,
        beta_range: Sequence[float] = (0.1, 1.0),
        source_ops: Sequence[str] = PAPER_SOURCE_OPS,
        n_source_ops: int = 3,
        scale_exp_range: Sequence[int] = (0, 6),
        threshold: float | Sequence[float] = 0.5,
        mask_rotation: Sequence[float] | None = (-90.0, 90.0),
        texture_octaves: int = 4,
        cut: float = 0.0,
        cut_size: Sequence[float] = (0.05, 0.25),
        max_cuts: int = 3,
    ) -> None:
        self.source_paths = list_images(anomaly_source) if anomaly_source is not None else None
        self.p_normal = p_normal
        self.beta_range = _pair(beta_range)
        self.source_ops = tuple(source_ops)
        self.n_source_ops = n_source_ops
        self.scale_exp_range = tuple(int(e) for e in scale_exp_range)
        self.threshold = _pair(threshold)
        self.mask_rotation = None if mask_rotation is None else _pair(mask_rotation)
        self.texture_octaves = texture_octaves
        self.cut = cut
        self.cut_size = _pair(cut_size)
        self.max_cuts = max_cuts

    def __call__(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Simulate anomalies on a batch of normal images.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1].
            generator: Optional ``torch.Generator``; the same seed gives the same output.

        Returns:
            ``augmented (B, 3, H, W)`` in [0, 1] and ``mask (B, 1, H, W)`` float in {0, 1}.
        """
        anomalous = _uniform((len(images),), images, generator) >= self.p_normal
        idx = anomalous.nonzero().squeeze(1)
        out, region = images.clone(), torch.zeros_like(images[:, :1])
        if len(idx):
            out[idx], region[idx] = self._anomalies(images[idx], generator)
        mask = (region > 0) & (out != images).any(dim=1, keepdim=True)
        return torch.where(mask, out, images), mask.float()

    def _anomalies(self, x: Tensor, g: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Anomalies on every image of ``x (n, 3, H, W)``: ``(augmented, region)``."""
        out, region = self.blend(x, g)
        if self.cut > 0:
            use_cut = (_uniform((len(x), 1, 1, 1), x, g) < self.cut).to(x.dtype)
            cut_out, cut_region = labelled_cutout(x, self.cut_size, self.max_cuts, g)
            out = torch.lerp(out, cut_out, use_cut)
            region = torch.lerp(region, cut_region, use_cut)
        return out, region

    def sources(
        self, n: int, size: tuple[int, int], like: Tensor, g: torch.Generator | None
    ) -> Tensor:
        """``n`` anomaly sources ``(n, 3, H, W)`` in [0, 1], before augmentation."""
        if self.source_paths is None:
            return perlin_textures(n, size, self.texture_octaves, g, like.device)
        pick = (_uniform((n,), like, g) * len(self.source_paths)).long().tolist()
        return load_sources([self.source_paths[i] for i in pick], size, like.device)

    def blend(self, x: Tensor, g: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """DRAEM's texture anomaly on every image (eq. 4): ``(augmented, Perlin mask)``."""
        n, _, h, w = x.shape
        source = self.sources(n, (h, w), x, g)
        source = augment_sources(source, self.source_ops, self.n_source_ops, g)
        mask = perlin_mask(
            n, (h, w), self.scale_exp_range, self.threshold, self.mask_rotation, 1, g, x.device
        )
        beta = _rand(n, *self.beta_range, x, g).view(n, 1, 1, 1)
        blended = beta * x + (1 - beta) * source
        return torch.where(mask > 0, blended, x), mask
