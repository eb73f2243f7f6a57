"""Speed of every method with and without the fast-path options, on this machine (issue 16).

Sections (each a sub-command; run from the repository root):

- ``peak``: the machine's measured peak for the ops that dominate these networks, fp32: a
  conv3x3 (64 -> 64 channels, 64 px, batch 16) and a 1024^3 matmul, best of ``--repeats``.
- ``methods``: per method at its smoke size (``configs/smoke/<m>.yaml``; ``--no-smoke``: the
  default model config), synthetic ``weave`` at ``--image-size``: train and test images/s of
  each variant (``eager``, ``channels_last``, ``channels_last+reuse`` (the defaults: with
  ``reuse_host_memory``), ``compile``, ``channels_last+compile``: the
  :class:`~adlab.callbacks.fast_path.FastPath` options), measured alternately in rounds (the
  best round kept), with the FLOPs of one training step (``FlopCounterMode``, a multiply-add =
  2) and the utilisation = train FLOP/s over the measured peak of the step's dominant op.
- ``make-run``: wall time of ``train.py`` (the ``make run`` default) for a checkout of the old
  tree (``--before DIR``, e.g. ``git archive <commit>``; or ``--before .`` with
  ``--before-overrides`` turning options off) and this tree, alternating: wall and CPU seconds
  (user + system of the run's process; on a shared machine the CPU time is the steadier number)
  and the image AUROC of each run.
The side-by-side with the official AnoDDPM code is ``benchmarks/anoddpm_official.py``.

Timing covers the Lightning batch hooks (``on_*_batch_start`` to ``on_*_batch_end``: synthesis,
forward, loss, backward, optimizer step / prediction, post-processing, metric updates); data
loading and epoch-end work are excluded. Threads: ``--threads`` (default 1; the machine is
shared). Every result line carries the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # reuse_host_memory: off except in "channels_last+reuse" (the default options)
    "eager": {"channels_last": False, "compile": False, "reuse_host_memory": False},
    "channels_last": {"channels_last": True, "compile": False, "reuse_host_memory": False},
    "channels_last+reuse": {"channels_last": True, "compile": False, "reuse_host_memory": True},
    "compile": {"channels_last": False, "compile": True, "reuse_host_memory": False},
    "channels_last+compile": {"channels_last": True, "compile": True, "reuse_host_memory": False},
}
METHODS = ("autoencoder", "cnn", "draem", "anogan", "anoddpm", "ddad", "dmad", "pretrained_ddpm")


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def best_time(fn: Any, repeats: int, warmup: int = 2) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def flops_of(fn: Any) -> tuple[float, dict[str, float]]:
    """Total FLOPs of one ``fn()`` call and the FLOPs per aten op."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    per_op = {str(k): float(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return float(counter.get_total_flops()), per_op


# ------------------------------------------------------------------------------------- peaks
def measure_peaks(repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a conv3x3 (64 -> 64, 64 px, batch 16) and a 1024^3 matmul (fp32)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = torch.randn(16, 64, 64, 64)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    with torch.no_grad():
        conv_flops, _ = flops_of(lambda: conv(x))
        conv_s = best_time(lambda: conv(x), repeats)
        mm_s = best_time(lambda: a @ b, repeats)
    return {"convolution": conv_flops / conv_s / 1e9, "mm": 2 * 1024**3 / mm_s / 1e9}


def dominant_op(per_op: dict[str, float]) -> str:
    """``convolution`` or ``mm`` (matmul family), whichever counts more FLOPs."""
    conv = sum(v for k, v in per_op.items() if "convolution" in k)
    return "convolution" if conv >= sum(per_op.values()) - conv else "mm"


def cmd_peak(args: argparse.Namespace) -> dict[str, Any]:
    peaks = measure_peaks(args.repeats)
    return {"threads": args.threads, "load": load(), "peak_gflops": peaks}


# ----------------------------------------------------------------------------------- methods
class BatchTimer(L.Callback):
    """Seconds and images of every train/test batch (``on_*_batch_start`` to ``_end``)."""

    def __init__(self) -> None:
        self.times: dict[str, list[tuple[float, int]]] = {"train": [], "test": []}
        self._start = 0.0

    def _begin(self, *_: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def _end(self, stage: str, batch: dict) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times[stage].append((time.perf_counter() - self._start, len(batch["image"])))

    on_train_batch_start = _begin
    on_test_batch_start = _begin

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, i: int) -> None:
        self._end("train", batch)

    def on_test_batch_end(
        self, trainer: Any, module: Any, out: Any, batch: Any, i: int, dl: int = 0
    ) -> None:
        self._end("test", batch)


def compose(
    method: str, data_root: Path, out_dir: Path, image_size: int, smoke: bool, extra: list[str]
) -> Any:
    """``train.yaml`` for ``method`` (at its smoke size if ``smoke``, then the ``extra``
    overrides) on synthetic ``weave``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    overrides = [f"model={method}", "trainer=smoke", "logger=none"]
    overrides += [f"+smoke={method}"] if smoke else []
    overrides += extra
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose("train.yaml", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.dataset.root = str(data_root)
        cfg.dataset.image_size = cfg.dataset.gen_image_size = image_size
        cfg.dataset.n_train, cfg.dataset.n_test_good, cfg.dataset.n_test_per_defect = 32, 8, 4
        cfg.dataset.category = "weave"
        cfg.dataset.eval_batch_size = 8
        cfg.hydra.runtime.output_dir = str(out_dir)
    return cfg


def run_variant(
    cfg: Any,
    variant: str,
    steps: int,
    flops: bool,
    test_batches: int = 2,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> dict[str, Any]:
    """Fit ``steps`` batches and test ``test_batches`` batches with ``VARIANTS[variant]``;
    images/s without the first batch of each (warm-up, compilation)."""
    from hydra.utils import instantiate
    from lightning import Trainer, seed_everything

    from adlab.callbacks.fast_path import FastPath

    seed_everything(0)
    module, datamodule = instantiate(cfg.model), instantiate(cfg.dataset)
    timer = BatchTimer()
    trainer_kw = dict(
        accelerator=accelerator, devices=1, precision=precision, logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        inference_mode=cfg.trainer.get("inference_mode", True), limit_val_batches=0,
    )  # fmt: skip
    callbacks = [FastPath(**VARIANTS[variant]), timer]
    out: dict[str, Any] = {"variant": variant}
    if module.requires_training:
        Trainer(max_steps=steps, callbacks=callbacks, **trainer_kw).fit(module, datamodule)
    if test_batches:
        Trainer(callbacks=callbacks, limit_test_batches=test_batches, **trainer_kw).test(
            module, datamodule
        )
    for stage, rows in timer.times.items():
        rows = rows[1:]  # the first batch pays for warm-up / compilation
        if rows:
            out[f"{stage}_img_s"] = sum(n for _, n in rows) / sum(t for t, _ in rows)
    if flops and module.requires_training:
        out.update(_train_flops(module, datamodule, trainer_kw))
    return out


class StepFlops(L.Callback):
    """FLOPs of the first training batch only (``on_train_batch_start`` to ``_end``: synthesis,
    forward, loss, backward, optimizer step), not the fit's setup or end-of-fit calibrations."""

    def __init__(self) -> None:
        self.counter = FlopCounterMode(display=False)
        self.images = 0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
        if i == 0:
            self.counter.__enter__()

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, i: int) -> None:
        if i == 0:
            self.counter.__exit__(None, None, None)
            self.images = len(batch["image"])


def _train_flops(module: Any, datamodule: Any, trainer_kw: dict) -> dict[str, Any]:
    """FLOPs per image of one training step (eager) and its dominant op."""
    from lightning import Trainer

    step = StepFlops()
    Trainer(max_steps=1, callbacks=[step], **trainer_kw).fit(module, datamodule)
    per_op = {str(k): float(v) for k, v in step.counter.get_flop_counts()["Global"].items()}
    return {
        "train_gflop_per_img": step.counter.get_total_flops() / step.images / 1e9,
        "dominant_op": dominant_op(per_op),
    }


def cmd_methods(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from adlab.data.synthetic import generate_category

    tmp = Path(tempfile.mkdtemp(prefix="adlab_speed_"))
    gen = {"image_size": args.image_size, "n_train": 32, "n_test_good": 8, "n_test_per_defect": 4}
    generate_category(tmp / "data", "weave", **gen)
    peaks = measure_peaks()
    results: dict[str, Any] = {"threads": args.threads, "peak_gflops": peaks, "methods": {}}
    for method in args.models:
        cfg = compose(
            method, tmp / "data", tmp / method, args.image_size, args.smoke, args.overrides
        )
        rows: dict[str, dict[str, Any]] = {}
        for round_ in range(args.rounds):
            for variant in args.variants:
                first = round_ == 0 and not rows
                row = run_variant(cfg, variant, args.steps, first, args.test_batches)
                row["load"] = load()
                _keep_best(rows, variant, row)
                print(method, json.dumps(row), flush=True)
        results["methods"][method] = _with_utilisation(rows, peaks)
    return results


def _keep_best(rows: dict[str, dict[str, Any]], variant: str, row: dict[str, Any]) -> None:
    """Keep the best train and test images/s of ``variant`` over the rounds."""
    best = rows.setdefault(variant, dict(row))
    for key in ("train_img_s", "test_img_s"):
        if key in row:
            best[key] = max(best.get(key, 0.0), row[key])
    best["load"] = max(best["load"], row["load"])


def _with_utilisation(rows: dict[str, dict[str, Any]], peaks: dict[str, float]) -> dict:
    """Add train GFLOP/s and its share of the dominant op's peak to every variant."""
    flop_row = next((r for r in rows.values() if "train_gflop_per_img" in r), None)
    for row in rows.values():
        if flop_row is not None and "train_img_s" in row:
            row["train_gflops"] = row["train_img_s"] * flop_row["train_gflop_per_img"]
            row["utilisation"] = row["train_gflops"] / peaks[flop_row["dominant_op"]]
            row["dominant_op"] = flop_row["dominant_op"]
    return rows


# ---------------------------------------------------------------------------------- make run
def one_train_run(tree: Path, out: Path, threads: int, extra: list[str]) -> dict[str, float]:
    """``python train.py [extra]`` (the default model and dataset) in ``tree``; seconds, AUROC."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = str(tree / "src")
    env["ADLAB_ROOT"] = str(tree)
    overrides = [f"paths.log_dir={out}", f"paths.data_dir={out.parent / 'data'}", *extra]
    cpu_start, start = _children_cpu(), time.perf_counter()
    subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=tree, env=env, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    seconds, cpu_seconds = time.perf_counter() - start, _children_cpu() - cpu_start
    import pandas as pd

    row = pd.read_csv(out / "results.csv").iloc[-1]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "img_auc": float(row["img_auc"]),
        "load": load(),
    }


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (robust to a shared machine)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cmd_make_run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from adlab.data.synthetic import generate_category

    tmp = Path(tempfile.mkdtemp(prefix="adlab_makerun_"))
    generate_category(tmp / "data" / "synthetic", "weave")  # the default set, outside the timing
    trees = {"before": Path(args.before).resolve(), "after": ROOT}
    extra = {"before": args.before_overrides, "after": []}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
        for name in order:
            run = one_train_run(trees[name], tmp / f"{name}_{round_}", args.threads, extra[name])
            runs[name].append(run)
            print(name, json.dumps(run), flush=True)
    best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    cpu = {k: min(r["cpu_seconds"] for r in v) for k, v in runs.items()}
    return {
        "threads": args.threads,
        "runs": runs,
        "speedup_wall": best["before"] / best["after"],
        "speedup_cpu": cpu["before"] / cpu["after"],
    }


# ---------------------------------------------------------------------------------------- cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    peak = sub.add_parser("peak")
    peak.add_argument("--repeats", type=int, default=5)
    methods = sub.add_parser("methods")
    methods.add_argument("--models", nargs="+", default=list(METHODS), choices=METHODS)
    methods.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    methods.add_argument("--image-size", type=int, default=64)
    methods.add_argument("--steps", type=int, default=6)
    methods.add_argument("--rounds", type=int, default=2)
    methods.add_argument(
        "--overrides", nargs="*", default=[],
        help="Hydra overrides for every model, e.g. random backbone weights offline",
    )  # fmt: skip
    methods.add_argument(
        "--test-batches", type=int, default=2,
        help="test batches per variant (0: training only; the paper-size samplers take minutes)",
    )  # fmt: skip
    methods.add_argument(
        "--smoke", action=argparse.BooleanOptionalAction, default=True,
        help="the methods' smoke sizes (--no-smoke: their default configs)",
    )  # fmt: skip
    make_run = sub.add_parser("make-run")
    make_run.add_argument("--before", required=True, help="checkout of the tree to compare with")
    make_run.add_argument("--rounds", type=int, default=2)
    make_run.add_argument(
        "--before-overrides", nargs="*", default=[],
        help="train.py overrides of the before runs, e.g. dataset.in_memory=false",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commands = {
        "peak": cmd_peak,
        "methods": cmd_methods,
        "make-run": cmd_make_run,
    }
    result = commands[args.command](args)
    result["load_end"] = load()
    print(json.dumps(result, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
