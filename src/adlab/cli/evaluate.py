"""``run(cfg)``: evaluate checkpoints under post-processing techniques (``python evaluate.py``).

For each checkpoint the test set is scored once and the raw outputs (``predict_anomaly``) are
cached in memory; every map technique (none, smoothing, foreground masking) runs them through
the model's post-processor, as configured or changed (:mod:`adlab.postprocess.techniques`), so
the ``none`` rows are the test run's numbers. Inference
techniques (registration) run the model again on transformed images. Each (checkpoint, technique)
gives one row of ``evaluation.csv`` (written atomically after every checkpoint) and two PNGs:
``curves/<ckpt_id>/<technique>_roc.png`` and ``..._pr.png`` (image and pixel curves, ~15 KB
each). Anomaly maps are written only with ``save_maps=true``: ``maps/<ckpt_id>/<technique>.pt``,
float16, ``N * H * W * 2`` bytes (13 MB for 100 images at 256x256). With ``page=true`` (default)
each checkpoint's test images (its own maps, technique ``none``) get a predictions page,
``pages/<ckpt_id>/index.html`` (:mod:`adlab.predictions_page`), linked from ``index.html``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adlab import types as T
from adlab.callbacks.metadata import META_KEY
from adlab.checkpoint import load_checkpoint, restore
from adlab.data.folder import MVTecLayoutDataModule
from adlab.deploy import evaluation_info, write_test_page
from adlab.metrics import AnomalyMetrics
from adlab.metrics.curves import roc_pr_curves
from adlab.models.base import AnomalyModule
from adlab.postprocess.techniques import (
    DataGeometry,
    InferenceTechnique,
    MapTechnique,
    NoPostprocessing,
    Technique,
)
from adlab.predictions_page import write_page_index
from adlab.results import KEY, RENAMED, atomic_write_csv
from adlab.types import AnomalyOutput
from adlab.viz import curve_figure, save_figure

log = logging.getLogger(__name__)
PIXEL_CURVE_BINS = 512
_TARGETS = (T.GT_LABEL, T.GT_MASK, T.HAS_MASK)
_GLOB_CHARS = frozenset("*?[")


def find_checkpoints(spec: str | list[str]) -> list[Path]:
    """Resolve checkpoint files from paths, run dirs and globs.

    Args:
        spec: one entry or a list; each is a ``.ckpt`` file, a directory (every ``*.ckpt`` below
            it: all checkpoints saved during a run, or of many runs) or a glob pattern.

    Returns:
        unique checkpoint files, in the order given (sorted within a directory or glob).
    """
    entries = [spec] if isinstance(spec, str) else list(spec)
    found: list[Path] = []
    for entry in map(str, entries):
        if any(c in entry for c in _GLOB_CHARS):
            matches = [Path(p) for p in sorted(glob.glob(entry, recursive=True))]
            files = [f for m in matches for f in ([m] if m.is_file() else _ckpts_below(m))]
        elif Path(entry).is_dir():
            files = _ckpts_below(Path(entry))
        elif Path(entry).is_file():
            files = [Path(entry)]
        else:
            raise FileNotFoundError(f"ckpt={entry}: no such checkpoint file or run directory")
        if not files:
            raise FileNotFoundError(f"ckpt={entry}: matched no .ckpt file")
        found += [f for f in files if f not in found]
    return found


def _ckpts_below(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.ckpt"))


def ckpt_id(path: Path, meta: dict[str, Any]) -> str:
    """Short unique folder name for a checkpoint's files: ``<model>_<category>_<stem>_<hash>``."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{meta['model_name']}_{meta['category']}_{path.stem}_{digest}".replace("=", "")


def _dataset_cfg(meta: dict[str, Any], overrides: DictConfig | None) -> dict[str, Any]:
    """The checkpoint's dataset config with ``cfg.dataset`` overrides (root, batch size...)."""
    merged = OmegaConf.merge(OmegaConf.create(meta["dataset_cfg"]), overrides or {})
    return OmegaConf.to_container(merged, resolve=True)


def _datamodule(dataset_cfg: dict[str, Any]) -> MVTecLayoutDataModule:
    datamodule: MVTecLayoutDataModule = instantiate(OmegaConf.create(dataset_cfg))
    datamodule.num_workers = 0
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule


def _techniques(cfg: DictConfig, category_type: str) -> list[Technique]:
    """Instantiate ``cfg.techniques`` (None entries skipped, factories may return lists)."""
    techniques: list[Technique] = []
    for name, node in (cfg.techniques or {}).items():
        if node is None:
            continue
        built = instantiate(node)
        for technique in built if isinstance(built, list) else [built]:
            if not isinstance(technique, Technique):
                raise TypeError(
                    f"techniques.{name} built {type(technique).__name__}, not a Technique"
                )
            if category_type in technique.category_types:
                techniques.append(technique)
            else:
                log.info("%s skipped: not meant for %s categories", technique.name, category_type)
    names = [t.name for t in techniques]
    if len(set(names)) != len(names):
        raise ValueError(f"technique names must be unique, got {names}")
    return techniques


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batches(datamodule: MVTecLayoutDataModule, device: torch.device) -> Iterator[dict[str, Any]]:
    for batch in datamodule.test_dataloader():
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def _cache_outputs(
    model: AnomalyModule,
    datamodule: MVTecLayoutDataModule,
    device: torch.device,
    technique: InferenceTechnique | None = None,
) -> dict[str, Any]:
    """Score the test set once, on CPU: ``anomaly_map`` (raw ``(N, 1, h, w)`` without a
    technique, else the technique's ``(N, 1, H, W)``), ``pred_score (N,)`` (None for a raw output
    without one), ``gt_label (N,)``, ``gt_mask (N, 1, H, W)``, ``has_mask (N,)``, ``image_path``."""
    parts: dict[str, list[Any]] = {k: [] for k in ("pred_score", "anomaly_map", *_TARGETS)}
    paths: list[str] = []
    for batch in _batches(datamodule, device):
        images = batch[T.IMAGE]
        if technique is None:
            out = model.raw_output(images)  # stitched tiles with dataset.tiling
        else:
            out = technique.infer(model, images, list(batch[T.IMAGE_PATH]))
        if out.pred_score is not None:
            parts["pred_score"].append(out.pred_score.float().cpu())
        parts["anomaly_map"].append(out.anomaly_map.float().cpu())
        for key in _TARGETS:
            parts[key].append(batch[key].cpu())
        paths += batch[T.IMAGE_PATH]
    cache = {k: torch.cat(v) if v else None for k, v in parts.items()}
    return cache | {T.IMAGE_PATH: paths}


def _post_processed(
    technique: MapTechnique, model: AnomalyModule, raw: dict[str, Any]
) -> dict[str, Any]:
    """The raw cache with the map and score of ``technique`` at the ground truth's size."""
    out = technique.apply(
        AnomalyOutput(raw["anomaly_map"], raw["pred_score"]),
        model.postprocessor,
        tuple(raw[T.GT_MASK].shape[-2:]),
    )
    return raw | {"anomaly_map": out.anomaly_map, "pred_score": out.pred_score}


def _metrics(model: AnomalyModule, cache: dict[str, Any]) -> dict[str, float]:
    """AnomalyMetrics on the cached outputs (inside the post-processor's evaluation window, as
    the test run), with the results table's column names."""
    metrics = AnomalyMetrics(pixel_metrics=model.test_metrics.pixel_metrics)
    crop = model.postprocessor.crop
    metrics.update(
        cache["pred_score"],
        cache[T.GT_LABEL],
        crop(cache["anomaly_map"]),
        crop(cache[T.GT_MASK]),
        cache[T.HAS_MASK],
    )
    return {RENAMED.get(k, k): v for k, v in metrics.compute().items()}


def _write_curves(cache: dict[str, Any], out_dir: Path, stem: str, title: str) -> dict[str, str]:
    """ROC and PR PNGs with the image curve and (where masks exist) the pixel curve."""
    image = roc_pr_curves(cache["pred_score"], cache[T.GT_LABEL])
    keep = cache[T.HAS_MASK].bool()
    pixel = roc_pr_curves(cache["anomaly_map"][keep], cache[T.GT_MASK][keep], bins=PIXEL_CURVE_BINS)
    files = {"roc_png": out_dir / f"{stem}_roc.png", "pr_png": out_dir / f"{stem}_pr.png"}
    roc = {"image": (image.fpr.numpy(), image.tpr.numpy())}
    roc["pixel"] = (pixel.fpr.numpy(), pixel.tpr.numpy())
    save_figure(
        curve_figure(roc, "false positive rate", "true positive rate", title, True),
        files["roc_png"],
    )
    pr = {"image": (image.recall.numpy(), image.precision.numpy())}
    pr["pixel"] = (pixel.recall.numpy(), pixel.precision.numpy())
    save_figure(curve_figure(pr, "recall", "precision", title), files["pr_png"])
    return {k: str(v) for k, v in files.items()}


def _row(
    meta: dict[str, Any], ckpt: dict[str, Any], path: Path, technique: str, category_type: str
) -> dict[str, Any]:
    return {
        "model": meta["model_name"],
        "dataset": meta["dataset"],
        "category": meta["category"],
        "category_type": category_type,
        "technique": technique,
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "stage": str(meta["model_cfg"].get("stage", "")),
        "ckpt_path": str(path),
        "config_sha1": meta.get("config_sha1", ""),
        "run_dir": str(path.parent.parent) if path.parent.name == "checkpoints" else "",
    }


def _finish(
    row: dict[str, Any],
    model: AnomalyModule,
    cache: dict[str, Any],
    cfg: DictConfig,
    files_id: str,
    seconds: float,
) -> dict[str, Any]:
    """Metrics, curve PNGs and optional maps of one (checkpoint, technique) pair."""
    out_dir = Path(cfg.output_dir)
    row |= _metrics(model, cache)
    row |= {"n_images": len(cache["pred_score"]), "eval_seconds": round(seconds, 3)}
    if cfg.curves:
        title = (
            f"{row['model']} {row['category']} {Path(row['ckpt_path']).stem}: {row['technique']}"
        )
        files = _write_curves(cache, out_dir / "curves" / files_id, row["technique"], title)
        row |= {k: str(Path(v).relative_to(out_dir)) for k, v in files.items()}
    if cfg.save_maps:
        maps = out_dir / "maps" / files_id / f"{row['technique']}.pt"
        maps.parent.mkdir(parents=True, exist_ok=True)
        keep = ("pred_score", T.IMAGE_PATH)
        torch.save({"anomaly_map": cache["anomaly_map"].half()} | {k: cache[k] for k in keep}, maps)
    return row


def evaluate_checkpoint(
    path: Path,
    datamodule: MVTecLayoutDataModule,
    techniques: list[Technique],
    cfg: DictConfig,
) -> list[dict[str, Any]]:
    """One row per technique for the checkpoint at ``path``."""
    model, ckpt = restore(path, bool(cfg.get("trust_checkpoint", False)))
    device = _device(cfg.device)
    model.to(device).eval()
    meta, files_id = ckpt[META_KEY], ckpt_id(path, ckpt[META_KEY])
    rows = []
    t0 = time.perf_counter()
    raw = _cache_outputs(model, datamodule, device)
    cached = _post_processed(NoPostprocessing(), model, raw)  # the test run's maps and scores
    inference_seconds = time.perf_counter() - t0
    if cfg.get("page", True):
        info = evaluation_info(model, meta["model_name"], cached, datamodule)
        title = f"{meta['model_name']} {meta['category']} {path}: test images"
        pages = Path(cfg.output_dir) / "pages" / files_id
        write_test_page(info, cached, datamodule.category_dir, pages, title)
    for technique in techniques:
        t0 = time.perf_counter()
        if isinstance(technique, MapTechnique):
            cache = _post_processed(technique, model, raw)
            seconds = inference_seconds + time.perf_counter() - t0
        else:
            cache = _cache_outputs(model, datamodule, device, technique)
            seconds = time.perf_counter() - t0
        row = _row(meta, ckpt, path, technique.name, datamodule.category_type)
        rows.append(_finish(row, model, cache, cfg, files_id, seconds))
        log.info("%s %s: img_auc %.4f", path, technique.name, rows[-1].get("img_auc", float("nan")))
    return rows


def _groups(paths: list[Path], cfg: DictConfig) -> dict[str, list[Path]]:
    """Checkpoints grouped by their (overridden) dataset config, as a JSON key."""
    groups: dict[str, list[Path]] = {}
    overrides = cfg.get("dataset")
    for path in paths:
        meta = load_checkpoint(path, bool(cfg.get("trust_checkpoint", False)))[META_KEY]
        key = json.dumps(_dataset_cfg(meta, overrides), sort_keys=True)
        groups.setdefault(key, []).append(path)
    return groups


def run(cfg: DictConfig) -> pd.DataFrame:
    """Evaluate every checkpoint of ``cfg.ckpt`` under ``cfg.techniques``; return the table.

    Techniques are fitted once per dataset category (on up to ``cfg.max_train_images`` normal
    training images) and reused for all of its checkpoints.
    """
    paths = find_checkpoints(
        OmegaConf.to_object(cfg.ckpt) if OmegaConf.is_config(cfg.ckpt) else cfg.ckpt
    )
    table_path = Path(cfg.output_dir) / "evaluation.csv"
    rows: list[dict[str, Any]] = []
    for key, group in _groups(paths, cfg).items():
        datamodule = _datamodule(json.loads(key))
        techniques = _techniques(cfg, datamodule.category_type)
        train_images = datamodule.first_train_images(cfg.max_train_images)
        geometry = DataGeometry(datamodule.image_size, datamodule.center_crop)
        for technique in techniques:
            technique.fit(train_images, geometry)
        for path in group:
            rows += evaluate_checkpoint(path, datamodule, techniques, cfg)
            atomic_write_csv(_table(rows), table_path)
    if cfg.get("page", True):
        pages = sorted((Path(cfg.output_dir) / "pages").glob("*/index.html"))
        write_page_index(cfg.output_dir, {p.parent.name: p for p in pages}, "test-set pages")
    table = _table(rows)
    log.info("%d rows written to %s%s", len(table), table_path, _storage_note(Path(cfg.output_dir)))
    return table


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    frame = pd.DataFrame(rows).assign(time=stamp)
    lead = [*KEY, "category_type", "technique", "img_auc", "pixel_auc"]
    return frame[[c for c in lead if c in frame] + [c for c in frame if c not in lead]]


def _storage_note(out_dir: Path) -> str:
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    return (
        f" ({len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.2f} MB in {out_dir})"
    )
