"""``AnomalyModule``: the one interface every method implements.

Methods implement ``training_step`` and ``predict_anomaly``. Validation, test and predict steps,
shared post-processing, metrics and F1-optimal thresholds live here, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from lightning import LightningModule
from torch import nn

from adlab import types as T
from adlab.metrics import AnomalyMetrics
from adlab.postprocess import gaussian_smooth, resize_map
from adlab.types import AnomalyOutput

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class AnomalyModule(LightningModule):
    """Base class: subclasses implement ``training_step`` and ``predict_anomaly``.

    Class attributes:
        requires_training: False for training-free methods (e.g. a pretrained DDPM): the CLI then
            goes straight to testing.

    Args:
        optimizer: partial optimizer (Hydra ``_partial_: true``) called with the parameters.
        scheduler: optional partial LR scheduler called with the optimizer.
        smoothing_sigma: extra Gaussian smoothing of every map after resizing (0 = none).
        pixel_metrics: compute pixel-level metrics (needs masks).
    """

    requires_training: ClassVar[bool] = True

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        smoothing_sigma: float = 0.0,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.smoothing_sigma = smoothing_sigma
        self.val_metrics = AnomalyMetrics(pixel_metrics=pixel_metrics)
        self.test_metrics = AnomalyMetrics(pixel_metrics=pixel_metrics)
        self.image_threshold = math.nan
        self.pixel_threshold = math.nan
        self.threshold_source = "none"
        self.test_results: dict[str, float] = {}

    # ------------------------------------------------------------------ the method's part
    def predict_anomaly(self, images: torch.Tensor) -> AnomalyOutput:
        """Score images ``(B, 3, H, W)`` in ``[0, 1]``; see :class:`adlab.types.AnomalyOutput`."""
        raise NotImplementedError

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters handed to the optimizer; override to freeze parts."""
        return (p for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ shared evaluation
    def evaluate_images(self, images: torch.Tensor) -> AnomalyOutput:
        """``predict_anomaly`` followed by the shared post-processing (resize, smoothing)."""
        out = self.predict_anomaly(images)
        anomaly_map = resize_map(out.anomaly_map.float(), tuple(images.shape[-2:]))
        anomaly_map = gaussian_smooth(anomaly_map, self.smoothing_sigma)
        return AnomalyOutput(anomaly_map, out.pred_score.float(), out.reconstruction)

    def _eval_step(self, batch: T.Batch, metrics: AnomalyMetrics) -> dict[str, Any]:
        out = self.evaluate_images(batch[T.IMAGE])
        metrics.update(
            out.pred_score,
            batch[T.GT_LABEL],
            out.anomaly_map,
            batch[T.GT_MASK],
            batch.get(T.HAS_MASK),
        )
        return out._asdict()

    def validation_step(self, batch: T.Batch, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: T.Batch, batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_metrics.reset()
            return
        results = self._compute(self.val_metrics, "val")
        if not math.isnan(results.get("img_threshold", math.nan)):
            self._set_thresholds(results, "validation")

    def on_test_epoch_end(self) -> None:
        results = self._compute(self.test_metrics, "test")
        if self.threshold_source != "validation":
            self._set_thresholds(results, "test")
        results.update(img_threshold=self.image_threshold, pixel_threshold=self.pixel_threshold)
        self.test_results = results

    def _compute(self, metrics: AnomalyMetrics, stage: str) -> dict[str, float]:
        results = metrics.compute()
        metrics.reset()
        loggable = {f"{stage}/{k}": v for k, v in results.items() if not math.isnan(v)}
        self.log_dict(loggable, sync_dist=False)
        return results

    def _set_thresholds(self, results: dict[str, float], source: str) -> None:
        self.image_threshold = results.get("img_threshold", math.nan)
        self.pixel_threshold = results.get("pixel_threshold", math.nan)
        self.threshold_source = source

    def predict_step(self, batch: T.Batch, batch_idx: int) -> dict[str, Any]:
        """Scores, maps and binary decisions (with the stored thresholds) for new images."""
        out = self.evaluate_images(batch[T.IMAGE])
        return {
            T.IMAGE_PATH: batch[T.IMAGE_PATH],
            "pred_score": out.pred_score,
            "pred_label": out.pred_score >= self.image_threshold,
            "anomaly_map": out.anomaly_map,
            "pred_mask": out.anomaly_map >= self.pixel_threshold,
        }

    # ------------------------------------------------------------------ checkpoint + optim
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["adlab_thresholds"] = {
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "threshold_source": self.threshold_source,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("adlab_thresholds", {})
        self.image_threshold = saved.get("image_threshold", math.nan)
        self.pixel_threshold = saved.get("pixel_threshold", math.nan)
        self.threshold_source = saved.get("threshold_source", "none")

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError(f"{type(self).__name__} needs an `optimizer` in its model config.")
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
