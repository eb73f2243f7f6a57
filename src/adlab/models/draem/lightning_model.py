"""DRAEM (Zavrtanik et al., ICCV 2021): discriminatively trained reconstruction embedding.

Training: normal images (optionally rotated) get simulated anomalies from
:class:`adlab.synthesis.DraemAnomalySynthesizer`; the reconstructive net restores the clean image
(L2 + SSIM, eqs. 1-2) and the discriminative net segments the anomaly mask (focal loss, eq. 3).
Test: anomaly map = softmax probability of the anomaly channel; image score = max of its
``score_kernel`` x ``score_kernel`` mean-filtered map (eq. 5). See ``README.md`` here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.filters import box_blur
from kornia.geometry.transform import rotate
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from adlab import types as T
from adlab.models.base import AnomalyModule, OptimizerFactory, SchedulerFactory
from adlab.models.draem.loss import LossVariant, draem_losses
from adlab.models.draem.torch_model import DraemModel
from adlab.synthesis import DraemAnomalySynthesizer
from adlab.types import AnomalyOutput


def mean_filter_max(anomaly_map: Tensor, kernel_size: int = 21) -> Tensor:
    """Image score: max of the ``kernel_size``-box-filtered map (eq. 5), zero padding as
    ``avg_pool2d(..., padding=k // 2)`` in the official code: ``(B, 1, H, W) -> (B,)``."""
    smooth = box_blur(anomaly_map, kernel_size, border_type="constant", separable=True)
    return smooth.flatten(1).amax(dim=1)


def rotate_images(
    images: Tensor, prob: float, degrees: float, generator: torch.Generator | None = None
) -> Tensor:
    """Rotate each image with probability ``prob`` by ``U(-degrees, degrees)`` (zeros outside)."""
    if prob <= 0 or degrees <= 0:
        return images
    n = len(images)
    device = generator.device if generator is not None else images.device
    draws = torch.rand(2, n, generator=generator, device=device).to(images.device)
    angle = (2 * draws[0] - 1) * degrees * (draws[1] < prob)
    return rotate(images, angle)


def multistep_at_fractions(
    optimizer: Optimizer,
    max_epochs: int,
    milestones: Sequence[float] = (0.8, 0.9),
    gamma: float = 0.2,
) -> MultiStepLR:
    """``MultiStepLR`` with milestones given as fractions of ``max_epochs`` (official DRAEM)."""
    steps = sorted({max(1, int(f * max_epochs)) for f in milestones})
    return MultiStepLR(optimizer, milestones=steps, gamma=gamma)


class DraemModule(AnomalyModule):
    """DRAEM behind the one interface.

    Args:
        net: reconstructive + discriminative subnetworks.
        synthesizer: anomaly simulator applied to every training batch.
        optimizer: partial optimizer (paper: Adam lr 1e-4).
        scheduler: optional partial LR scheduler (see :func:`multistep_at_fractions`).
        ssim_weight: lambda of eq. 1 (official code: 1).
        ssim_window: SSIM window size.
        focal_gamma: focal loss gamma.
        loss_variant: ``official`` (default: the official code's zero-padded SSIM with L from the
            reconstruction and smoothed focal loss, as behind the paper's numbers) or ``kornia``.
        score_kernel: mean-filter size of the image score (paper: 21).
        rotate_prob: probability of rotating a normal training image (official code: 0.3).
        rotate_degrees: rotation range +-degrees (paper: 45; official code: 90).
        smoothing_sigma: extra shared smoothing (base class), 0 in the paper.
        pixel_metrics: compute pixel metrics.
    """

    def __init__(
        self,
        net: DraemModel,
        synthesizer: DraemAnomalySynthesizer,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        ssim_weight: float = 1.0,
        ssim_window: int = 11,
        focal_gamma: float = 2.0,
        loss_variant: LossVariant = "official",
        score_kernel: int = 21,
        rotate_prob: float = 0.3,
        rotate_degrees: float = 45.0,
        smoothing_sigma: float = 0.0,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler, smoothing_sigma, pixel_metrics)
        if loss_variant not in ("official", "kornia"):
            raise ValueError(f"loss_variant must be 'official' or 'kornia', got {loss_variant!r}")
        self.save_hyperparameters(ignore=["net", "synthesizer", "optimizer", "scheduler"])
        self.net = net
        self.synthesizer = synthesizer

    def training_step(self, batch: T.Batch, batch_idx: int) -> Tensor:
        """L = L2 + lambda L_SSIM + L_focal on a batch with simulated anomalies (eq. 3)."""
        hp = self.hparams
        image = rotate_images(batch[T.IMAGE], hp.rotate_prob, hp.rotate_degrees)
        augmented, mask = self.synthesizer(image)
        out = self.net(augmented)
        terms = draem_losses(
            out.reconstruction,
            out.logits,
            image,
            mask,
            hp.ssim_window,
            hp.focal_gamma,
            hp.loss_variant,
        )
        loss = terms["l2"] + hp.ssim_weight * terms["ssim"] + terms["focal"]
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def predict_anomaly(self, images: Tensor) -> AnomalyOutput:
        """Map ``(B, 1, H, W)``: anomaly probability; score: mean-filtered max; reconstruction."""
        out = self.net(images)
        anomaly_map = out.logits.softmax(dim=1)[:, 1:]
        pred_score = mean_filter_max(anomaly_map, self.hparams.score_kernel)
        return AnomalyOutput(anomaly_map, pred_score, out.reconstruction.clamp(0, 1))
