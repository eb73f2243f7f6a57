"""Lightning callback that writes the run's results row (see :mod:`adlab.results`)."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from adlab import types as T
from adlab.callbacks.metadata import RunMetadata
from adlab.postprocess.tiler import describe
from adlab.results import RENAMED, atomic_write_csv, ordered, upsert_rows
from adlab.training_times import training_times_path, write_training_times


class ResultsCSV(Callback):
    """After ``trainer.test``: write ``<run_dir>/results.csv`` and upsert into the shared table.

    The summary ``training_times.md`` next to the shared table is rewritten with it (rank zero).
    A debug run (``trainer.fast_dev_run``) writes nothing. The row names what produced it:
    ``ckpt_path`` (the evaluated file of a re-evaluation, else the final file of the trainer's
    :class:`~adlab.callbacks.checkpoint.FinalCheckpoint`), ``stage``, ``run_name`` and
    ``config_sha1``. The run's facts (``config_sha1``, ``train_seconds``, ``epochs``) are read
    from its :class:`~adlab.callbacks.metadata.RunMetadata`, their one owner.

    Args:
        run_dir: this run's output directory.
        shared_csv: the shared results table.
        model: model name (config group choice), dataset: dataset name, category: category.
        seed: the run's seed, recorded in the row.
        stage: training stage of multi-stage methods (DDAD ``model.stage``), else "".
        run_name: optional name telling apart runs of the same key (e.g. ablations), else "".
    """

    def __init__(
        self,
        run_dir: str,
        shared_csv: str,
        model: str,
        dataset: str,
        category: str,
        seed: int = 0,
        stage: str | None = "",
        run_name: str | None = "",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.shared_csv = Path(shared_csv)
        self.key = {
            "model": model,
            "dataset": dataset,
            "category": str(category),
            "stage": str(stage or ""),
            "run_name": str(run_name or ""),
        }
        self.seed = seed
        self._test_t0 = 0.0
        self._test_images = 0

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test_t0 = time.perf_counter()
        self._test_images = 0

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._test_images += len(batch[T.IMAGE])

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # under DDP every rank saw part of the test set: count them all (a collective, all ranks)
        count = torch.tensor(self._test_images, device=pl_module.device)
        self._test_images = int(trainer.strategy.reduce(count, reduce_op="sum"))

    def build_row(self, trainer: Trainer, pl_module: Any) -> dict[str, Any]:
        """The run's row: key, category type, metrics, thresholds and bookkeeping."""
        results = {RENAMED.get(k, k): v for k, v in pl_module.test_results.items()}
        results = {k: v for k, v in results.items() if k not in ("map_min", "map_max")}  # scale
        datamodule = trainer.datamodule
        run = next((c for c in trainer.callbacks if isinstance(c, RunMetadata)), None)
        meta = {} if run is None else run.meta
        final = getattr(trainer.checkpoint_callback, "final_path", "")
        return {
            **self.key,
            "category_type": getattr(datamodule, "category_type", ""),
            "tiling": describe(getattr(datamodule, "tiling", None)),
            **results,
            "threshold_source": pl_module.threshold_source,
            "epochs": meta.get("epochs", trainer.current_epoch),
            "global_step": trainer.global_step,
            "train_seconds": math.nan if run is None else run.train_seconds,
            # test wall time per image: inference, post-processing and metric updates
            "test_seconds_per_image": (time.perf_counter() - self._test_t0)
            / max(self._test_images, 1),
            "seed": self.seed,
            "ckpt_path": str(meta.get("evaluated_from") or final),
            "config_sha1": meta.get("config_sha1", ""),
            "run_dir": str(self.run_dir),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            return  # a debug run: no row, so skip_existing never mistakes it for a result
        row = self.build_row(trainer, pl_module)
        atomic_write_csv(ordered(pd.DataFrame([row])), self.run_dir / "results.csv")
        times = training_times_path(self.shared_csv)
        upsert_rows(self.shared_csv, [row], after=lambda table: write_training_times(table, times))
