"""Re-measure each smoke test's accuracy margin: image AUROC over seeds x thread counts.

The smoke test (``tests/test_smoke.py``) trains every ``configs/model/<m>.yaml`` at its smoke size
(``configs/smoke/<m>.yaml``) on the built-in ``weave`` detection set and asserts an image-AUROC
bar (``smoke_min_img_auroc``, default ``adlab.data.synthetic.SMOKE_DEFAULT_BAR``). CPUs and
thread counts change float results, so a bar needs a margin measured over several runs: this
script runs the same training through ``train.py`` once per (model, seed, threads), reads each
run's ``results.csv``, and prints one table per model with the minimum and its margin over the
bar (the rule: minimum >= bar + :data:`REQUIRED_MARGIN`). Not run by CI (about 1-3 minutes
per run on 2 CPU cores).

Usage (from the repository root)::

    .venv/bin/python benchmarks/smoke_margin.py      # every model, seeds 0-2 x 1 and 2 threads
    .venv/bin/python benchmarks/smoke_margin.py --models dmad --seeds 0 1 2 3 4 --threads 1
    .venv/bin/python benchmarks/smoke_margin.py --json-out margins.json

Runs at 1 thread go two at a time on a 2-core machine (``--cores``); runs at 2 threads one at a
time, so no run is slowed by oversubscription (the numbers do not depend on it, only the time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from adlab.data.synthetic import SMOKE_DEFAULT_BAR, SMOKE_DETECT_SET, generate_category

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_MARGIN = 0.05
CATEGORY = "weave"


@dataclass
class Run:
    """One smoke training: its settings and (once run) its test metrics."""

    model: str
    seed: int
    threads: int
    img_auc: float = float("nan")
    pixel_auc: float = float("nan")
    seconds: float = float("nan")
    error: str = ""


def smoke_setting(model: str, key: str, default: object) -> object:
    """A top-level ``smoke_*`` value of ``configs/smoke/<model>.yaml``."""
    return OmegaConf.load(ROOT / "configs" / "smoke" / f"{model}.yaml").get(key, default)


def smoke_bar(model: str) -> float | None:
    """The image-AUROC bar the smoke test applies to ``model`` (None: no bar, random weights)."""
    bar = smoke_setting(model, "smoke_min_img_auroc", SMOKE_DEFAULT_BAR)
    return None if bar is None else float(bar)


def overrides(run: Run, data_root: Path, out_dir: Path, extra: list[str]) -> list[str]:
    """``train.py`` overrides that reproduce the smoke test's composition for ``run``, then
    ``extra`` (candidate smoke settings, e.g. ``trainer.max_epochs=20``)."""
    data = SMOKE_DETECT_SET
    return [
        f"model={run.model}",
        "trainer=smoke",
        f"+smoke={run.model}",
        f"seed={run.seed}",
        "dataset=synthetic",
        f"dataset.category={CATEGORY}",
        f"dataset.root={data_root}",
        f"dataset.image_size={smoke_setting(run.model, 'smoke_image_size', data['image_size'])}",
        f"dataset.gen_image_size={data['image_size']}",
        f"dataset.n_train={data['n_train']}",
        f"dataset.n_test_good={data['n_test_good']}",
        f"dataset.n_test_per_defect={data['n_test_per_defect']}",
        "dataset.num_workers=0",
        f"paths.log_dir={out_dir}",
        f"hydra.run.dir={out_dir}/run",
        *extra,
    ]


def execute(run: Run, data_root: Path, work: Path, extra: list[str]) -> Run:
    """Train and test ``run`` in a fresh process with ``run.threads`` intra-op threads."""
    out_dir = work / f"{run.model}_seed{run.seed}_threads{run.threads}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(run.threads),
        "MKL_NUM_THREADS": str(run.threads),
        # measure this checkout's code, also from a git worktree beside an editable install
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides(run, data_root, out_dir, extra)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    run.seconds = time.perf_counter() - start
    if proc.returncode != 0:
        run.error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return run
    row = pd.read_csv(out_dir / "results.csv").iloc[0]
    run.img_auc, run.pixel_auc = float(row.img_auc), float(row.pixel_auc)
    return run


def run_all(
    runs: list[Run], data_root: Path, work: Path, cores: int, extra: list[str]
) -> list[Run]:
    """Execute ``runs``, grouped by thread count so ``cores`` are never oversubscribed."""
    done: list[Run] = []
    for threads in sorted({r.threads for r in runs}):
        group = [r for r in runs if r.threads == threads]
        with ThreadPoolExecutor(max_workers=max(1, cores // threads)) as pool:
            for run in pool.map(lambda r: execute(r, data_root, work, extra), group):
                status = run.error or f"img {run.img_auc:.3f} pixel {run.pixel_auc:.3f}"
                print(
                    f"  {run.model} seed {run.seed} threads {run.threads}: {status} "
                    f"({run.seconds:.0f} s)",
                    flush=True,
                )
                done.append(run)
    return done


def table(model: str, runs: list[Run], seeds: list[int], threads: list[int]) -> str:
    """A markdown table of ``model``'s image AUROC, seeds x threads, with min, bar and margin."""
    by_key = {(r.seed, r.threads): r for r in runs if r.model == model}
    lines = [
        f"### {model}",
        "",
        "| seed | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in threads) + " |",
        "|---|" + "---|" * len(threads),
    ]
    for seed in seeds:
        cells = [by_key[(seed, t)] for t in threads]
        values = [c.error and "error" or f"{c.img_auc:.3f}" for c in cells]
        lines.append(f"| {seed} | " + " | ".join(values) + " |")
    aucs = [by_key[(s, t)].img_auc for s in seeds for t in threads]
    low, bar = min(aucs), smoke_bar(model)
    if bar is None:
        lines += ["", f"min {low:.3f}, no bar (random weights)", ""]
        return "\n".join(lines)
    verdict = "ok" if low >= bar + REQUIRED_MARGIN else f"BELOW bar + {REQUIRED_MARGIN}"
    lines += ["", f"min {low:.3f}, bar {bar:.2f}, margin {low - bar:+.3f} ({verdict})", ""]
    return "\n".join(lines)


def main() -> None:
    models_available = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=models_available, choices=models_available)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--override", nargs="*", default=[], help="extra train.py overrides (trying settings)"
    )
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="smoke_margin_"))
    data_root = work / "data"
    generate_category(data_root, CATEGORY, seed=0, **SMOKE_DETECT_SET)  # once, before the runs
    runs = [Run(m, s, t) for m in args.models for s in args.seeds for t in args.threads]
    print(f"{len(runs)} runs under {work}", flush=True)
    done = run_all(runs, data_root, work, args.cores, args.override)
    for model in args.models:
        print(table(model, done, args.seeds, args.threads))
    if args.json_out:
        args.json_out.write_text(json.dumps([asdict(r) for r in done], indent=1))


if __name__ == "__main__":
    main()
