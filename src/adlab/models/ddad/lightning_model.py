"""DDAD (Mousakhan, Brox, Tayyub 2023): anomaly detection with conditioned denoising diffusion.

Two training stages, chosen by ``stage`` (one run each):

- ``diffusion``: epsilon-prediction DDPM on normal images (paper eq. 2; loss summed over pixels,
  Adam with coupled weight decay, as the official code); the feature extractor is frozen.
- ``domain_adaptation``: the UNet is frozen; the feature extractor phi is fine-tuned with
  :func:`domain_adaptation_loss` on conditioned reconstructions of normal images, against a
  frozen copy phibar of itself. Start it from a ``diffusion`` checkpoint's weights (CLI
  ``init_from=...``); the adapted extractor is part of the module state, so the run's checkpoint
  holds it and detection uses it.

Detection (both stages' test): noise the image to ``t_start`` and denoise with the shared
``reconstruct`` (DDIM, ``num_steps`` evaluations, ``eta``), the noise estimate conditioned on the
image itself with weight ``w``; raw map = D_f + v (max D_f / max D_p) D_p per image; the
post-processor smooths it (sigma 4) and scores its max (inside ``postprocess.eval_crop``, the
official protocol). See ``README.md`` here.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from adlab import types as T
from adlab.backbones import FeatureExtractor
from adlab.diffusion import DiffusionScheduler, UNet, ddad_condition, reconstruct
from adlab.models.averaging import EMAAndClipping, ema_copy
from adlab.models.base import AnomalyModule, OptimizerFactory, SchedulerFactory
from adlab.models.ddad.torch_model import (
    combine_distances,
    domain_adaptation_loss,
    feature_distance,
    pixel_distance,
)
from adlab.postprocess import PostProcessor
from adlab.types import AnomalyOutput

log = logging.getLogger(__name__)
Stage = Literal["diffusion", "domain_adaptation"]
STAGES = ("diffusion", "domain_adaptation")
RatioMode = Literal["calibrated", "batch", "image"]
RATIO_MODES = ("calibrated", "batch", "image")


@contextmanager
def per_image_noise(scheduler: DiffusionScheduler) -> Iterator[None]:
    """Temporarily replace a :class:`RepeatedNoise` sampler noise by its per-image base noise."""
    shared = scheduler.noise_fn
    scheduler.noise_fn = getattr(shared, "base", shared)
    try:
        yield
    finally:
        scheduler.noise_fn = shared


def _check_map_layers(map_layers: tuple[int, ...], num_maps: int) -> None:
    """``map_layers`` index the extractor's ``num_maps`` outputs (``out_indices``)."""
    if not map_layers or not all(0 <= j < num_maps for j in map_layers):
        raise ValueError(
            f"model.map_layers={list(map_layers)}: positions in the feature extractor's "
            f"{num_maps} maps (model.feature_extractor.out_indices); expected a non-empty list "
            f"of values in 0 .. {num_maps - 1}"
        )


class DDADModule(EMAAndClipping, AnomalyModule):
    """DDAD behind the one interface.

    Args:
        unet: Noise predictor ``(x_t, t) -> eps``.
        noise_scheduler: Schedule and step rule; its ``noise_fn`` is the sampler's noise (the
            config uses :class:`RepeatedNoise`); training noise is Gaussian.
        feature_extractor: Backbone returning the maps of ``out_indices`` (paper: WRN-101
            layer1-3).
        optimizer: Partial optimizer of the diffusion stage (paper: Adam lr 3e-4, wd 0.05).
        da_optimizer: Partial optimizer of the domain-adaptation stage (paper: AdamW lr 1e-4).
        scheduler: Optional partial LR scheduler (either stage).
        stage: ``diffusion`` or ``domain_adaptation``: what ``training_step`` trains.
        t_start: T', the noising depth at test (paper: 250 of 1000).
        num_steps: Network evaluations from T' (paper: 10, i.e. skip 25).
        eta: DDIM stochasticity (paper: 1).
        w: Conditioning weight at detection (paper: per category).
        v: Weight of the pixel distance in the map (paper: 1 MVTec, 7 VisA).
        map_layers: Positions in the extractor's outputs used for D_f (paper: layer2, layer3).
        ratio_images: Normal training images (the first, in file order) used to calibrate the
            pixel-term ratio ``max D_f / max D_p`` for the weights of every checkpoint saved
            while fitting and at the end of the fit (``ratio_mode="calibrated"``); 0 scales
            every image by its own ratio.
        ratio_mode: ``calibrated`` (default: the ratio from ``ratio_images`` training images, so
            a score does not depend on its batch), ``batch`` (the official code: maxima over the
            test batch, e.g. 16 images) or ``image`` (each image's own maxima).
        da_w: Conditioning weight of the domain-adaptation reconstructions (paper: 3).
        da_lambda: lambda of the domain-adaptation loss (paper: 0.1 MVTec, 0.01 VisA).
        ema_decay: EMA of the UNet weights used for sampling; 0 disables it (paper: none).
        grad_clip_norm: Gradient-norm clipping; 0 disables it (paper: none).
        eval_seed: Seed of the test-time noise, so evaluations are repeatable.
        postprocess: Smoothing (paper: sigma 4), score rule (max) and ``eval_crop`` (official
            protocol: score and pixel metrics on the central 224 of a 256 map and mask; the
            input is not cropped).
        pixel_metrics: Compute pixel metrics.
    """

    default_postprocess = PostProcessor(sigma=4.0, score="max")
    fast_path_modules = ("unet", "feature_extractor")  # networks FastPath converts / compiles

    def __init__(
        self,
        unet: UNet,
        noise_scheduler: DiffusionScheduler,
        feature_extractor: FeatureExtractor,
        optimizer: OptimizerFactory | None = None,
        da_optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        stage: Stage = "diffusion",
        t_start: int = 250,
        num_steps: int = 10,
        eta: float = 1.0,
        w: float = 3.0,
        v: float = 1.0,
        map_layers: tuple[int, ...] = (1, 2),
        ratio_images: int = 32,
        ratio_mode: RatioMode = "calibrated",
        da_w: float = 3.0,
        da_lambda: float = 0.1,
        ema_decay: float = 0.0,
        grad_clip_norm: float = 0.0,
        eval_seed: int = 0,
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if ratio_mode not in RATIO_MODES:
            raise ValueError(f"ratio_mode must be one of {RATIO_MODES}, got {ratio_mode!r}")
        if not 1 <= num_steps <= t_start <= noise_scheduler.num_train_timesteps:
            raise ValueError(
                f"need 1 <= num_steps <= t_start <= T ({noise_scheduler.num_train_timesteps}); "
                f"got num_steps={num_steps}, t_start={t_start}"
            )
        adapting = stage == "domain_adaptation"
        map_layers = tuple(map_layers)  # a plain tuple in hparams (no ListConfig in checkpoints)
        _check_map_layers(map_layers, len(feature_extractor.channels))
        super().__init__(
            da_optimizer if adapting else optimizer, scheduler, postprocess, pixel_metrics
        )
        self.save_hyperparameters(
            ignore=[
                "unet",
                "noise_scheduler",
                "feature_extractor",
                "optimizer",
                "da_optimizer",
                "scheduler",
                "postprocess",
            ]
        )
        self.unet = unet.requires_grad_(not adapting)
        self.noise_scheduler = noise_scheduler
        self.feature_extractor = feature_extractor.set_trainable(adapting)
        self.ema = ema_copy(unet, ema_decay, warmup=False)
        # max D_f / max D_p over normal training images; NaN until calibrated (per-image ratio).
        self.register_buffer("pixel_ratio", torch.tensor(float("nan")))
        self._calibrated_at = -1  # global step of the last calibration
        # phibar, the frozen copy of the extractor before adaptation: kept out of the module tree
        # (not trained, not checkpointed; it equals the loaded extractor at the first DA step).
        self._frozen: dict[str, FeatureExtractor] = {}

    @property
    def adapting(self) -> bool:
        """True in the domain-adaptation stage."""
        return self.hparams.stage == "domain_adaptation"

    def trainable_parameters(self) -> Any:
        return (self.feature_extractor if self.adapting else self.unet).parameters()

    # ------------------------------------------------------------------ sampling and map
    def sampling_unet(self) -> UNet:
        """The UNet used for reconstructions: the EMA copy if enabled."""
        return self.averaged(self.unet)

    def reconstruct(
        self, x: Tensor, y: Tensor, w: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """Conditioned reconstruction of ``x`` toward ``y`` (paper sec. 3.2, no gradients).

        Args:
            x: ``(B, 3, H, W)`` images to reconstruct, in [0, 1].
            y: ``(B, 3, H, W)`` conditioning targets in [0, 1] (``x`` itself at detection).
            w: Conditioning weight (0 = the plain DDIM sampler).
            generator: Seeds the forward and step noise.

        Returns:
            ``(B, 3, H, W)`` reconstruction x0 in [-1, 1] (not clipped, as the official code).
        """
        y = y * 2 - 1
        with torch.no_grad():
            return reconstruct(
                x * 2 - 1,
                self.hparams.t_start,
                self.sampling_unet(),
                self.noise_scheduler,
                num_steps=self.hparams.num_steps,
                kind="ddim",
                eta=self.hparams.eta,
                condition=ddad_condition(y, w, self.noise_scheduler) if w else None,
                generator=generator,
                clip_x0=False,
            )

    def distances(self, images: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """D_f and D_p ``(B, 1, H, W)`` of images in [0, 1] vs reconstructions in [-1, 1]."""
        layers = self.hparams.map_layers
        feats_x = self.feature_extractor(images)
        feats_x0 = self.feature_extractor((x0 + 1) / 2)
        d_f = feature_distance(
            [feats_x[j] for j in layers], [feats_x0[j] for j in layers], tuple(images.shape[-2:])
        )
        return d_f, pixel_distance(images * 2 - 1, x0)

    def anomaly_map(self, images: Tensor, x0: Tensor) -> Tensor:
        """Unsmoothed map ``(B, 1, H, W)``; the pixel-term ratio follows ``ratio_mode``
        (``calibrated`` falls back to per image until a ratio is calibrated)."""
        d_f, d_p = self.distances(images, x0)
        ratio: Tensor | None = None
        if self.hparams.ratio_mode == "batch":  # official anomaly_map.py: maxima over the batch
            ratio = d_f.max() / d_p.max().clamp(min=1e-8)
        elif self.hparams.ratio_mode == "calibrated" and not torch.isnan(self.pixel_ratio):
            ratio = self.pixel_ratio
        return combine_distances(d_f, d_p, self.hparams.v, ratio)

    def calibrate_pixel_ratio(self, images: Tensor) -> float:
        """Set ``pixel_ratio = max D_f / max D_p`` over normal images ``(N, 3, H, W)`` in [0, 1].

        Reconstructions use the test-time sampler (seeded, conditioned with ``w``).
        """
        generator = torch.Generator(device=images.device).manual_seed(self.hparams.eval_seed)
        with torch.no_grad():
            x0 = self.reconstruct(images, images, self.hparams.w, generator)
            d_f, d_p = self.distances(images, x0)
        self.pixel_ratio.fill_(float(d_f.max() / d_p.max().clamp(min=1e-8)))
        return float(self.pixel_ratio)

    def predict_anomaly(self, images: Tensor) -> AnomalyOutput:
        """Raw map ``(B, 1, H, W)`` of images ``(B, 3, H, W)`` in [0, 1]; the reconstruction."""
        generator = torch.Generator(device=images.device).manual_seed(self.hparams.eval_seed)
        x0 = self.reconstruct(images, images, self.hparams.w, generator)
        return AnomalyOutput(self.anomaly_map(images, x0), None, ((x0 + 1) / 2).clamp(0, 1))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: T.Batch, batch_idx: int) -> Tensor | None:
        if self.adapting:
            return self._adaptation_step(batch[T.IMAGE])
        return self._diffusion_step(batch[T.IMAGE])

    def _diffusion_step(self, images: Tensor) -> Tensor:
        """``E ||eps - eps_theta(x_t, t)||^2``, summed over C, H, W, mean over the batch (eq. 2)."""
        x0 = images * 2 - 1
        t = torch.randint(
            0, self.noise_scheduler.num_train_timesteps, (x0.shape[0],), device=x0.device
        )
        eps = torch.randn_like(x0)
        x_t = self.noise_scheduler.add_noise(x0, eps, t)
        loss = (self.unet(x_t, t) - eps).pow(2).sum(dim=(1, 2, 3)).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def frozen_extractor(self) -> FeatureExtractor:
        """phibar: a frozen copy of the extractor, taken the first time it is needed."""
        if "phibar" not in self._frozen:
            self._frozen["phibar"] = copy.deepcopy(self.feature_extractor).set_trainable(False)
        return self._frozen["phibar"]

    def _adaptation_step(self, images: Tensor) -> Tensor | None:
        """Split the batch: targets y (first half), inputs x (second half); eq. 13-14 on phi."""
        half = images.shape[0] // 2
        if half == 0:
            return None  # a 1-image remainder batch (the official loader drops it)
        phibar = self.frozen_extractor()
        y, x = images[:half], images[half : 2 * half]
        self.sampling_unet().eval()
        with per_image_noise(self.noise_scheduler):  # official: i.i.d. noise for every image
            x0 = (self.reconstruct(x, y, self.hparams.da_w) + 1) / 2
        with torch.no_grad():
            phibar_x0, phibar_y = phibar(x0), phibar(y)
        phi_x0, phi_y = self.feature_extractor(x0), self.feature_extractor(y)
        loss = domain_adaptation_loss(phi_x0, phi_y, phibar_x0, phibar_y, self.hparams.da_lambda)
        self.log("train/da_loss", loss, prog_bar=True)
        return loss

    def _calibrate_current_weights(self) -> None:
        """``pixel_ratio`` of the current weights on the first ``ratio_images`` normal training
        images; once per global step (checkpoint saves and the end of the fit share it).

        Under DDP rank 0's ratio is broadcast, so every rank (and every file) holds one value.
        """
        count = self.hparams.ratio_images
        if self.hparams.ratio_mode != "calibrated":
            count = 0
        if not count or self._calibrated_at == self.global_step:
            return
        images = self.trainer.datamodule.first_train_images(count).to(self.device)
        was_training = self.training
        self.eval()
        self.calibrate_pixel_ratio(images)
        self.train(was_training)
        self.pixel_ratio.copy_(self.trainer.strategy.broadcast(self.pixel_ratio.clone(), src=0))
        self._calibrated_at = self.global_step
        log.info(
            "DDAD pixel_ratio %.4g from %d training images at step %d",
            float(self.pixel_ratio),
            len(images),
            self.global_step,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint saved while fitting holds the ratio of its own weights (the final
        ModelCheckpoint write comes before ``on_train_end``); extends the base hook."""
        super().on_save_checkpoint(checkpoint)
        if self.trainer.state.fn == TrainerFn.FITTING:
            self._calibrate_current_weights()
            checkpoint["state_dict"]["pixel_ratio"] = self.pixel_ratio.detach().clone()

    def on_train_end(self) -> None:
        """Calibrate ``pixel_ratio`` for the final weights (a no-op after a save at this step)."""
        self._calibrate_current_weights()

    def ema_source(self) -> UNet | None:
        """The EMA follows the UNet in the diffusion stage (frozen while adapting)."""
        return None if self.adapting else self.unet
