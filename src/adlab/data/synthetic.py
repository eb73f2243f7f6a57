"""Built-in synthetic dataset: seeded categories written to disk in the MVTec AD layout.

Two categories need no download: ``weave`` (a texture: plain-weave fabric with random phase,
orientation jitter, illumination variation and sensor noise) and ``disc`` (an object: a patterned
ring on a background, slightly shifted and rotated). Defects are painted on the noiseless scene
with exact binary masks: ``scratch`` (thin curved line), ``hole`` (dark blob), ``stain``
(low-contrast colour blob) and, for the object, ``missing`` (a piece cut away showing background).
Sizes and contrasts are drawn from ranges so some defects are subtle.

``weave_hires`` is the high-resolution inspection case: a fine weave (thread period
:data:`HIRES_PERIOD` px, whatever the image size) generated at 1024 px, with defects a few pixels
wide whatever the image size: ``pinhole`` (dark spot), ``fleck`` (bright or tinted spot), both
4-12 px across, and ``hairline`` (a 1 px line 8-24 px long). Resized to 256 px they shrink to 1-3
px and blur into the weave; tiles at native resolution (:mod:`adlab.postprocess.tiler`) keep them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from adlab.data.folder import NORMAL, DatasetError, MVTecLayoutDataModule

SYNTHETIC_CATEGORIES: dict[str, str] = {
    "weave": "texture",
    "disc": "object",
    "weave_hires": "texture",
}
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "weave": ("scratch", "hole", "stain"),
    "disc": ("scratch", "hole", "stain", "missing"),
    "weave_hires": ("pinhole", "fleck", "hairline"),
}
NATIVE_SIZE: dict[str, int] = {"weave": 128, "disc": 128, "weave_hires": 1024}
"""Generated image side when ``gen_image_size`` is not given."""
HIRES_PERIOD = 12.0
"""Thread period of ``weave_hires`` in pixels (the other categories scale with the image)."""
HIRES_SPOT_DIAMETER = (4.0, 12.0)
"""Range of ``weave_hires`` spot diameters (``pinhole``, ``fleck``) in pixels."""
NOISE_STD = 0.015
_MAX_TRIES = 10
# The smoke tests' detection set (tests/test_smoke.py, benchmarks/smoke_margin.py): enough 64 px
# test images (12 good + 4 per defect type) for an image AUROC that means something.
SMOKE_DETECT_SET: dict[str, int] = {
    "image_size": 64,
    "n_train": 48,
    "n_test_good": 12,
    "n_test_per_defect": 4,
}
# Their image-AUROC bar unless configs/smoke/<m>.yaml sets ``smoke_min_img_auroc``.
SMOKE_DEFAULT_BAR = 0.75
# The tiling test's set (tests/test_tiler.py, benchmarks/tiling_margin.py): weave_hires generated
# at 256 px (defects 4-12 px, as at 1024), models at 64 px: resized 4x vs 64 px native tiles, the
# smoke autoencoder trained for ``epochs`` (tiled: ``tiles_per_image`` random tiles per image and
# step, so both runs train on as many 64 px inputs).
HIRES_TILING_SET: dict[str, int] = {
    "image_size": 256,
    "n_train": 16,
    "n_test_good": 8,
    "n_test_per_defect": 4,
    "model_size": 64,
    "epochs": 20,
    "tiles_per_image": 1,
}
# Bump when the rendering changes, so stale folders are reported instead of silently reused.
GENERATOR_VERSION = 1


def _check_category(category: str) -> None:
    if category not in SYNTHETIC_CATEGORIES:
        raise DatasetError(
            f"Unknown synthetic category {category!r}; available: {', '.join(SYNTHETIC_CATEGORIES)}"
        )


def _u(generator: torch.Generator, low: float, high: float) -> float:
    """One uniform sample in ``[low, high)``."""
    return low + (high - low) * torch.rand((), generator=generator).item()


@dataclass
class _Scene:
    """A noiseless rendering before lighting.

    Attributes:
        image: ``(3, S, S)`` composite in [0, 1].
        gain: ``(1, S, S)`` multiplicative illumination applied after defects.
        surface: ``(S, S)`` bool, where defects may lie.
        foreground: ``(3, S, S)`` object layer (object categories only).
        background: ``(3, S, S)`` background layer (object categories only).
        coverage: ``(S, S)`` object coverage in [0, 1] (object categories only).
        center: object centre ``(x, y)`` in pixels.
        radii: inner and outer radius of the region defects are centred in, in pixels.
    """

    image: torch.Tensor
    gain: torch.Tensor
    surface: torch.Tensor
    center: tuple[float, float]
    radii: tuple[float, float]
    foreground: torch.Tensor | None = None
    background: torch.Tensor | None = None
    coverage: torch.Tensor | None = None


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(yy, xx)``, each ``(S, S)``."""
    axis = torch.arange(size, dtype=torch.float32) + 0.5
    return torch.meshgrid(axis, axis, indexing="ij")


def _illumination(size: int, generator: torch.Generator) -> torch.Tensor:
    """Global gain with a linear gradient, ``(1, S, S)``."""
    yy, xx = _grid(size)
    gx, gy = _u(generator, -0.15, 0.15), _u(generator, -0.15, 0.15)
    ramp = 1.0 + gx * (xx / size - 0.5) + gy * (yy / size - 0.5)
    return (_u(generator, 0.85, 1.15) * ramp)[None]


def _jitter(color: tuple[float, float, float], generator: torch.Generator) -> torch.Tensor:
    """``(3, 1, 1)`` colour with +-0.03 per-channel jitter."""
    base = torch.tensor(color)
    return (base + 0.06 * (torch.rand(3, generator=generator) - 0.5)).view(3, 1, 1)


def _render_weave(size: int, generator: torch.Generator, period: float | None = None) -> _Scene:
    """Plain-weave fabric: threads of period ~S/16 (or ~``period`` px) whose over/under
    alternates per cell."""
    yy, xx = _grid(size)
    theta = math.radians(_u(generator, -3.0, 3.0))
    period = (size / 16 if period is None else period) * _u(generator, 0.95, 1.05)
    u = (xx * math.cos(theta) + yy * math.sin(theta)) / period + _u(generator, 0.0, 1.0)
    v = (-xx * math.sin(theta) + yy * math.cos(theta)) / period + _u(generator, 0.0, 1.0)
    warp_on_top = (torch.floor(u) + torch.floor(v)) % 2 == 0
    profile_u = torch.sin(math.pi * (u - torch.floor(u))).clamp(min=0).sqrt()
    profile_v = torch.sin(math.pi * (v - torch.floor(v))).clamp(min=0).sqrt()
    warp = _jitter((0.32, 0.42, 0.62), generator) * (0.55 + 0.45 * profile_u)
    weft = _jitter((0.55, 0.58, 0.66), generator) * (0.55 + 0.45 * profile_v)
    image = torch.where(warp_on_top, warp, weft)
    return _Scene(
        image=image,
        gain=_illumination(size, generator),
        surface=torch.ones(size, size, dtype=torch.bool),
        center=(size / 2, size / 2),
        radii=(0.0, 0.45 * size),
    )


def _render_disc(size: int, generator: torch.Generator) -> _Scene:
    """An orange ring with six spokes, a groove and a position marker on a grey background."""
    yy, xx = _grid(size)
    cx = size * (0.5 + _u(generator, -0.04, 0.04))
    cy = size * (0.5 + _u(generator, -0.04, 0.04))
    r_out, r_in = 0.36 * size * _u(generator, 0.97, 1.03), 0.12 * size
    rot = math.radians(_u(generator, -10.0, 10.0))
    dist = torch.hypot(xx - cx, yy - cy)
    phi = torch.atan2(yy - cy, xx - cx)
    coverage = (r_out - dist + 0.5).clamp(0, 1) * (dist - r_in + 0.5).clamp(0, 1)
    shade = 0.85 + 0.15 * torch.cos(6 * (phi - rot))
    shade = shade * (1 - 0.35 * torch.exp(-(((dist - 0.72 * r_out) / (0.02 * size)) ** 2)))
    mx, my = cx + 0.55 * r_out * math.cos(rot), cy + 0.55 * r_out * math.sin(rot)
    shade = shade * (1 - 0.5 * (torch.hypot(xx - mx, yy - my) < 0.035 * size).float())
    foreground = _jitter((0.88, 0.56, 0.22), generator) * shade
    background = _jitter((0.22, 0.22, 0.24), generator).expand(3, size, size)
    return _Scene(
        image=background * (1 - coverage) + foreground * coverage,
        gain=_illumination(size, generator),
        surface=coverage > 0.5,
        center=(cx, cy),
        radii=(r_in + 0.04 * size, r_out - 0.04 * size),
        foreground=foreground,
        background=background,
        coverage=coverage,
    )


def _point(scene: _Scene, generator: torch.Generator) -> tuple[float, float]:
    """A uniformly drawn point ``(x, y)`` in the scene's annulus of defect centres."""
    r_in, r_out = scene.radii
    radius = math.sqrt(_u(generator, r_in**2, r_out**2))
    angle = _u(generator, 0.0, 2 * math.pi)
    return scene.center[0] + radius * math.cos(angle), scene.center[1] + radius * math.sin(angle)


def _draw(size: int, paint: Any) -> torch.Tensor:
    """Rasterise with PIL: ``paint(draw)`` draws in white; returns an ``(S, S)`` bool mask."""
    canvas = Image.new("L", (size, size), 0)
    paint(ImageDraw.Draw(canvas))
    return torch.from_numpy(np.asarray(canvas) > 0)


def _blob(scene: _Scene, radius: float, generator: torch.Generator) -> torch.Tensor:
    """An irregular blob mask ``(S, S)`` centred in the defect region."""
    cx, cy = _point(scene, generator)
    angles = torch.linspace(0, 2 * math.pi, 33)[:-1]
    wobble = 1 + _u(generator, 0, 0.25) * torch.sin(2 * angles + _u(generator, 0, 6.3))
    wobble = wobble + _u(generator, 0, 0.15) * torch.sin(3 * angles + _u(generator, 0, 6.3))
    rr = radius * wobble
    poly = list(
        zip(
            (cx + rr * torch.cos(angles)).tolist(),
            (cy + rr * torch.sin(angles)).tolist(),
            strict=True,
        )
    )
    size = scene.image.shape[-1]
    return _draw(size, lambda d: d.polygon(poly, fill=255))


def _scratch(scene: _Scene, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A thin quadratic Bezier curve, brighter or darker than the surface."""
    size = scene.image.shape[-1]
    p0 = torch.tensor(_point(scene, generator))
    angle, length = _u(generator, 0, 2 * math.pi), size * _u(generator, 0.15, 0.35)
    p2 = p0 + length * torch.tensor([math.cos(angle), math.sin(angle)])
    normal = torch.tensor([-math.sin(angle), math.cos(angle)])
    p1 = (p0 + p2) / 2 + _u(generator, -0.3, 0.3) * length * normal
    t = torch.linspace(0, 1, 48)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    width = 1 if _u(generator, 0, 1) < 0.6 else 2
    points = [tuple(p) for p in curve.tolist()]
    mask = _draw(size, lambda d: d.line(points, fill=255, width=width, joint="curve"))
    mask &= scene.surface
    target = 1.0 if _u(generator, 0, 1) < 0.5 else 0.05
    alpha = _u(generator, 0.3, 0.75)
    return torch.where(mask, (1 - alpha) * scene.image + alpha * target, scene.image), mask


def _hole(scene: _Scene, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A small dark blob."""
    size = scene.image.shape[-1]
    mask = _blob(scene, size * _u(generator, 0.015, 0.05), generator) & scene.surface
    alpha = _u(generator, 0.45, 0.9)
    return torch.where(mask, (1 - alpha) * scene.image + alpha * 0.03, scene.image), mask


def _stain(scene: _Scene, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A larger blob with a low-contrast tinted brightness shift."""
    size = scene.image.shape[-1]
    mask = _blob(scene, size * _u(generator, 0.04, 0.11), generator) & scene.surface
    sign = 1.0 if _u(generator, 0, 1) < 0.5 else -1.0
    tint = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=generator)
    delta = sign * _u(generator, 0.07, 0.2) * tint
    return torch.where(mask, scene.image + delta, scene.image), mask


def _missing(scene: _Scene, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A bite out of the object's rim, showing the background."""
    size = scene.image.shape[-1]
    r_out = scene.radii[1] + 0.04 * size
    angle, radius = _u(generator, 0, 2 * math.pi), r_out * _u(generator, 0.15, 0.3)
    offset = r_out * _u(generator, 0.9, 1.05)
    cx, cy = scene.center[0] + offset * math.cos(angle), scene.center[1] + offset * math.sin(angle)
    cut = _draw(
        size, lambda d: d.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), 255)
    )
    coverage = scene.coverage * (~cut).float()
    image = scene.background * (1 - coverage) + scene.foreground * coverage
    return image, cut & scene.surface


def _spot(scene: _Scene, generator: torch.Generator) -> torch.Tensor:
    """An ``(S, S)`` blob mask :data:`HIRES_SPOT_DIAMETER` px across."""
    return _blob(scene, _u(generator, *HIRES_SPOT_DIAMETER) / 2, generator) & scene.surface


def _pinhole(scene: _Scene, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark spot 4-12 px across."""
    mask = _spot(scene, generator)
    alpha = _u(generator, 0.5, 0.9)
    return torch.where(mask, (1 - alpha) * scene.image + alpha * 0.03, scene.image), mask


def _fleck(scene: _Scene, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright, tinted spot 4-12 px across."""
    mask = _spot(scene, generator)
    tint = 0.6 + 0.4 * torch.rand(3, 1, 1, generator=generator)
    return torch.where(mask, scene.image + _u(generator, 0.2, 0.4) * tint, scene.image), mask


def _hairline(scene: _Scene, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A straight 1 px line 8-24 px long, brighter or darker than the weave."""
    x0, y0 = _point(scene, generator)
    angle, length = _u(generator, 0, 2 * math.pi), _u(generator, 8.0, 24.0)
    x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
    size = scene.image.shape[-1]
    mask = _draw(size, lambda d: d.line([(x0, y0), (x1, y1)], fill=255, width=1))
    mask &= scene.surface
    target = 1.0 if _u(generator, 0, 1) < 0.5 else 0.03
    alpha = _u(generator, 0.6, 0.9)
    return torch.where(mask, (1 - alpha) * scene.image + alpha * target, scene.image), mask


_RENDERERS = {
    "weave": _render_weave,
    "disc": _render_disc,
    "weave_hires": partial(_render_weave, period=HIRES_PERIOD),
}
_DEFECTS = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "missing": _missing,
    "pinhole": _pinhole,
    "fleck": _fleck,
    "hairline": _hairline,
}


def render_sample(
    category: str, defect_type: str, image_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render one image of ``category`` with a defect (or ``"good"``), plus its defect-free twin.

    Both images share the scene, lighting and sensor noise; they differ only inside the mask.

    Returns:
        ``(clean, image, mask)``: clean and image float32 ``(3, S, S)`` in [0, 1], mask float32
        ``(1, S, S)`` in {0, 1} (all zeros for ``"good"``).
    """
    _check_category(category)
    if defect_type != NORMAL and defect_type not in DEFECT_TYPES[category]:
        raise DatasetError(
            f"Unknown defect type {defect_type!r} for {category!r}; expected one of "
            f"{', '.join(DEFECT_TYPES[category])}"
        )
    scene = _RENDERERS[category](image_size, generator)
    if defect_type == NORMAL:
        image, mask = scene.image, torch.zeros(image_size, image_size, dtype=torch.bool)
    else:
        for _ in range(_MAX_TRIES):  # a tiny defect may miss every pixel at low resolution
            image, mask = _DEFECTS[defect_type](scene, generator)
            if mask.any():
                break
    noise = NOISE_STD * torch.randn(3, image_size, image_size, generator=generator)
    clean = (scene.image * scene.gain + noise).clamp(0, 1)
    image = (image * scene.gain + noise).clamp(0, 1)
    return clean, image, mask[None].float()


def _item_seed(*parts: object) -> int:
    """A stable 63-bit seed from the item's identity (independent of the split sizes)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _save_png(x: torch.Tensor, path: Path) -> None:
    """Write a ``(C, H, W)`` tensor in [0, 1] as an 8-bit RGB (C=3) or L (C=1) PNG."""
    arr = (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def _write_category(out: Path, meta: dict[str, Any]) -> None:
    """Write all images and masks of one category into ``out``."""
    category, size, seed = meta["category"], meta["image_size"], meta["seed"]
    jobs = [("train", NORMAL, meta["n_train"]), ("test", NORMAL, meta["n_test_good"])]
    jobs += [("test", d, meta["n_test_per_defect"]) for d in DEFECT_TYPES[category]]
    for split, defect_type, count in jobs:
        (out / split / defect_type).mkdir(parents=True)
        if defect_type != NORMAL:
            (out / "ground_truth" / defect_type).mkdir(parents=True)
        for i in range(count):
            generator = torch.Generator().manual_seed(
                _item_seed(seed, category, split, defect_type, i)
            )
            _, image, mask = render_sample(category, defect_type, size, generator)
            _save_png(image, out / split / defect_type / f"{i:03d}.png")
            if defect_type != NORMAL:
                _save_png(mask, out / "ground_truth" / defect_type / f"{i:03d}_mask.png")


def _matches_existing(target: Path, meta: dict[str, Any]) -> bool:
    """False when ``target`` is absent, True when it holds the same parameters; raises otherwise."""
    if not target.exists():
        return False
    meta_file = target / "meta.json"
    if not meta_file.is_file():
        raise DatasetError(
            f"{target} exists but has no meta.json, so it was not written by the synthetic "
            "generator: delete it or choose another root"
        )
    found = json.loads(meta_file.read_text())
    if found != meta:
        diff = {k: (found.get(k), v) for k, v in meta.items() if found.get(k) != v}
        raise DatasetError(
            f"{target} was generated with other parameters (found, requested): {diff}; delete "
            "the folder or choose another root"
        )
    return True


def generate_category(
    root: Path,
    category: str,
    image_size: int | None = None,
    n_train: int = 96,
    n_test_good: int = 24,
    n_test_per_defect: int = 8,
    seed: int = 0,
) -> Path:
    """Write ``<root>/<category>`` in the MVTec layout unless it already exists with these params.

    Safe under concurrent calls: each caller writes into a private hidden sibling folder and
    renames it into place; losers of the race discard theirs and check the winner's ``meta.json``.
    ``image_size`` None: the category's :data:`NATIVE_SIZE`.

    Returns:
        The category folder.
    """
    _check_category(category)
    root, target = Path(root), Path(root) / category
    image_size = NATIVE_SIZE[category] if image_size is None else image_size
    meta = {
        "generator_version": GENERATOR_VERSION,
        "category": category,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "seed": seed,
    }
    if _matches_existing(target, meta):
        return target
    tmp = root / f".{category}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        _write_category(tmp, meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _matches_existing(target, meta)
    return target


class SyntheticDataModule(MVTecLayoutDataModule):
    """The built-in synthetic dataset, generated on first use.

    Args:
        root: folder the categories are generated into.
        category: one of :data:`SYNTHETIC_CATEGORIES`.
        name: dataset name used in results.
        image_size: resize target (generated images are ``gen_image_size`` square).
        n_train: normal training images.
        n_test_good: normal test images.
        n_test_per_defect: test images per defect type.
        gen_seed: generator seed.
        gen_image_size: side of the generated images (None: the category's
            :data:`NATIVE_SIZE`, 1024 for ``weave_hires``).
        category_type: override of the table value.
        **kwargs: other :class:`MVTecLayoutDataModule` arguments.
    """

    def __init__(
        self,
        root: str = "~/.cache/adlab/synthetic",
        category: str = "weave",
        name: str = "synthetic",
        image_size: int | tuple[int, int] = 128,
        n_train: int = 96,
        n_test_good: int = 24,
        n_test_per_defect: int = 8,
        gen_seed: int = 0,
        gen_image_size: int | None = None,
        category_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        _check_category(category)
        super().__init__(
            root=root,
            category=category,
            name=name,
            image_size=image_size,
            category_type=category_type or SYNTHETIC_CATEGORIES[category],
            **kwargs,
        )
        self.gen_kwargs = {
            "image_size": gen_image_size,
            "n_train": n_train,
            "n_test_good": n_test_good,
            "n_test_per_defect": n_test_per_defect,
            "seed": gen_seed,
        }

    def prepare_data(self) -> None:
        """Generate the category folder if needed (a cheap ``meta.json`` check otherwise)."""
        generate_category(self.root, self.category, **self.gen_kwargs)

    def setup(self, stage: str | None = None) -> None:
        """Make sure the folder exists (e.g. ``prepare_data`` ran on another node), then scan."""
        self.prepare_data()
        super().setup(stage)
