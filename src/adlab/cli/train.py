"""``run(cfg)``: train, then test, one method on one dataset category (or evaluate a checkpoint)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning import Callback, LightningDataModule, Trainer, seed_everything
from omegaconf import DictConfig, OmegaConf

from adlab.callbacks.metadata import META_KEY, RunMetadata
from adlab.callbacks.results_csv import ResultsCSV
from adlab.results import has_row

log = logging.getLogger(__name__)
FINAL_CKPT = "checkpoints/model.ckpt"


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-shaped config group (None entries skipped)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _metadata(cfg: DictConfig) -> dict[str, Any]:
    return {
        "model_name": cfg.model_name,
        "dataset": cfg.dataset.name,
        "category": str(cfg.dataset.category),
        "model_cfg": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset_cfg": OmegaConf.to_container(cfg.dataset, resolve=True),
        "seed": cfg.seed,
    }


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """Load an adlab checkpoint on CPU, with clear errors for a missing or foreign file."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a .ckpt file)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or META_KEY not in ckpt:
        raise ValueError(f"{path} is not an adlab checkpoint (no '{META_KEY}' entry)")
    return ckpt


def _check_eval_config(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.ckpt_path:
        raise ValueError("train=false needs ckpt_path=PATH to a checkpoint to evaluate")
    meta = load_checkpoint(cfg.ckpt_path)[META_KEY]
    if meta["model_name"] != cfg.model_name:
        raise ValueError(
            f"{cfg.ckpt_path} holds a '{meta['model_name']}' model but model={cfg.model_name} "
            f"was composed; run with model={meta['model_name']}"
        )
    return meta


def _init_weights(model: Any, cfg: DictConfig) -> None:
    """Load ``init_from``'s weights into ``model`` (strict; fresh optimizer, epoch 0)."""
    ckpt = load_checkpoint(cfg.init_from)
    source = ckpt[META_KEY]["model_name"]
    if source != cfg.model_name:
        raise ValueError(
            f"init_from={cfg.init_from} holds a '{source}' model, not model={cfg.model_name}"
        )
    model.load_state_dict(ckpt["state_dict"])
    log.info("initialised %s from %s", type(model).__name__, cfg.init_from)


def _log_hyperparameters(trainer: Trainer, cfg: DictConfig) -> None:
    params = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
        "seed": cfg.seed,
    }
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def _results_callback(callbacks: list[Callback]) -> ResultsCSV | None:
    return next((c for c in callbacks if isinstance(c, ResultsCSV)), None)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and/or test as the config says; return the test results (empty when skipped)."""
    key = (cfg.model_name, cfg.dataset.name, str(cfg.dataset.category))
    if cfg.get("skip_existing") and has_row(Path(cfg.paths.results_csv), *key):
        log.info("skip_existing: %s already in %s", key, cfg.paths.results_csv)
        return {}
    meta = {} if cfg.train else _check_eval_config(cfg)
    seed_everything(cfg.seed, workers=True)
    datamodule: LightningDataModule = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    if cfg.get("init_from"):
        if cfg.get("ckpt_path"):
            raise ValueError("give init_from (weights only) or ckpt_path (resume), not both")
        _init_weights(model, cfg)
    callbacks = [*_instantiate_all(cfg.get("callbacks")), RunMetadata(_metadata(cfg))]
    trainer: Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=_instantiate_all(cfg.get("logger")) or False
    )
    _log_hyperparameters(trainer, cfg)
    results_cb = _results_callback(callbacks)
    if cfg.train and model.requires_training:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    elif cfg.train:
        log.info("%s has no training stage: testing directly", type(model).__name__)
    if not cfg.test:
        return {}
    final = Path(cfg.paths.output_dir) / FINAL_CKPT if cfg.train else Path(cfg.ckpt_path)
    if results_cb is not None:
        results_cb.ckpt_path = str(final)
        if not cfg.train:
            results_cb.train_seconds = meta.get("train_seconds", math.nan)
            results_cb.epochs = meta.get("epochs")
    trainer.test(model, datamodule=datamodule, ckpt_path=None if cfg.train else cfg.ckpt_path)
    if cfg.train:
        trainer.save_checkpoint(final)
    return dict(model.test_results)
