"""``run(cfg)``: score new images with a trained checkpoint.

Writes ``predictions.csv`` (path, score, is_anomalous) plus, per image, the binary mask and a
heat-map overlay PNG into the output directory. The checkpoint carries the model and
preprocessing config and the F1-optimal thresholds chosen at test time.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from lightning import Trainer
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from adlab.callbacks.metadata import META_KEY
from adlab.callbacks.prediction_writer import PredictionWriter
from adlab.cli.train import load_checkpoint
from adlab.models.base import AnomalyModule

log = logging.getLogger(__name__)


def restore_model(ckpt_path: str | Path) -> tuple[AnomalyModule, dict[str, Any]]:
    """Rebuild the module from the config stored in an adlab checkpoint and load its weights.

    Returns:
        the module (thresholds restored, possibly nan for a checkpoint saved before testing)
        and the checkpoint with its ``adlab_run`` metadata, ``epoch`` and ``global_step``.
    """
    ckpt = load_checkpoint(ckpt_path)
    model: AnomalyModule = instantiate(OmegaConf.create(ckpt[META_KEY]["model_cfg"]))
    model.load_state_dict(ckpt["state_dict"])
    model.on_load_checkpoint(ckpt)
    return model, ckpt


def load_model(ckpt_path: str) -> tuple[AnomalyModule, dict[str, Any]]:
    """:func:`restore_model` for prediction: the checkpoint must hold test-time thresholds."""
    model, ckpt = restore_model(ckpt_path)
    meta = ckpt[META_KEY]
    if math.isnan(model.image_threshold):
        raise ValueError(
            f"{ckpt_path} holds no image threshold: it was saved before a test run. Evaluate it "
            "first (python train.py train=false ckpt_path=...) or use the run's final "
            "checkpoints/model.ckpt"
        )
    return model, meta


def run(cfg: DictConfig) -> pd.DataFrame:
    """Predict every image under ``cfg.input``; return the predictions table."""
    model, meta = load_model(cfg.ckpt_path)
    datamodule = instantiate(OmegaConf.create(meta["dataset_cfg"]))
    dataset = datamodule.make_dataset_from_paths(cfg.input)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    writer = PredictionWriter(cfg.output_dir)
    trainer = Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        callbacks=[writer],
    )
    trainer.predict(model, loader, return_predictions=False)
    log.info("%d predictions written to %s", len(writer.rows), writer.output_dir)
    return pd.DataFrame(writer.rows)
