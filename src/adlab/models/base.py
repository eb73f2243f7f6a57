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
from adlab.postprocess import PostProcessor
from adlab.postprocess.tiler import Tiler
from adlab.types import AnomalyOutput

THRESHOLD_SOURCES = ("none", "test", "validation")
"""Values of ``threshold_source``, stored as their index in the ``threshold_source_id`` buffer."""
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class AnomalyModule(LightningModule):
    """Base class: subclasses implement ``training_step`` and ``predict_anomaly``.

    Class attributes:
        requires_training: False for training-free methods (e.g. a pretrained DDPM): the CLI then
            goes straight to testing.
        export_blocker: None if ``evaluate_images`` is a pure function of the images that ONNX
            can trace; otherwise what prevents an export (said by ``export.py``).
        default_postprocess: the method's :class:`~adlab.postprocess.PostProcessor` when none is
            given (its config's ``postprocess:`` block normally is).
        fast_path_auto: the :class:`~adlab.callbacks.fast_path.FastPath` options that ``auto``
            turns on for the networks the method names in ``fast_path_modules``: channels_last,
            measured to pay off for every method on CPU (``benchmarks/RESULTS.md``, issue 16).

    State that must survive a checkpoint is registered buffers, so no hook can drop it:
    ``thresholds`` ``(2,)`` (image, pixel; NaN until a test or validation epoch set them),
    ``threshold_source_id`` (index into :data:`THRESHOLD_SOURCES`) and ``map_range`` ``(2,)``
    (min and max map value of that epoch: the common scale of prediction overlays).

    Args:
        optimizer: partial optimizer (Hydra ``_partial_: true``) called with the parameters.
        scheduler: optional partial LR scheduler called with the optimizer.
        postprocess: resize -> smooth -> score -> threshold of every raw map (None:
            ``default_postprocess``); see :mod:`adlab.postprocess`.
        pixel_metrics: compute pixel-level metrics (needs masks).
    """

    requires_training: ClassVar[bool] = True
    export_blocker: ClassVar[str | None] = None
    default_postprocess: ClassVar[PostProcessor] = PostProcessor()
    fast_path_auto: ClassVar[tuple[str, ...]] = ("channels_last",)

    def __init__(
        self,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.postprocessor = self.default_postprocess if postprocess is None else postprocess
        self.tiler: Tiler | None = None
        self.val_metrics = AnomalyMetrics(pixel_metrics=pixel_metrics)
        self.test_metrics = AnomalyMetrics(pixel_metrics=pixel_metrics)
        self.register_buffer("thresholds", torch.full((2,), math.nan))
        self.register_buffer("threshold_source_id", torch.tensor(0))
        self.register_buffer("map_range", torch.full((2,), math.nan))
        self._epoch_range: list[torch.Tensor] = []
        self.test_results: dict[str, float] = {}

    # ------------------------------------------------------------------ stored decisions
    @property
    def image_threshold(self) -> float:
        """F1-optimal image threshold (anomalous when ``score >= threshold``); NaN if unset."""
        return float(self.thresholds[0])

    @image_threshold.setter
    def image_threshold(self, value: float) -> None:
        self.thresholds[0] = value

    @property
    def pixel_threshold(self) -> float:
        """F1-optimal pixel threshold of the maps; NaN if unset."""
        return float(self.thresholds[1])

    @pixel_threshold.setter
    def pixel_threshold(self, value: float) -> None:
        self.thresholds[1] = value

    @property
    def threshold_source(self) -> str:
        """Which epoch set the thresholds: one of :data:`THRESHOLD_SOURCES`."""
        return THRESHOLD_SOURCES[int(self.threshold_source_id)]

    @threshold_source.setter
    def threshold_source(self, value: str) -> None:
        if value not in THRESHOLD_SOURCES:
            raise ValueError(f"threshold_source must be one of {THRESHOLD_SOURCES}, got {value!r}")
        self.threshold_source_id.fill_(THRESHOLD_SOURCES.index(value))

    # ------------------------------------------------------------------ the method's part
    def predict_anomaly(self, images: torch.Tensor) -> AnomalyOutput:
        """Raw output for images ``(B, 3, H, W)`` in ``[0, 1]``: ``anomaly_map (B, 1, h, w)``
        unsmoothed at any resolution, ``pred_score (B,)`` only for ``score: method``; see
        :mod:`adlab.postprocess`."""
        raise NotImplementedError

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters handed to the optimizer; override to freeze parts."""
        return (p for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ shared evaluation
    def raw_output(self, images: torch.Tensor) -> AnomalyOutput:
        """``predict_anomaly``, or with ``dataset.tiling`` the stitched raw map of its tiles
        (:class:`~adlab.postprocess.tiler.Tiler`, set by the datamodule and by restore)."""
        return self.predict_anomaly(images) if self.tiler is None else self.tiler.raw(self, images)

    def evaluate_images(self, images: torch.Tensor) -> AnomalyOutput:
        """:meth:`raw_output` then the method's post-processor at the input size: map ``(B, 1,
        H, W)`` and score ``(B,)`` for images ``(B, 3, H, W)``."""
        return self.postprocessor(self.raw_output(images), tuple(images.shape[-2:]))

    def _eval_step(self, batch: T.Batch, metrics: AnomalyMetrics) -> dict[str, Any]:
        """Metrics on the post-processor's evaluation window (``eval_crop``) of map and mask;
        the returned outputs keep the whole map (sample pictures)."""
        out = self.evaluate_images(batch[T.IMAGE])
        anomaly_map = self.postprocessor.crop(out.anomaly_map)
        self._epoch_range.append(torch.stack((anomaly_map.min(), anomaly_map.max())))
        metrics.update(
            out.pred_score,
            batch[T.GT_LABEL],
            anomaly_map,
            self.postprocessor.crop(batch[T.GT_MASK]),
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
            self._epoch_range = []
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
        return results | self._gathered_range()

    def _gathered_range(self) -> dict[str, float]:
        """Min and max map value of this epoch over all ranks (a collective under DDP)."""
        local = torch.stack(self._epoch_range) if self._epoch_range else None
        self._epoch_range = []
        if local is None:
            local = torch.tensor([[math.inf, -math.inf]], device=self.device)
        pair = torch.stack((local[:, 0].amin(), local[:, 1].amax()))
        gathered = self.all_gather(pair).reshape(-1, 2)
        low, high = float(gathered[:, 0].amin()), float(gathered[:, 1].amax())
        return {"map_min": low, "map_max": high} if low <= high else {}

    def forget_thresholds(self) -> None:
        """Back to "no decision yet" (new weights, e.g. a stage started with ``init_from``)."""
        self.thresholds.fill_(math.nan)
        self.map_range.fill_(math.nan)
        self.threshold_source = "none"

    def _set_thresholds(self, results: dict[str, float], source: str) -> None:
        self.image_threshold = results.get("img_threshold", math.nan)
        self.pixel_threshold = results.get("pixel_threshold", math.nan)
        self.map_range.copy_(
            torch.tensor([results.get("map_min", math.nan), results.get("map_max", math.nan)])
        )
        self.threshold_source = source

    def predict_step(self, batch: T.Batch, batch_idx: int) -> dict[str, Any]:
        """Scores, maps and binary decisions (with the stored thresholds) for new images."""
        out = self.evaluate_images(batch[T.IMAGE])
        pred_label, pred_mask = self.postprocessor.decide(
            out, self.image_threshold, self.pixel_threshold
        )
        return {
            T.IMAGE_PATH: batch[T.IMAGE_PATH],
            "pred_score": out.pred_score,
            "pred_label": pred_label,
            "anomaly_map": out.anomaly_map,
            "pred_mask": pred_mask,
        }

    # ------------------------------------------------------------------ checkpoint + optim
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A readable copy of the thresholds; the buffers in ``state_dict`` are what is loaded.

        Subclasses extend this hook (``super().on_save_checkpoint(checkpoint)``).
        """
        checkpoint["adlab_thresholds"] = {
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "threshold_source": self.threshold_source,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill the threshold buffers of a checkpoint written before they were buffers.

        Runs before ``load_state_dict`` (Lightning and :func:`adlab.checkpoint.restore`).
        """
        state = checkpoint.get("state_dict", {})
        saved = checkpoint.get("adlab_thresholds", {})
        nan = math.nan
        legacy = {
            "thresholds": torch.tensor(
                [saved.get("image_threshold", nan), saved.get("pixel_threshold", nan)]
            ),
            "threshold_source_id": torch.tensor(
                THRESHOLD_SOURCES.index(saved.get("threshold_source", "none"))
            ),
            "map_range": torch.full((2,), nan),
        }
        for key, value in legacy.items():
            state.setdefault(key, value)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError(f"{type(self).__name__} needs an `optimizer` in its model config.")
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
