"""The one writer of a run's checkpoint files, per-epoch and final."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class FinalCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (per-epoch files as configured) that also writes the
    run's final file ``<dirpath>/<final_name>.ckpt`` after the test: the tested weights with
    the thresholds and calibrations the test set (a re-evaluation's too). With
    ``filename == final_name`` it overwrites its own last per-epoch file. A debug run
    (``fast_dev_run``) saves nothing.

    Args:
        final_name: stem of the final file (``model``: ``checkpoints/model.ckpt``).
        *args, **kwargs: ``ModelCheckpoint``'s (``dirpath`` is required).
    """

    def __init__(self, *args: Any, final_name: str = "model", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dirpath is None:
            raise ValueError("FinalCheckpoint needs a dirpath (callbacks.model_checkpoint.dirpath)")
        self.final_name = final_name

    @property
    def final_path(self) -> Path:
        """Where the final checkpoint is written."""
        return Path(self.dirpath) / f"{self.final_name}{self.FILE_EXTENSION}"

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.fast_dev_run:
            trainer.save_checkpoint(self.final_path, weights_only=False)
