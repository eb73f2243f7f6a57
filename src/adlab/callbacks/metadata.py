"""Store what a checkpoint needs to be used on its own (predict, evaluate) inside it."""

from __future__ import annotations

import time
from typing import Any

from lightning import Callback, LightningModule, Trainer

META_KEY = "adlab_run"


class RunMetadata(Callback):
    """Write the resolved model/dataset configs, names and training time into each checkpoint.

    Args:
        meta: plain-dict metadata: ``model_name``, ``dataset``, ``category``, ``model_cfg``
            (resolved, with ``_target_``), ``dataset_cfg``.
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)
        self._t0: float | None = None
        self._t1: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t1 = time.perf_counter()

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._t0 is not None:
            # the final checkpoint is saved after testing: count the fit only
            end = time.perf_counter() if self._t1 is None else self._t1
            self.meta["train_seconds"] = end - self._t0
            self.meta["epochs"] = trainer.current_epoch
        checkpoint[META_KEY] = self.meta
