"""adlab's DRAEM vs anomalib's ``Draem`` on the same data, size, epochs, batch size and seed.

Both run with their library defaults at the paper's widths (reconstructive 128, discriminative
64: anomalib's are fixed), fp32. Each run is a fresh subprocess that re-runs this file with
``--worker``: adlab under this Python, anomalib under ``--anomalib-python`` (anomalib 2.7.0 pulls
omegaconf 2.4, hydra-core 1.3.8 needs < 2.4, so it lives in its own venv).

Same data: ``--data synthetic`` (default) writes adlab's synthetic ``weave`` category (MVTec
layout) under the work dir; ``--data magnetic_tile`` reads ``../shared/data/magnetic_tile_256``.
``--max-train`` / ``--max-test-per-dir`` symlink an evenly spaced subset into the work dir first.
anomalib reads the folder with ``Folder`` (not ``MVTecAD``, whose ``prepare_data`` downloads),
test split from ``test/`` (``from_dir``) and no validation, like adlab (``val_split=none``):
``val_split_mode="same_as_test"`` (its default moves half the test set to validation) and
``limit_val_batches=0``. Its mask pairing (sorted paths) is checked against the MVTec naming.

Metrics: image AUROC and pixel AUROC on the raw scores and maps (anomalib's min-max
normalisation is off: its clamp to [0, 1] can create ties that change the AUROC). Throughput: the
same definition for both, images / summed wall time of each batch from the first callback's
``on_*_batch_start`` to the LightningModule's ``on_*_batch_end`` (after every callback): resize
on the batch (anomalib), anomaly synthesis, forward, loss, backward and optimizer step when
training; forward, scoring, post-processing and metric updates when testing; data loading
excluded. Peak memory: CUDA max allocated, or on CPU the run's process peak RSS. ``--rounds N`` runs
each library N times from the same seed, alternating which goes first (adlab, anomalib,
anomalib, adlab, ...) so that load drift on a shared machine hits both alike; the table gives mean
AUROCs, total images / total seconds and the largest peak (every round is in ``--json-out``).

Offline: an existing empty ``dtd_dir`` makes anomalib use Perlin-noise anomaly sources (a
missing one triggers a DTD download); adlab uses its generated Perlin textures (no
``anomaly_source``). Neither writes a checkpoint (anomalib's ``ModelCheckpoint`` has
``save_top_k=0``; it would otherwise save ~1.1 GB per run).

Make the anomalib Python once (the local registry resolves torch to the same 2.14.1 wheel as
adlab's; everything else anomalib needs for this comes with it)::

    python3 -m venv /tmp/anomalib-venv
    /tmp/anomalib-venv/bin/pip install anomalib==2.7.0 'torch>=2.4' 'torchvision>=0.19'

Example (CPU, one thread each)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/draem_vs_anomalib.py --image-size 128 \\
        --batch-size 8 --epochs 1 --n-train 24 --threads 1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, seed_everything

REPO = Path(__file__).resolve().parents[1]
MAGNETIC_TILE = REPO.parent / "shared" / "data" / "magnetic_tile_256"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class BatchTimer(Callback):
    """Sums per-batch wall time, first callback ``on_*_batch_start`` -> module ``on_*_batch_end``.

    ``setup`` moves this callback to the front of ``trainer.callbacks`` (anomalib's Engine
    prepends its own) and wraps the module's ``on_train_batch_end`` / ``on_test_batch_end``,
    which Lightning calls after every callback's.
    """

    def __init__(self) -> None:
        self.seconds = {"train": 0.0, "test": 0.0}
        self.images = {"train": 0, "test": 0}
        self._start = 0.0
        self.callback_order: list[str] = []
        self.load_avg = [os.getloadavg()[0]]

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        trainer.callbacks.sort(key=lambda c: c is not self)  # stable: self first
        self.callback_order = [type(c).__name__ for c in trainer.callbacks]
        for name, key in (("on_train_batch_end", "train"), ("on_test_batch_end", "test")):
            hook = getattr(pl_module, name)
            if getattr(hook, "_batch_timer", False):
                continue

            def timed(outputs: Any, batch: Any, *args: Any, _hook: Any = hook, _key: str = key):
                result = _hook(outputs, batch, *args)
                self._end(trainer, _key, batch)
                return result

            timed._batch_timer = True  # type: ignore[attr-defined]
            setattr(pl_module, name, timed)

    def _begin(self, trainer: Any) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def _end(self, trainer: Any, stage: str, batch: Any) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds[stage] += time.perf_counter() - self._start
        image = batch["image"] if isinstance(batch, dict) else batch.image
        self.images[stage] += len(image)

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        self._begin(trainer)

    def on_test_batch_start(self, trainer: Any, *args: Any) -> None:
        self._begin(trainer)

    def summary(self) -> dict[str, float]:
        """Images/s per stage, images and seconds timed, peak memory in MiB."""
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {
            "train_img_s": self.images["train"] / max(self.seconds["train"], 1e-9),
            "test_img_s": self.images["test"] / max(self.seconds["test"], 1e-9),
            "train_images": self.images["train"],
            "test_images": self.images["test"],
            "train_s": self.seconds["train"],
            "test_s": self.seconds["test"],
            "peak_mem_mib": peak,
            "load_avg_1min": [*self.load_avg, os.getloadavg()[0]],
            "callback_order": self.callback_order,
        }


# ------------------------------------------------------------------------------------ anomalib
def _folder_layout(category_dir: Path) -> dict[str, Any]:
    """MVTec-layout sub-folders of one category, relative to it, for anomalib's ``Folder``."""
    defects = sorted(p.name for p in (category_dir / "test").iterdir() if p.name != "good")
    return {
        "normal_dir": "train/good",
        "normal_test_dir": "test/good",
        "abnormal_dir": [f"test/{d}" for d in defects],
        "mask_dir": [f"ground_truth/{d}" for d in defects],
    }


def _check_masks(samples: Any) -> None:
    """Folder pairs masks by sorted path and only checks ``stem in mask_stem``: require MVTec's
    ``<defect>/<stem>_mask`` for every anomalous image."""
    for image, mask in zip(samples.image_path, samples.mask_path, strict=True):
        if mask and (Path(mask).stem != Path(image).stem + "_mask"):
            raise RuntimeError(f"anomalib paired {image} with mask {mask}")


def run_anomalib(args: argparse.Namespace, category_dir: Path, workdir: Path) -> dict[str, Any]:
    """anomalib's Draem (inside the anomalib Python) on ``category_dir``."""
    from anomalib.callbacks import ModelCheckpoint
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.metrics import AUROC, Evaluator
    from anomalib.models import Draem
    from anomalib.post_processing import PostProcessor

    torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)
    empty_dtd = workdir / "empty_dtd"  # exists and is empty: Perlin-noise sources, no download
    empty_dtd.mkdir(parents=True, exist_ok=True)
    metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]
    model = Draem(
        dtd_dir=empty_dtd,
        pre_processor=Draem.configure_pre_processor((args.image_size, args.image_size)),
        post_processor=PostProcessor(enable_normalization=False, enable_thresholding=False),
        evaluator=Evaluator(test_metrics=metrics),
        visualizer=False,
    )
    datamodule = Folder(
        name=category_dir.name,
        root=category_dir,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,
        test_split_mode="from_dir",
        val_split_mode="same_as_test",
        seed=args.seed,
        **_folder_layout(category_dir),
    )
    datamodule.setup()
    _check_masks(datamodule.test_data.samples)
    timer = BatchTimer()
    engine = Engine(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        default_root_dir=workdir / "anomalib_results",
        callbacks=[timer, ModelCheckpoint(dirpath=workdir / "anomalib_ckpt", save_top_k=0)],
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    return {
        "img_auroc": float(results["image_AUROC"]),
        "pixel_auroc": float(results["pixel_AUROC"]),
        "n_test": len(datamodule.test_data),
        **timer.summary(),
    }


# --------------------------------------------------------------------------------------- adlab
def run_adlab(args: argparse.Namespace, data_root: Path, category: str) -> dict[str, Any]:
    """adlab's DRAEM (``configs/model/draem.yaml`` defaults) in this process."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning import Trainer

    overrides = [
        "model=draem",
        f"dataset={'synthetic' if args.data == 'synthetic' else 'folder'}",
        f"dataset.root={data_root}",
        f"dataset.category={category}",
        f"dataset.image_size={args.image_size}",
        f"dataset.batch_size={args.batch_size}",
        f"dataset.eval_batch_size={args.batch_size}",
        "dataset.num_workers=0",
        "dataset.val_split=none",
        f"trainer.max_epochs={args.epochs}",
        f"seed={args.seed}",
    ]
    if args.data == "synthetic":
        overrides += [f"dataset.{k}={v}" for k, v in _synthetic_gen(args).items()]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed, workers=True)
    datamodule, model = instantiate(cfg.dataset), instantiate(cfg.model)
    timer = BatchTimer()
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    results = model.test_results
    return {
        "img_auroc": results["img_auroc"],
        "pixel_auroc": results["pixel_auroc"],
        "n_test": len(datamodule.test_dataloader().dataset),
        **timer.summary(),
    }


# ---------------------------------------------------------------------------------------- data
def _synthetic_gen(args: argparse.Namespace) -> dict[str, int]:
    return {
        "gen_image_size": args.image_size,
        "n_train": args.n_train,
        "n_test_good": args.n_test_good,
        "n_test_per_defect": args.n_test_per_defect,
    }


def _spaced(paths: list[Path], limit: int | None) -> list[Path]:
    """At most ``limit`` evenly spaced items of ``paths`` (all when ``limit`` is None)."""
    if limit is None or len(paths) <= limit:
        return paths
    return [paths[i * len(paths) // limit] for i in range(limit)]


def subset_category(src: Path, dst: Path, max_train: int | None, max_test: int | None) -> Path:
    """Symlink an evenly spaced subset of an MVTec-layout category (masks follow their images)."""
    for split, limit in (("train", max_train), ("test", max_test)):
        for folder in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for image in _spaced(images, limit):
                rel = image.relative_to(src)
                pairs = [(image, dst / rel)]
                if split == "test" and folder.name != "good":
                    mask = src / "ground_truth" / folder.name / f"{image.stem}_mask.png"
                    pairs.append((mask, dst / mask.relative_to(src)))
                for target, link in pairs:
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(target)
    return dst


def prepare_data(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """``(data root, category)`` under ``workdir``: synthetic ``weave`` or the magnetic tiles."""
    if args.data == "magnetic_tile":
        src = MAGNETIC_TILE / "magnetic_tile"
        if not src.is_dir():
            raise FileNotFoundError(f"--data magnetic_tile needs {src}")
        if args.max_train is None and args.max_test_per_dir is None:
            return MAGNETIC_TILE, "magnetic_tile"
        dst = workdir / "data" / "magnetic_tile"
        subset_category(src, dst, args.max_train, args.max_test_per_dir)
        return dst.parent, "magnetic_tile"
    from adlab.data.synthetic import generate_category

    root = workdir / "data"
    gen = {k.removeprefix("gen_"): v for k, v in _synthetic_gen(args).items()}
    generate_category(root, "weave", seed=0, **gen)
    return root, "weave"


# ---------------------------------------------------------------------------------------- main
def _table(adlab: dict[str, Any], anomalib: dict[str, Any]) -> str:
    rows = [
        ("image AUROC", "img_auroc", "{:.3f}"),
        ("pixel AUROC", "pixel_auroc", "{:.3f}"),
        ("train images/s", "train_img_s", "{:.3f}"),
        ("test images/s", "test_img_s", "{:.3f}"),
        ("peak memory (MiB)", "peak_mem_mib", "{:.0f}"),
    ]
    lines = ["| metric | adlab | anomalib | adlab / anomalib |", "|---|---|---|---|"]
    for name, key, fmt in rows:
        a, b = adlab[key], anomalib[key]
        lines.append(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anomalib-python", default="/tmp/anomalib-venv/bin/python")
    parser.add_argument("--data", choices=["synthetic", "magnetic_tile"], default="synthetic")
    parser.add_argument("--image-size", type=int, default=128, help="multiple of 32")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--n-train", type=int, default=32, help="synthetic train images")
    parser.add_argument("--n-test-good", type=int, default=12, help="synthetic")
    parser.add_argument("--n-test-per-defect", type=int, default=4, help="synthetic")
    parser.add_argument("--max-train", type=int, default=None, help="magnetic_tile subset")
    parser.add_argument("--max-test-per-dir", type=int, default=None, help="magnetic_tile subset")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs per library, order alternating (ABBA...)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--worker", choices=["adlab", "anomalib"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--category", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_worker(args: argparse.Namespace, name: str, data_root: Path, category: str) -> dict:
    """One fresh process per run (so peak RSS is per run): adlab under this Python, anomalib
    under ``--anomalib-python``; each re-runs this file with ``--worker``."""
    python = sys.executable if name == "adlab" else args.anomalib_python
    out = Path(args.workdir) / f"{name}_result.json"
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    worker = ["--worker", name, "--worker-out", str(out), "--workdir", str(args.workdir)]
    worker += ["--data-root", str(data_root)]
    command = [python, __file__, *sys.argv[1:], *worker, "--category", category]
    subprocess.run(command, check=True, env=env, cwd=args.workdir)
    return json.loads(out.read_text())


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds -> one row: mean AUROCs, total images / total seconds, max peak memory."""
    return {
        "img_auroc": sum(r["img_auroc"] for r in runs) / len(runs),
        "pixel_auroc": sum(r["pixel_auroc"] for r in runs) / len(runs),
        "train_img_s": sum(r["train_images"] for r in runs) / sum(r["train_s"] for r in runs),
        "test_img_s": sum(r["test_images"] for r in runs) / sum(r["test_s"] for r in runs),
        "peak_mem_mib": max(r["peak_mem_mib"] for r in runs),
        "n_test": runs[0]["n_test"],
        "rounds": runs,
    }


def main() -> None:
    args = parse_args()
    if args.worker is not None:  # a fresh process for one run
        if args.worker == "adlab":
            result = run_adlab(args, args.data_root, args.category)
        else:
            result = run_anomalib(args, args.data_root / args.category, args.workdir)
        args.worker_out.write_text(json.dumps(result))
        return
    if args.image_size % 32:
        raise ValueError("--image-size must be a multiple of 32 (DRAEM's discriminative U-Net)")
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="draem_bench_"))).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data_root, category = prepare_data(args, args.workdir)
    runs: dict[str, list[dict[str, Any]]] = {"adlab": [], "anomalib": []}
    for i in range(args.rounds):  # ABBA...: alternate who goes first against load drift
        for name in ("adlab", "anomalib") if i % 2 == 0 else ("anomalib", "adlab"):
            start = time.perf_counter()
            runs[name].append(run_worker(args, name, data_root, category))
            took = time.perf_counter() - start
            print(f"round {i + 1} {name}: {json.dumps(runs[name][-1])} ({took:.0f} s)", flush=True)
    adlab, anomalib = combine(runs["adlab"]), combine(runs["anomalib"])
    if adlab["n_test"] != anomalib["n_test"]:
        raise RuntimeError(f"test sets differ: {adlab['n_test']} vs {anomalib['n_test']}")
    files = [p for p in args.workdir.rglob("*") if p.is_file() and not p.is_symlink()]
    written = sum(p.stat().st_size for p in files)
    print(f"work dir {args.workdir}: {written / 2**20:.1f} MiB written")
    print(_table(adlab, anomalib))
    if args.json_out is not None:
        record = {"args": vars(args), "adlab": adlab}
        args.json_out.write_text(json.dumps(record | {"anomalib": anomalib}, default=str))


if __name__ == "__main__":
    main()
