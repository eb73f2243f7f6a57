"""One owner per run fact: the final checkpoint's writer, training time and the results row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_train
from hydra.core.hydra_config import HydraConfig

from adlab.callbacks.checkpoint import FinalCheckpoint
from adlab.callbacks.metadata import META_KEY
from adlab.cli import train


def test_final_checkpoint_row_and_training_time_come_from_their_owners(
    tmp_path: Path, synthetic_root: Path
) -> None:
    """The final file is wherever FinalCheckpoint is configured to write it (the CLI writes no
    checkpoint), the row names that file, and the row's training time is the checkpoint's."""
    overrides = ["model=autoencoder", "trainer=smoke", "+smoke=autoencoder", "logger=none"]
    overrides += ["trainer.max_epochs=1", "callbacks.model_checkpoint.final_name=final"]
    cfg = compose_train(tmp_path, synthetic_root, overrides)
    HydraConfig().set_config(cfg)
    train.run(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["final.ckpt", "model.ckpt"]
    final = torch.load(checkpoints / "final.ckpt", weights_only=False)
    per_epoch = torch.load(checkpoints / "model.ckpt", weights_only=False)
    assert final["state_dict"]["thresholds"].isfinite().all()  # set by the test
    assert per_epoch["state_dict"]["thresholds"].isnan().all()  # saved while fitting
    row = pd.read_csv(cfg.paths.results_csv).iloc[0]
    assert row.ckpt_path == str(checkpoints / "final.ckpt")
    assert row.train_seconds == pytest.approx(final[META_KEY]["train_seconds"], rel=1e-12)
    assert row.epochs == final[META_KEY]["epochs"] == 1


def test_final_checkpoint_needs_a_directory() -> None:
    with pytest.raises(ValueError) as err:
        FinalCheckpoint(dirpath=None)
    assert str(err.value) == (
        "FinalCheckpoint needs a dirpath (callbacks.model_checkpoint.dirpath)"
    )
