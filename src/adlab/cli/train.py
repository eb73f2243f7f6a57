"""``run(cfg)``: train, then test, one method on one dataset category (or evaluate a checkpoint).

``train=false ckpt_path=FILE`` re-evaluates a checkpoint with the model and dataset configs
stored in it, as ``predict.py`` and ``evaluate.py`` do (:func:`adlab.checkpoint.stored_run_config`:
``dataset.*`` / ``model.*`` / ``dataset=`` / ``category=`` overrides apply on top, e.g. a new data
root). Every checkpoint is read safely (:func:`adlab.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning import Callback, LightningDataModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, read_write

from adlab.callbacks.divergence import DivergenceGuard
from adlab.callbacks.metadata import META_KEY, RunMetadata
from adlab.callbacks.results_csv import ResultsCSV
from adlab.checkpoint import (
    config_digest,
    group_choice,
    load_checkpoint,
    restore,
    safe_loading,
    stored_run_config,
)
from adlab.results import has_row

log = logging.getLogger(__name__)
# set by Lightning's DDP launcher in the main process (restored after each job)
CONFIG_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-shaped config group (None entries skipped)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _metadata(cfg: DictConfig, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """What checkpoints carry (``adlab_run``); a re-evaluation keeps the stored training facts."""
    meta = {
        "model_name": cfg.model_name,
        "dataset": cfg.dataset.name,
        "category": str(cfg.dataset.category),
        "model_cfg": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset_cfg": OmegaConf.to_container(cfg.dataset, resolve=True),
        "seed": cfg.seed,
    }
    if stored is not None:
        kept = ("seed", "train_seconds", "epochs")
        meta |= {k: stored[k] for k in kept if k in stored} | {"evaluated_from": cfg.ckpt_path}
    return meta | {"config_sha1": config_digest(meta)}


def _trust(cfg: DictConfig) -> bool:
    return bool(cfg.get("trust_checkpoint", False))


def _eval_meta(cfg: DictConfig) -> dict[str, Any]:
    """The metadata of the checkpoint ``train=false`` evaluates."""
    if not cfg.ckpt_path:
        raise ValueError("train=false needs ckpt_path=PATH to a checkpoint to evaluate")
    return load_checkpoint(cfg.ckpt_path, _trust(cfg))[META_KEY]


def _init_weights(model: Any, cfg: DictConfig) -> None:
    """Load ``init_from``'s weights into ``model`` (strict; fresh optimizer, epoch 0)."""
    ckpt = load_checkpoint(cfg.init_from, _trust(cfg))
    source = ckpt[META_KEY]["model_name"]
    if source != cfg.model_name:
        raise ValueError(
            f"init_from={cfg.init_from} holds a '{source}' model, not model={cfg.model_name}"
        )
    model.on_load_checkpoint(ckpt)
    model.load_state_dict(ckpt["state_dict"])
    model.forget_thresholds()  # they belong to the source weights, not to this stage's
    log.info("initialised %s from %s", type(model).__name__, cfg.init_from)


def _build_model(cfg: DictConfig) -> Any:
    """The module: restored from ``ckpt_path`` (train=false), else built from ``cfg.model``."""
    if not cfg.train:
        return restore(cfg.ckpt_path, _trust(cfg)).model
    model = instantiate(cfg.model)
    if cfg.get("init_from"):
        if cfg.get("ckpt_path"):
            raise ValueError("give init_from (weights only) or ckpt_path (resume), not both")
        _init_weights(model, cfg)
    elif cfg.get("ckpt_path"):
        load_checkpoint(cfg.ckpt_path, _trust(cfg))  # refuse an unsafe or foreign file early
    return model


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
        if not metrics:
            logger.log_hyperparams(params)
        elif isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)
        else:  # CSV, MLflow: the parameters are logged; the metrics go with the others
            logger.log_metrics(metrics)
            logger.save()  # the CSV logger writes buffered rows only on save (after the test)


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
    program = sys.argv[:2] if sys.argv[1:2] == ["train"] else sys.argv[:1]  # adlab train | train.py
    sys.argv = [*program, *_config_flags(sys.argv[len(program) :]), *hydra_cfg.overrides.task]
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


def check_experiment(cfg: DictConfig) -> None:
    """An experiment's per-category values and protocol belong to one dataset
    (``experiment_dataset``): refuse another ``dataset=`` before anything is built."""
    wanted = cfg.get("experiment_dataset")
    if wanted and cfg.dataset.name != wanted:
        raise ValueError(
            f"experiment={group_choice(cfg, 'experiment')} is made for dataset={wanted} (its "
            f"per-category values and protocol), got dataset={cfg.dataset.name}; use an "
            f"experiment made for {cfg.dataset.name} or drop the dataset= override"
        )


def _has_result(callbacks: list[Callback]) -> bool:
    """``skip_existing``: the configured results table already holds this run's key."""
    for table in (c for c in callbacks if isinstance(c, ResultsCSV)):
        if has_row(table.shared_csv, *table.key.values()):
            log.info("skip_existing: %s already in %s", table.key, table.shared_csv)
            return True
    return False


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and/or test as the config says; return the test results (empty when skipped)."""
    if str(cfg.dataset.category) == "all":
        raise ValueError(
            "dataset.category=all runs one job per category as a sweep: add -m "
            "(python train.py -m dataset.category=all)"
        )
    if cfg.train:
        check_experiment(cfg)
    stored = None if cfg.train else _eval_meta(cfg)
    if stored is not None:
        cfg = stored_run_config(cfg, stored)
    run_meta = RunMetadata(_metadata(cfg, stored))
    callbacks = [*_instantiate_all(cfg.get("callbacks")), run_meta]
    if cfg.get("skip_existing") and _has_result(callbacks):
        return {}
    seed_everything(cfg.seed, workers=True)
    datamodule: LightningDataModule = instantiate(cfg.dataset)
    model = _build_model(cfg)
    trainer: Trainer = instantiate(
        cfg.trainer,
        callbacks=[*callbacks, DivergenceGuard()],
        logger=_instantiate_all(cfg.get("logger")) or False,
    )
    _log_hyperparameters(trainer, cfg)
    ddp_env = _ddp_children_run_this_job()
    try:
        with safe_loading():
            results = _fit_and_test(cfg, model, datamodule, trainer, run_meta)
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
    run: RunMetadata,
) -> dict[str, Any]:
    """Fit (when ``cfg.train``) and test (when ``cfg.test``); return the test results.

    After the test the callbacks write the final checkpoint (``FinalCheckpoint``) and the
    results row (``ResultsCSV``); a debug run (``trainer.fast_dev_run``) saves nothing.
    """
    if cfg.train and model.requires_training:
        trainer.fit(
            model,
            datamodule=datamodule,
            ckpt_path=cfg.get("ckpt_path"),
            weights_only=not _trust(cfg),
        )
    elif cfg.train:
        log.info("%s has no training stage: testing directly", type(model).__name__)
    if not cfg.test:
        _log_hyperparameters(trainer, cfg, _hp_metrics(trainer, {}, run.train_seconds))
        return {}
    trainer.test(model, datamodule=datamodule)
    if trainer.fast_dev_run:
        log.info("debug run (fast_dev_run): no checkpoint and no results row written")
    _log_hyperparameters(trainer, cfg, _hp_metrics(trainer, model.test_results, run.train_seconds))
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
