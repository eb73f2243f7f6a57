"""Peak memory of tiled inference on one large photo (the figure quoted in
``adlab.postprocess.tiler``).

Scores one random ``H x W`` image (default 3000 x 4000, a 12 MP photo) with the autoencoder of
``configs/model/autoencoder.yaml`` (random weights: memory does not depend on them) through
:class:`adlab.postprocess.tiler.Tiler` plus the model's post-processor, and prints the tile count,
the seconds and the process's peak resident memory before and after (``ru_maxrss``; CPU).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiling_memory.py --tile 256 --chunk 64
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from adlab.postprocess.tiler import Tiler, Tiling

ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    """The process's peak resident set size so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--chunk", type=int, default=64)
    args = parser.parse_args()
    model = instantiate(OmegaConf.load(ROOT / "configs" / "model" / "autoencoder.yaml")).eval()
    tiling = Tiling(tile_size=args.tile, stride=args.stride, chunk=args.chunk)
    image = torch.rand(1, 3, args.height, args.width)
    before = peak_mb()
    start = time.perf_counter()
    with torch.no_grad():
        out = Tiler(tiling)(model, image)
    seconds = time.perf_counter() - start
    print(
        f"{args.height}x{args.width}, {tiling.describe()}, chunk {args.chunk}: "
        f"{len(tiling.grid((args.height, args.width)))} tiles, {seconds:.1f} s, map "
        f"{tuple(out.anomaly_map.shape)}; peak RSS {before:.0f} MB before (model + image), "
        f"{peak_mb():.0f} MB after (+{peak_mb() - before:.0f} MB)"
    )


if __name__ == "__main__":
    main()
