"""Sample visualisations of the test set: PNGs under ``<log_dir>/sample`` and TensorBoard images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from adlab import types as T
from adlab.viz import figure_to_array, sample_figure, save_figure


class SampleVisualizer(Callback):
    """Keep up to ``num_samples`` test images (half anomalous, half normal) and draw them.

    Uses only the batch and the step's :class:`~adlab.types.AnomalyOutput`; the thresholds come
    from the module once the test epoch has ended.

    Args:
        num_samples: images to draw per test run.
        log_to_tensorboard: also add them as TensorBoard images.
    """

    def __init__(self, num_samples: int = 8, log_to_tensorboard: bool = True) -> None:
        self.num_samples = num_samples
        self.log_to_tensorboard = log_to_tensorboard
        self.samples: list[dict[str, Any]] = []

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.samples = []

    def _wants(self, anomalous: bool) -> bool:
        quota = math.ceil(self.num_samples / 2) if anomalous else self.num_samples // 2
        return sum(s["label"] == anomalous for s in self.samples) < quota

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        recon = outputs.get("reconstruction")
        for i, label in enumerate(batch[T.GT_LABEL].tolist()):
            if not self._wants(label == 1):
                continue
            self.samples.append(
                {
                    "label": label == 1,
                    "image": batch[T.IMAGE][i].cpu(),
                    "gt_mask": batch[T.GT_MASK][i].cpu(),
                    "map": outputs["anomaly_map"][i].cpu(),
                    "score": float(outputs["pred_score"][i]),
                    "recon": None if recon is None else recon[i].cpu(),
                    "name": f"{batch[T.DEFECT_TYPE][i]}_{Path(batch[T.IMAGE_PATH][i]).stem}",
                }
            )

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if self.samples and log_dir is not None:
            self._draw(trainer, pl_module, Path(log_dir))

    @rank_zero_only
    def _draw(self, trainer: Trainer, pl_module: LightningModule, log_dir: Path) -> None:
        maps = torch.stack([s["map"] for s in self.samples])
        vmin, vmax = float(maps.min()), float(maps.max())
        pixel_t = getattr(pl_module, "pixel_threshold", math.nan)
        image_t = getattr(pl_module, "image_threshold", math.nan)
        out_dir = log_dir / "sample"
        for idx, s in enumerate(self.samples):
            verdict = "anomalous" if s["score"] >= image_t else "normal"
            fig = sample_figure(
                s["image"],
                s["map"],
                vmin,
                vmax,
                gt_mask=s["gt_mask"],
                pred_mask=None if math.isnan(pixel_t) else s["map"] >= pixel_t,
                reconstruction=s["recon"],
                title=f"{s['name']}  score {s['score']:.4g}  -> {verdict}",
            )
            if self.log_to_tensorboard and isinstance(trainer.logger, TensorBoardLogger):
                trainer.logger.experiment.add_image(
                    f"test/sample_{idx}",
                    figure_to_array(fig),
                    trainer.global_step,
                    dataformats="HWC",
                )
            save_figure(fig, out_dir / f"{idx:02d}_{s['name']}.png")
        plt.close("all")
