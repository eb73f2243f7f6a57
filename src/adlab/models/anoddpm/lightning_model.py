"""AnoDDPM (Wyatt et al., CVPR-W 2022): partial diffusion with simplex noise.

Training: epsilon-prediction DDPM on normal images, forward noise from the scheduler's
``noise_fn`` (simplex by default), t ~ U{0 .. train_t_max - 1}. Test: diffuse each image to
lambda = ``t_start``, denoise back with the shared ``reconstruct``; anomaly map = channel-mean
squared error in [-1, 1] space. The network is the shared :class:`adlab.diffusion.UNet`; the
method differs from DDAD and the pretrained DDPM by config only. See ``README.md`` here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from adlab import types as T
from adlab.diffusion import DiffusionScheduler, UNet, check_sampler, reconstruct
from adlab.models.averaging import EMAAndClipping, ema_copy
from adlab.models.base import AnomalyModule, OptimizerFactory, SchedulerFactory
from adlab.postprocess import PostProcessor
from adlab.types import AnomalyOutput


class AnoDDPMModule(EMAAndClipping, AnomalyModule):
    """AnoDDPM behind the one interface.

    Args:
        unet: noise predictor ``(x_t, t) -> eps``.
        noise_scheduler: schedule, step rule and noise function (simplex or Gaussian).
        optimizer: partial optimizer (paper: AdamW lr 1e-4).
        scheduler: optional partial LR scheduler.
        train_t_max: training timesteps are drawn from ``0 .. train_t_max - 1`` (paper: 800).
        t_start: lambda, the partial-diffusion depth at test time (paper: 250 of 1000).
        sampler: ``ddpm`` (paper: every ancestral step) or ``ddim``.
        num_steps: network evaluations for ``ddim`` (None: all ``t_start``).
        eta: DDIM stochasticity.
        ema_decay: EMA of the weights used at test time (paper: 0.9999, with the warm-up of
            :func:`~adlab.models.averaging.ema_with_warmup`); 0 disables it.
        grad_clip_norm: gradient-norm clipping (paper: 1.0); 0 disables it.
        eval_seed: seed of the test-time noise, so evaluations are repeatable.
        postprocess: smoothing of the error map (official: sigma 4) and the score rule (max).
        pixel_metrics: compute pixel metrics.
    """

    default_postprocess = PostProcessor(sigma=4.0, score="max")
    fast_path_modules = ("unet",)  # networks the FastPath callback converts / compiles

    def __init__(
        self,
        unet: UNet,
        noise_scheduler: DiffusionScheduler,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        train_t_max: int = 800,
        t_start: int = 250,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        num_steps: int | None = None,
        eta: float = 0.0,
        ema_decay: float = 0.9999,
        grad_clip_norm: float = 1.0,
        eval_seed: int = 0,
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler, postprocess, pixel_metrics)
        check_sampler(sampler, num_steps, t_start)
        total = noise_scheduler.num_train_timesteps
        if not 0 < train_t_max <= total or not 0 <= t_start <= total:
            raise ValueError(
                f"need 0 < train_t_max <= T and 0 <= t_start <= T (T={total}); got "
                f"train_t_max={train_t_max}, t_start={t_start}"
            )
        ignore = ["unet", "noise_scheduler", "optimizer", "scheduler", "postprocess"]
        self.save_hyperparameters(ignore=ignore)
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.ema = ema_copy(unet, ema_decay, warmup=True)

    def trainable_parameters(self) -> Any:
        return self.unet.parameters()

    def training_step(self, batch: T.Batch, batch_idx: int) -> Tensor:
        """L2 between predicted and true noise at a random t (AnoDDPM sec. 4, Ho et al. eq. 14)."""
        x0 = batch[T.IMAGE] * 2 - 1
        t = torch.randint(0, self.hparams.train_t_max, (x0.shape[0],), device=x0.device)
        eps = self.noise_scheduler.sample_noise(x0, t)
        x_t = self.noise_scheduler.add_noise(x0, eps, t)
        loss = F.mse_loss(self.unet(x_t, t), eps)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def ema_source(self) -> UNet:
        """The EMA follows the UNet after every training batch."""
        return self.unet

    def predict_anomaly(self, images: Tensor) -> AnomalyOutput:
        """Raw map ``(B, 1, H, W)``: squared error of the partial-diffusion reconstruction."""
        x0 = images * 2 - 1
        generator = torch.Generator(device=images.device).manual_seed(self.hparams.eval_seed)
        unet = self.averaged(self.unet)
        x0_hat = reconstruct(
            x0,
            self.hparams.t_start,
            unet,
            self.noise_scheduler,
            num_steps=self.hparams.num_steps,
            kind=self.hparams.sampler,
            eta=self.hparams.eta,
            generator=generator,
        )
        error = (x0 - x0_hat).pow(2).mean(dim=1, keepdim=True)
        return AnomalyOutput(error, None, (x0_hat + 1) / 2)
