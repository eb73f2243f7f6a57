"""Lightning wiring of the autoencoder baseline: MSE + SSIM loss, reconstruction-error map."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from kornia.losses import ssim_loss
from kornia.metrics import ssim

from adlab import types as T
from adlab.models.autoencoder.torch_model import AutoEncoder
from adlab.models.base import AnomalyModule, OptimizerFactory, SchedulerFactory
from adlab.postprocess import PostProcessor
from adlab.types import AnomalyOutput


class AutoEncoderModule(AnomalyModule):
    """Autoencoder trained on normal images; anomalies reconstruct badly.

    Args:
        net: the autoencoder.
        optimizer: partial optimizer.
        scheduler: optional partial LR scheduler.
        ssim_weight: weight of the SSIM loss added to the MSE loss.
        ssim_window: SSIM window size (odd) for loss and map.
        map_type: ``l2`` (channel-mean squared error) or ``ssim`` (1 - SSIM, channel mean).
        postprocess: map post-processing and score rule (seed design: smoothing sigma 4, max).
        pixel_metrics: compute pixel metrics.
    """

    default_postprocess = PostProcessor(sigma=4.0, score="max")
    fast_path_modules = ("net",)  # networks the FastPath callback converts / compiles

    def __init__(
        self,
        net: AutoEncoder,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        ssim_weight: float = 1.0,
        ssim_window: int = 11,
        map_type: Literal["l2", "ssim"] = "l2",
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler, postprocess, pixel_metrics)
        if map_type not in ("l2", "ssim"):
            raise ValueError(f"map_type must be 'l2' or 'ssim', got {map_type!r}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "postprocess"])
        self.net = net
        self.ssim_weight = ssim_weight
        self.ssim_window = ssim_window
        self.map_type = map_type

    def training_step(self, batch: T.Batch, batch_idx: int) -> torch.Tensor:
        x = batch[T.IMAGE]
        x_hat = self.net(x)
        mse = F.mse_loss(x_hat, x)
        loss = mse
        if self.ssim_weight > 0:
            ssim_term = ssim_loss(x_hat, x, self.ssim_window)
            loss = loss + self.ssim_weight * ssim_term
            self.log("train/ssim_loss", ssim_term)
        self.log("train/mse", mse)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def predict_anomaly(self, images: torch.Tensor) -> AnomalyOutput:
        """Raw map ``(B, 1, H, W)``: channel-mean reconstruction error; the reconstruction."""
        x_hat = self.net(images)
        if self.map_type == "l2":
            error = (images - x_hat).pow(2)
        else:
            error = 1.0 - ssim(images, x_hat, self.ssim_window)
        return AnomalyOutput(error.mean(dim=1, keepdim=True), None, x_hat)
