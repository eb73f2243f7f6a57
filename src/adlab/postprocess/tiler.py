"""Tiled training and inference at native resolution (``dataset.tiling``).

Inspection photos are 1-12 megapixels with defects a few pixels wide; resizing them to a model's
256 px input erases those defects. With ``dataset.tiling.tile_size=T`` the dataset serves images
at ``dataset.image_size`` (set it to the photos' native size) and every method, unchanged, sees
``T x T`` tiles of them:

- **train**: each training batch is cut into tiles of its (normal) images on the device, either
  ``tiles_per_image`` random tiles per image (seeded by the run's seed and the step) or every
  tile of the grid (:meth:`Tiling.train_batch`, called by the datamodule).
- **test / predict**: :class:`Tiler` splits each image into the grid of tiles (overlap set by
  ``stride``), runs the method's ``predict_anomaly`` on the tiles of all images of the batch as
  one stream of ``chunk``-sized batches, resizes each tile's RAW map to the tile and stitches the
  tiles back (overlaps averaged or max-ed: ``mode``) into one raw map at the image's resolution.
  That map then goes through the method's one post-processor (:mod:`adlab.postprocess`:
  smoothing, score rule, thresholds), so the score is the method's rule on the stitched map and
  smoothing never sees a seam. Metrics are computed at that resolution (masks not downsampled).

Memory is bounded by the chunk, not by the number of tiles: besides the batch of images, the
accumulator and the count of covering tiles (float64, 8 bytes per pixel each; float64 makes the
average of identical values exact), the stitched float32 map and its post-processed copy, plus
one chunk of tiles and the method's activations for it. A 4000x3000 photo at tile 256, stride
256 (192 tiles): image 144 MB, accumulator + count 192 MB, maps 2 x 48 MB, a 16-tile chunk
13 MB. Measured with the autoencoder of ``configs/model/autoencoder.yaml`` on CPU
(``benchmarks/tiling_memory.py``): the peak resident memory grows by 0.49 GB over the loaded model
and image at ``chunk=8``, 0.72 GB at the default ``chunk=16`` (25 s on one CPU thread) and 2.0 GB
at ``chunk=64`` (activations of 64 tiles).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from adlab import types as T
from adlab.postprocess.maps import resize_map
from adlab.types import AnomalyOutput

TILE_MODES = ("mean", "max")
"""How overlapping tiles are merged into the stitched map."""
TRAIN_TILES = ("random", "grid")
"""How training images are cut: random tiles or every tile of the grid."""


class TiledModule(Protocol):
    """What the tiler needs of a module: the raw output and the post-processor."""

    postprocessor: Any

    def predict_anomaly(self, images: Tensor) -> AnomalyOutput: ...


@dataclass(frozen=True)
class Tiling:
    """The ``dataset.tiling`` block.

    Args:
        tile_size: side of a square tile in pixels (the model's input size).
        stride: step between tiles; None: ``tile_size`` (no overlap). The last tile of a row or
            column is aligned with the image edge, so every pixel is covered.
        mode: ``mean`` (overlaps averaged) or ``max`` (the largest value wins).
        train: ``random`` (``tiles_per_image`` random tiles per training image and step) or
            ``grid`` (every tile of the grid).
        tiles_per_image: random training tiles per image per step.
        chunk: tiles per ``predict_anomaly`` call (bounds memory).
    """

    tile_size: int
    stride: int | None = None
    mode: str = "mean"
    train: str = "random"
    tiles_per_image: int = 4
    chunk: int = 16

    def __post_init__(self) -> None:
        for key in ("tile_size", "tiles_per_image", "chunk"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"dataset.tiling.{key}={getattr(self, key)}: expected >= 1")
        if self.stride is not None and not 1 <= self.stride <= self.tile_size:
            raise ValueError(
                f"dataset.tiling.stride={self.stride}: expected 1..tile_size ({self.tile_size}) "
                "or null (= tile_size, no overlap)"
            )
        if self.mode not in TILE_MODES:
            raise ValueError(f"dataset.tiling.mode={self.mode!r}: expected one of {TILE_MODES}")
        if self.train not in TRAIN_TILES:
            raise ValueError(f"dataset.tiling.train={self.train!r}: expected one of {TRAIN_TILES}")

    @property
    def step(self) -> int:
        """The stride in pixels."""
        return self.tile_size if self.stride is None else self.stride

    def describe(self) -> str:
        """The results row's ``tiling`` entry, e.g. ``tile 256 stride 192 mean``."""
        return f"tile {self.tile_size} stride {self.step} {self.mode}"

    def starts(self, length: int) -> list[int]:
        """Tile origins along a side of ``length`` px: every ``step``, the last at the edge."""
        if length < self.tile_size:
            raise ValueError(
                f"an image side of {length} px is smaller than dataset.tiling.tile_size="
                f"{self.tile_size}: raise dataset.image_size or lower the tile size"
            )
        starts = list(range(0, length - self.tile_size + 1, self.step))
        last = length - self.tile_size
        return starts if starts[-1] == last else [*starts, last]

    def grid(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """``(y, x)`` origins of the tiles covering an ``(H, W)`` image, row by row."""
        return [(y, x) for y in self.starts(size[0]) for x in self.starts(size[1])]

    def train_batch(self, batch: T.Batch, generator: torch.Generator) -> T.Batch:
        """A training batch of ``B`` images ``(B, 3, H, W)`` as a batch of tiles ``(N, 3, t, t)``
        (``N = B * tiles_per_image`` random, or ``B * len(grid)``); masks are cut alike, the
        other entries repeated per tile."""
        size, n, t = tuple(batch[T.IMAGE].shape[-2:]), len(batch[T.IMAGE]), self.tile_size
        if self.train == "grid":
            tiles = [(b, y, x) for b in range(n) for y, x in self.grid(size)]
        else:
            last_y, last_x = self.starts(size[0])[-1], self.starts(size[1])[-1]  # checks the size
            ys = torch.randint(0, last_y + 1, (n, self.tiles_per_image), generator=generator)
            xs = torch.randint(0, last_x + 1, (n, self.tiles_per_image), generator=generator)
            tiles = [
                (b, int(y), int(x)) for b in range(n) for y, x in zip(ys[b], xs[b], strict=True)
            ]
        out: dict[str, Any] = {}
        for key, value in batch.items():
            if key in (T.IMAGE, T.GT_MASK):
                out[key] = torch.stack([value[b, :, y : y + t, x : x + t] for b, y, x in tiles])
            elif torch.is_tensor(value):
                out[key] = value[torch.tensor([b for b, _, _ in tiles], device=value.device)]
            else:
                out[key] = [value[b] for b, _, _ in tiles]
        return out


def make_tiling(tile_size: int | None = None, **kwargs: Any) -> Tiling | None:
    """``dataset.tiling`` -> :class:`Tiling`, or None when ``tile_size`` is null (no tiling)."""
    return None if tile_size is None else Tiling(tile_size=tile_size, **kwargs)


def tiler_from_config(dataset_cfg: dict[str, Any]) -> Tiler | None:
    """The :class:`Tiler` of a stored dataset config's ``tiling`` block (None: no tiling)."""
    node = dict(dataset_cfg.get("tiling") or {})
    node.pop("_target_", None)
    tiling = make_tiling(**node)
    return None if tiling is None else Tiler(tiling)


def describe(tiling: Tiling | None) -> str:
    """The results row's ``tiling`` entry: :meth:`Tiling.describe` or ``none``."""
    return "none" if tiling is None else tiling.describe()


class Tiler:
    """Raw maps of tiles stitched at native resolution, then the module's post-processor.

    Args:
        tiling: tile size, stride, merge mode and chunk.
    """

    def __init__(self, tiling: Tiling) -> None:
        self.tiling = tiling

    def _tiles(self, images: Tensor) -> Iterator[tuple[list[tuple[int, int, int]], Tensor]]:
        """Chunks of ``(image index, y, x)`` and their tiles ``(n, 3, t, t)``, over all images."""
        t, origins = self.tiling.tile_size, self.tiling.grid(tuple(images.shape[-2:]))
        jobs = [(b, y, x) for b in range(len(images)) for y, x in origins]
        for start in range(0, len(jobs), self.tiling.chunk):
            part = jobs[start : start + self.tiling.chunk]
            yield part, torch.stack([images[b, :, y : y + t, x : x + t] for b, y, x in part])

    def raw(self, module: TiledModule, images: Tensor) -> AnomalyOutput:
        """The stitched raw output of ``images`` ``(B, 3, H, W)``.

        Returns:
            ``anomaly_map`` ``(B, 1, H, W)`` float32: each tile's raw map bilinearly resized to
            the tile, overlaps merged by ``mode``; ``pred_score`` ``(B,)``: the largest tile
            score when the method returns scores (used by ``score: method`` only), else None.
        """
        (B, _, H, W), t = images.shape, self.tiling.tile_size
        dtype = torch.float32 if images.device.type == "mps" else torch.float64
        empty = 0.0 if self.tiling.mode == "mean" else -torch.inf
        acc = torch.full((B, 1, H, W), empty, dtype=dtype, device=images.device)
        count = torch.zeros((1, 1, H, W), dtype=dtype, device=images.device)
        for y, x in self.tiling.grid((H, W)):
            count[..., y : y + t, x : x + t] += 1
        scores: Tensor | None = None
        for part, tiles in self._tiles(images):
            out = module.predict_anomaly(tiles)
            maps = resize_map(out.anomaly_map.float(), (t, t)).to(dtype)
            for k, (b, y, x) in enumerate(part):
                region = acc[b, :, y : y + t, x : x + t]
                if self.tiling.mode == "mean":
                    region += maps[k]
                else:
                    torch.maximum(region, maps[k], out=region)
            if out.pred_score is not None:
                scores = _max_per_image(scores, out.pred_score.float(), part, B)
        stitched = acc / count if self.tiling.mode == "mean" else acc
        return AnomalyOutput(stitched.float(), scores)

    def __call__(self, module: TiledModule, images: Tensor) -> AnomalyOutput:
        """:meth:`raw`, then ``module.postprocessor`` at the images' size."""
        return module.postprocessor(self.raw(module, images), tuple(images.shape[-2:]))


def _max_per_image(
    scores: Tensor | None, tile_scores: Tensor, part: list[tuple[int, int, int]], n_images: int
) -> Tensor:
    """Running per-image maximum of tile scores ``(n,)`` whose images are ``part[k][0]``."""
    if scores is None:
        scores = torch.full((n_images,), -torch.inf, device=tile_scores.device)
    index = torch.tensor([b for b, _, _ in part], device=tile_scores.device)
    return scores.scatter_reduce(0, index, tile_scores, reduce="amax")
