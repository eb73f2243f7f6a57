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
from adlab.postprocess import gaussian_smooth, max_score
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
        map_sigma: Gaussian smoothing of the error map before scoring (seed design: 4).
        smoothing_sigma: extra shared smoothing (base class), normally 0 here.
        pixel_metrics: compute pixel metrics.
    """

    def __init__(
        self,
        net: AutoEncoder,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        ssim_weight: float = 1.0,
        ssim_window: int = 11,
        map_type: Literal["l2", "ssim"] = "l2",
        map_sigma: float = 4.0,
        smoothing_sigma: float = 0.0,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler, smoothing_sigma, pixel_metrics)
        if map_type not in ("l2", "ssim"):
            raise ValueError(f"map_type must be 'l2' or 'ssim', got {map_type!r}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.ssim_weight = ssim_weight
        self.ssim_window = ssim_window
        self.map_type = map_type
        self.map_sigma = map_sigma

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
        """Map: ``(B, 1, H, W)`` smoothed reconstruction error; score: its max ``(B,)``."""
        x_hat = self.net(images)
        if self.map_type == "l2":
            error = (images - x_hat).pow(2)
        else:
            error = 1.0 - ssim(images, x_hat, self.ssim_window)
        anomaly_map = gaussian_smooth(error.mean(dim=1, keepdim=True), self.map_sigma)
        return AnomalyOutput(anomaly_map, max_score(anomaly_map), x_hat)
