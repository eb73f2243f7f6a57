"""DRAEM (Zavrtanik et al., ICCV 2021): discriminatively trained reconstruction embedding.

Training: normal images (optionally rotated) get simulated anomalies from
:class:`adlab.synthesis.DraemAnomalySynthesizer`; the reconstructive net restores the clean image
(L2 + SSIM, eqs. 1-2) and the discriminative net segments the anomaly mask (focal loss, eq. 3).
Test: anomaly map = softmax probability of the anomaly channel; image score = max of its
21 x 21 mean-filtered map (eq. 5: ``postprocess.score=mean_filtered_max``). See ``README.md`` here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.geometry.transform import rotate
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from adlab import types as T
from adlab.models.base import AnomalyModule, OptimizerFactory, SchedulerFactory
from adlab.models.draem.loss import LossVariant, draem_losses
from adlab.models.draem.torch_model import DraemModel
from adlab.postprocess import PostProcessor
from adlab.synthesis import DraemAnomalySynthesizer
from adlab.types import AnomalyOutput


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
        rotate_prob: probability of rotating a normal training image (official code: 0.3).
        rotate_degrees: rotation range +-degrees (paper: 45; official code: 90).
        postprocess: no smoothing; score ``mean_filtered_max`` with ``kernel_size`` 21 (eq. 5,
            zero padding as the official ``avg_pool2d(..., padding=k // 2)``).
        pixel_metrics: compute pixel metrics.
    """

    default_postprocess = PostProcessor(score="mean_filtered_max", kernel_size=21)
    fast_path_modules = ("net",)  # networks the FastPath callback converts / compiles

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
        rotate_prob: float = 0.3,
        rotate_degrees: float = 45.0,
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler, postprocess, pixel_metrics)
        if loss_variant not in ("official", "kornia"):
            raise ValueError(f"loss_variant must be 'official' or 'kornia', got {loss_variant!r}")
        ignore = ["net", "synthesizer", "optimizer", "scheduler", "postprocess"]
        self.save_hyperparameters(ignore=ignore)
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
        """Raw map ``(B, 1, H, W)``: anomaly probability; the reconstruction."""
        out = self.net(images)
        anomaly_map = out.logits.softmax(dim=1)[:, 1:]
        return AnomalyOutput(anomaly_map, None, out.reconstruction.clamp(0, 1))
