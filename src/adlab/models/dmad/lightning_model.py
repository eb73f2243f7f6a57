"""DMAD-PPDM (Liu et al., CVPR 2023): diversity-measurable anomaly detection, MVTec setup.

Training: the offset net pre-deforms each normal image, the frozen teacher encodes it, the
compression bottleneck (VQ) and the student decoder reconstruct the teacher's maps; loss
L_rd + L_offset + vq_weight L_vq (``loss.py``).

Detection (official ``test.py``): M = feature discrepancy, mapped back through the inverse warp
and Gaussian-smoothed; O = composed inverse-field magnitude, smoothed (both with the
post-processor's sigma; the map is returned raw and smoothed by it, which is the same by
linearity). The score is the method's own (``postprocess.score=method``). Both are min-max
normalised with statistics of normal *training* images (the official code uses the test set),
recomputed for the current weights before validation, before each checkpoint save and at the
end of the fit: the score max M_n + w max O_n with the range of the per-image maxima (official
"sp" mode), the map M_p + w O_p with the range of the pixel values (official "px" mode). See
``README.md``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from adlab import types as T
from adlab.metrics import AnomalyMetrics
from adlab.models.base import AnomalyModule, OptimizerFactory, SchedulerFactory
from adlab.models.dmad.loss import dmad_losses, feature_discrepancy
from adlab.models.dmad.torch_model import DMADModel
from adlab.postprocess import PostProcessor, max_score
from adlab.types import AnomalyOutput

log = logging.getLogger(__name__)
CALIBRATION_SOURCES = ("train", "val")


def minmax(values: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``(values - low) / (high - low)``; NaN bounds (uncalibrated) leave ``values`` unchanged."""
    if torch.isnan(low) or torch.isnan(high):
        return values
    return (values - low) / (high - low).clamp(min=1e-12)


class DMADModule(AnomalyModule):
    """DMAD behind the one interface.

    Args:
        model: Offset net, frozen teacher, compression bottleneck and student decoder.
        optimizer: Partial optimizer (official: AdamW lr 0.005, betas (0.5, 0.999)).
        scheduler: Optional partial LR scheduler (official: cosine annealing over the epochs).
        gamma: Weight of the inverse-warp reconstruction term (official: 1).
        vq_weight: Weight of the VQ loss (official: 1).
        w: Weight of the deformation cue in map and score (official: 0.2 for screw, carpet,
            metal_nut, else 0.05); 0 gives the pure reverse-distillation score.
        calibration_images: Normal training images whose per-image maxima (score) and pixel
            values (map) fix the min-max normalisation at the end of each fit; 0 leaves M' and
            O unnormalised.
        calibration_source: ``train`` (the first training images, which the model has fit) or
            ``val`` (held-out normal images: needs ``dataset.val_split=from_train``).

        postprocess: Smoothing of M' and O (official: sigma 4 at 256 px); the score rule is
            ``method``: max M_n + w max O_n is not a function of the map M_p + w O_p.
        pixel_metrics: Compute pixel metrics.

    The test also reports ``img_auroc_w0``, the image AUROC of the pure reverse-distillation
    score max M_n (w = 0), next to the combined one.
    """

    default_postprocess = PostProcessor(sigma=4.0, score="method")
    fast_path_modules = ("model",)  # networks the FastPath callback converts / compiles

    def __init__(
        self,
        model: DMADModel,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        gamma: float = 1.0,
        vq_weight: float = 1.0,
        w: float = 0.05,
        calibration_images: int = 64,
        calibration_source: Literal["train", "val"] = "train",
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        if calibration_source not in CALIBRATION_SOURCES:
            raise ValueError(
                f"calibration_source must be one of {CALIBRATION_SOURCES}, got "
                f"{calibration_source!r}"
            )
        if w < 0 or calibration_images < 0:
            raise ValueError(
                f"w and calibration_images must be >= 0, got w={w}, "
                f"calibration_images={calibration_images}"
            )
        super().__init__(optimizer, scheduler, postprocess, pixel_metrics)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "postprocess"])
        self.model = model
        # (low M, high M, low O, high O) over normal training images; NaN until calibrated:
        # of the per-image maxima (the score) and of the pixel values (the map).
        self.register_buffer("calibration", torch.full((4,), math.nan))
        self.register_buffer("pixel_calibration", torch.full((4,), math.nan))
        self._calibrated_at = -1  # global step of the last calibration
        self.rd_metrics = AnomalyMetrics(pixel_metrics=False)  # the pure RD score (w = 0)
        self._rd_score: Tensor | None = None

    # ------------------------------------------------------------------ detection
    def raw_maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """M' and O, unsmoothed, unnormalised: two ``(B, 1, H, W)`` for images in [0, 1]."""
        out = self.model(images)
        size = tuple(images.shape[-2:])
        discrepancy = feature_discrepancy(out.teacher, out.student, size)
        return out.deformation.inverse_warp(discrepancy), out.deformation.inverse_magnitude()

    def predict_anomaly(self, images: Tensor) -> AnomalyOutput:
        """Raw map ``(B, 1, H, W)`` = M_p + w O_p of the unsmoothed M' and O (the post-processor
        smooths the sum) and score ``(B,)`` = max M_n + w max O_n of the smoothed ones.

        ``_n``: min-max over the per-image maxima of the calibration images (``calibration``);
        ``_p``: over their pixel values (``pixel_calibration``), so that w weighs the two map
        terms on the scale of their pixels, as the official pixel evaluation does. The range of
        the maxima of O is tiny when the inverse fields reach their limit on every image (a
        fraction of a percent of O's pixel range), and with it w O_n outweighed M_n in the map.
        """
        m, o = self.raw_maps(images)
        m_s, o_s = self.postprocessor.smooth(m), self.postprocessor.smooth(o)
        low_m, high_m, low_o, high_o = self.calibration
        w = self.hparams.w
        self._rd_score = max_score(minmax(m_s, low_m, high_m)).detach()
        score = self._rd_score + w * max_score(minmax(o_s, low_o, high_o))
        if not torch.isfinite(score).all():
            raise FloatingPointError(f"DMAD produced non-finite scores {score.tolist()}")
        low_m, high_m, low_o, high_o = self.pixel_calibration
        return AnomalyOutput(minmax(m, low_m, high_m) + w * minmax(o, low_o, high_o), score)

    @torch.no_grad()
    def calibrate(self, images: Tensor, batch_size: int = 8) -> Tensor:
        """Set ``calibration`` (range of the per-image maxima of M' and O) and
        ``pixel_calibration`` (range of their pixel values) from normal images
        ``(N, 3, H, W)`` in [0, 1]; returns ``calibration``."""
        maxima, pixels = [], []
        for chunk in images.split(batch_size):
            m, o = (self.postprocessor.smooth(x) for x in self.raw_maps(chunk))
            maxima.append(torch.stack((max_score(m), max_score(o)), dim=1))
            pixels.append(torch.stack((m.amin(), m.amax(), o.amin(), o.amax())))
        stats = torch.cat(maxima)
        low, high = stats.amin(dim=0), stats.amax(dim=0)
        self.calibration.copy_(torch.stack((low[0], high[0], low[1], high[1])))
        pixels = torch.stack(pixels)
        self.pixel_calibration.copy_(
            torch.stack(
                (pixels[:, 0].min(), pixels[:, 1].max(), pixels[:, 2].min(), pixels[:, 3].max())
            )
        )
        return self.calibration

    # ------------------------------------------------------------------ training
    def training_step(self, batch: T.Batch, batch_idx: int) -> Tensor:
        out = self.model(batch[T.IMAGE])
        losses = dmad_losses(out, self.hparams.gamma, self.hparams.vq_weight)
        self.log("train/loss", losses["loss"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"})
        return losses["loss"]

    def _calibrate_current_weights(self) -> None:
        """Min-max statistics of the current weights on ``calibration_images`` normal training
        images; once per global step (validation, checkpoints and the end of fit share it)."""
        count = self.hparams.calibration_images
        if not count or self._calibrated_at == self.global_step:
            return
        images = self.calibration_set(count).to(self.device)
        was_training = self.training
        self.eval()
        stats = self.calibrate(images, self.trainer.datamodule.eval_batch_size)
        self.train(was_training)
        self._calibrated_at = self.global_step
        log.debug(
            "DMAD calibration (M low/high, O low/high) %s at step %d", stats, self.global_step
        )

    def calibration_set(self, count: int) -> Tensor:
        """The first ``count`` normal images of ``calibration_source``, ``(N, 3, H, W)``."""
        datamodule = self.trainer.datamodule
        if self.hparams.calibration_source == "train":
            return datamodule.first_train_images(count)
        self._check_calibration_source()
        dataset = datamodule.val_dataset
        return torch.stack([dataset[i][T.IMAGE] for i in range(min(count, len(dataset)))])

    def _check_calibration_source(self) -> None:
        datamodule = self.trainer.datamodule
        if self.hparams.calibration_source == "val" and (
            getattr(datamodule, "val_split", None) != "from_train"
        ):
            raise ValueError(
                "model.calibration_source=val calibrates on held-out normal training images: "
                "set dataset.val_split=from_train (got val_split="
                f"{getattr(datamodule, 'val_split', None)!r})"
            )

    def setup(self, stage: str) -> None:
        """Refuse ``calibration_source=val`` without a held-out split before any training."""
        if stage == "fit" and self._trainer is not None and self.trainer.datamodule is not None:
            self._check_calibration_source()

    def test_step(self, batch: T.Batch, batch_idx: int) -> dict[str, Any]:
        out = super().test_step(batch, batch_idx)
        if self._rd_score is not None:
            self.rd_metrics.update(self._rd_score, batch[T.GT_LABEL])
        return out

    def on_test_epoch_end(self) -> None:
        """Base metrics, plus ``img_auroc_w0`` (in the results row and the logs)."""
        super().on_test_epoch_end()
        value = self.rd_metrics.compute()["img_auroc"] if self.rd_metrics.update_count else math.nan
        self.rd_metrics.reset()
        if not math.isnan(value):
            self.log("test/img_auroc_w0", value)
            self.test_results["img_auroc_w0"] = value

    def on_validation_epoch_start(self) -> None:
        """While fitting, validation (and its F1 thresholds) scores like the test will."""
        if self.trainer.state.fn == TrainerFn.FITTING:
            self._calibrate_current_weights()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every checkpoint saved while fitting carries the calibration of its own weights.

        Extends the base hook (thresholds), never replaces it.
        """
        super().on_save_checkpoint(checkpoint)
        if self.trainer.state.fn == TrainerFn.FITTING:
            self._calibrate_current_weights()
            checkpoint["state_dict"]["calibration"] = self.calibration.detach().clone()
            checkpoint["state_dict"]["pixel_calibration"] = self.pixel_calibration.detach().clone()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints written before ``pixel_calibration`` scale the map as they were made:
        with the per-image maxima (``calibration``). Extends the base hook."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        if "calibration" in state:
            state.setdefault("pixel_calibration", state["calibration"].clone())

    def on_train_end(self) -> None:
        """Fix the min-max normalisation for the final weights."""
        self._calibrate_current_weights()
        log.info(
            "DMAD calibration (M low/high, O low/high) maxima %s, pixels %s",
            self.calibration.tolist(),
            self.pixel_calibration.tolist(),
        )
