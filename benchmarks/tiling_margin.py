"""Tiled vs resized autoencoder on ``weave_hires``: the tiling test's margin over seeds.

``tests/test_tiler.py`` trains the smoke autoencoder twice on the high-resolution synthetic
category at :data:`adlab.data.synthetic.HIRES_TILING_SET` (generated at 256 px, 4-12 px defects):
once with the images resized 4x to the model's 64 px input, once on 64 px tiles at native
resolution (``dataset.tiling.tile_size=64``), and asserts that the tiled run's image and pixel
AUROC are higher by a bar. This script repeats both runs over seeds (one process each, one
thread) and prints the AUROCs and their differences; the bar in the test sits below the minimum.

Usage (from the repository root)::

    .venv/bin/python benchmarks/tiling_margin.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from adlab.data.synthetic import HIRES_TILING_SET, generate_category

ROOT = Path(__file__).resolve().parents[1]
CATEGORY = "weave_hires"
GENERATOR_KEYS = ("image_size", "n_train", "n_test_good", "n_test_per_defect")


def variant_overrides(tiled: bool) -> list[str]:
    """The resized run (images resized to the model size) or the tiled one (native size)."""
    model_size, native = HIRES_TILING_SET["model_size"], HIRES_TILING_SET["image_size"]
    if not tiled:
        return [f"dataset.image_size={model_size}"]
    tiles = HIRES_TILING_SET["tiles_per_image"]
    return [
        f"dataset.image_size={native}",
        f"dataset.tiling.tile_size={model_size}",
        f"dataset.tiling.tiles_per_image={tiles}",
    ]


def overrides(seed: int, data_root: Path, out_dir: Path, tiled: bool) -> list[str]:
    """``train.py`` overrides of one run (the test composes the same)."""
    data = HIRES_TILING_SET
    return [
        "model=autoencoder",
        "trainer=smoke",
        "+smoke=autoencoder",
        f"seed={seed}",
        "dataset=synthetic",
        f"dataset.category={CATEGORY}",
        f"dataset.root={data_root}",
        f"dataset.gen_image_size={data['image_size']}",
        f"dataset.n_train={data['n_train']}",
        f"dataset.n_test_good={data['n_test_good']}",
        f"dataset.n_test_per_defect={data['n_test_per_defect']}",
        "dataset.num_workers=0",
        f"trainer.max_epochs={data['epochs']}",
        "logger=none",
        f"paths.log_dir={out_dir}",
        f"paths.results_csv={out_dir}/results_all.csv",
        f"hydra.run.dir={out_dir}/run",
        *variant_overrides(tiled),
    ]


def measure(seed: int, data_root: Path, work: Path, tiled: bool) -> pd.Series:
    """One run in a fresh one-thread process; its results row."""
    out_dir = work / f"seed{seed}_{'tiled' if tiled else 'resized'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides(seed, data_root, out_dir, tiled)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed} tiled={tiled} failed:\n{proc.stderr[-3000:]}")
    row = pd.read_csv(out_dir / "run" / "results.csv").iloc[0].copy()
    row["seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        gen = {
            k: v
            for k, v in HIRES_TILING_SET.items()
            if k not in ("model_size", "epochs", "tiles_per_image")
        }
        generate_category(data_root, CATEGORY, seed=0, **gen)
        rows = []
        for seed in args.seeds:
            resized, tiled = (measure(seed, data_root, Path(tmp), t) for t in (False, True))
            rows.append(
                {
                    "seed": seed,
                    "img_auc resized": resized.img_auc,
                    "img_auc tiled": tiled.img_auc,
                    "pixel_auc resized": resized.pixel_auc,
                    "pixel_auc tiled": tiled.pixel_auc,
                    "img gain": tiled.img_auc - resized.img_auc,
                    "pixel gain": tiled.pixel_auc - resized.pixel_auc,
                    "seconds resized": resized.seconds,
                    "seconds tiled": tiled.seconds,
                    "tiling": tiled.tiling,
                }
            )
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.3f"))
    print(
        f"minimum gain: image {table['img gain'].min():.3f}, pixel {table['pixel gain'].min():.3f}"
    )


if __name__ == "__main__":
    main()
