"""Store what a checkpoint needs to be used on its own (predict, evaluate) inside it."""

from __future__ import annotations

import math
import time
from typing import Any

from lightning import Callback, LightningModule, Trainer

META_KEY = "adlab_run"


class RunMetadata(Callback):
    """The one owner of a run's facts: configs, names, training time and epochs.

    Writes :attr:`meta` into each checkpoint; the results row (:class:`ResultsCSV`) reads it.
    ``train_seconds`` (start to end of the fit) and ``epochs`` are measured here; a
    re-evaluation's ``meta`` carries the stored ones (and ``evaluated_from``).

    Args:
        meta: plain-dict metadata: ``model_name``, ``dataset``, ``category``, ``model_cfg``
            (resolved, with ``_target_``), ``dataset_cfg``, ``config_sha1``.
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)
        self._t0: float | None = None

    @property
    def train_seconds(self) -> float:
        """Seconds of this run's fit so far (or the stored fit's); NaN without one."""
        if self._t0 is not None and "train_seconds" not in self.meta:
            return time.perf_counter() - self._t0
        return float(self.meta.get("train_seconds", math.nan))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0 = time.perf_counter()
        self.meta.pop("train_seconds", None)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.meta["train_seconds"] = self.train_seconds
        self.meta["epochs"] = trainer.current_epoch

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._t0 is not None and "epochs" not in self.meta:  # saved while fitting
            checkpoint[META_KEY] = self.meta | {
                "train_seconds": self.train_seconds,
                "epochs": trainer.current_epoch,
            }
        else:
            checkpoint[META_KEY] = dict(self.meta)
