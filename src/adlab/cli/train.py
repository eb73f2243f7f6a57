"""``run(cfg)``: train, then test, one method on one dataset category (or evaluate a checkpoint)."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning import Callback, LightningDataModule, Trainer, seed_everything
from omegaconf import DictConfig, OmegaConf, read_write

from adlab.callbacks.metadata import META_KEY, RunMetadata
from adlab.callbacks.results_csv import ResultsCSV
from adlab.results import has_row

log = logging.getLogger(__name__)
FINAL_CKPT = "checkpoints/model.ckpt"
# set by Lightning's DDP launcher in the main process (restored after each job)
CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


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


def _log_hyperparameters(
    trainer: Trainer, cfg: DictConfig, metrics: dict[str, float] | None = None
) -> None:
    """Log the resolved model, dataset and trainer configs (and the seed) as hyperparameters.

    TensorBoard's HPARAMS tab needs metrics with them (``default_hp_metric`` is off), so the run
    logs once at the start (``hparams.yaml``) and once at the end with ``hp/<metric>`` values.
    """
    params = {
        "model_name": cfg.model_name,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
        "seed": cfg.seed,
    }
    for logger in trainer.loggers:
        if metrics:
            logger.log_hyperparams(params, metrics)
        else:
            logger.log_hyperparams(params)


def _hp_metrics(trainer: Trainer, results: dict[str, float], train_seconds: float) -> dict:
    """``hp/<name>`` columns of the HPARAMS tab: finite test metrics and the training time."""
    values = {**results, "train_seconds": train_seconds}
    metrics = {f"hp/{k}": float(v) for k, v in values.items() if math.isfinite(v)}
    return metrics or {"hp/epochs": float(trainer.current_epoch)}


def _ddp_children_run_this_job() -> dict[str, str | None]:
    """In a multirun, make Lightning's DDP processes (ranks 1..) re-run this job, not the sweep.

    Lightning starts them as ``python train.py <sys.argv[1:]> hydra.run.dir=<hydra.run.dir>``; in
    a multirun that is the whole sweep again, in another folder. Point both at this job.

    Returns:
        The DDP environment variables as they are before the launch, for :func:`_end_distributed`.
    """
    env = {name: os.environ.get(name) for name in DDP_ENV}
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return env
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *_config_flags(sys.argv[1:]), *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    return env


def _config_flags(argv: list[str]) -> list[str]:
    """Hydra's config-selecting flags of ``argv`` (``-cn x``, ``--config-dir=y``, ...), kept."""
    kept, take_next = [], False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if take_next or name in CONFIG_FLAGS:
            kept.append(arg)
        take_next = name in CONFIG_FLAGS and "=" not in arg
    return kept


def _results_callback(callbacks: list[Callback]) -> ResultsCSV | None:
    return next((c for c in callbacks if isinstance(c, ResultsCSV)), None)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and/or test as the config says; return the test results (empty when skipped)."""
    if str(cfg.dataset.category) == "all":
        raise ValueError(
            "dataset.category=all runs one job per category as a sweep: add -m "
            "(python train.py -m dataset.category=all)"
        )
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
    ddp_env = _ddp_children_run_this_job()
    try:
        results = _fit_and_test(cfg, model, datamodule, trainer, _results_callback(callbacks), meta)
    except BaseException:
        _end_distributed(ddp_env, barrier=False)  # a failed job must not leave DDP state behind
        raise
    _end_distributed(ddp_env, barrier=True)
    return results


def _fit_and_test(
    cfg: DictConfig,
    model: Any,
    datamodule: LightningDataModule,
    trainer: Trainer,
    results_cb: ResultsCSV | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Fit (when ``cfg.train``) and test (when ``cfg.test``); return the test results."""
    if cfg.train and model.requires_training:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    elif cfg.train:
        log.info("%s has no training stage: testing directly", type(model).__name__)
    train_seconds = math.nan if results_cb is None else results_cb.train_seconds
    if not cfg.test:
        _log_hyperparameters(trainer, cfg, _hp_metrics(trainer, {}, train_seconds))
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
    train_seconds = math.nan if results_cb is None else results_cb.train_seconds
    _log_hyperparameters(trainer, cfg, _hp_metrics(trainer, model.test_results, train_seconds))
    return dict(model.test_results)


def _end_distributed(env: dict[str, str | None], barrier: bool) -> None:
    """Close the DDP process group and restore the launcher's environment variables (``env``).

    ``barrier`` waits for the other ranks first (not after a failure: they may never arrive).

    Lightning's launcher leaves ``LOCAL_RANK`` etc. in the main process, which would make the next
    job of a multirun believe its processes are started externally and wait for them forever.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if barrier:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
