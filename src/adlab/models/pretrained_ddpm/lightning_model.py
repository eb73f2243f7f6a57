"""Training-free reconstruction with OpenAI's ImageNet DDPM (guided-diffusion 256x256 uncond).

Test: map each image to [-1, 1], noise it to ``t_start`` (Ho et al. eq. 4), denoise with DDIM or
ancestral steps through the shared ``reconstruct`` (optionally DDAD-conditioned on the input,
optionally averaging several reconstructions), and compare: map = channel mean of
``|x - x_hat|`` (or its square), Gaussian-smoothed; score = map max. No training stage
(``requires_training = False``): the weights are the checkpoint's. See ``README.md`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from adlab import types as T
from adlab.diffusion import DiffusionScheduler, UNet, check_sampler, ddad_condition, reconstruct
from adlab.diffusion.unet import checked_image_size
from adlab.models.base import AnomalyModule
from adlab.models.pretrained_ddpm.loader import load_pretrained_unet
from adlab.postprocess import PostProcessor
from adlab.types import AnomalyOutput


class PretrainedDDPMModule(AnomalyModule):
    """Partial-diffusion reconstruction with frozen pretrained weights.

    Args:
        unet: builds the guided-diffusion UNet with the checkpoint's flags (Hydra
            ``_partial_: true``, so the weights are loaded without a random initialisation
            first); with ``learn_sigma`` its ``forward`` returns the eps channels only.
        noise_scheduler: the checkpoint's schedule (T = 1000, linear betas).
        checkpoint: path of ``256x256_diffusion_uncond.pt`` (a plain state_dict), or None with
            ``random_init=True``.
        random_init: keep random weights (smoke tests only; scores are meaningless).
        input_size: the images' size (``dataset.image_size``), checked against the UNet's
            down-sampling when the module is built; None skips the check.
        t_start: noising depth t0 of ``T`` (spec: 250; sweep 100-400).
        sampler: ``ddim`` (Song et al. 2021) or ``ddpm`` (ancestral, every step from t0).
        num_steps: network evaluations for ``ddim`` (spec: 25); None = all ``t_start``.
        eta: DDIM stochasticity (0 deterministic, 1 = DDPM posterior variance).
        clip_x0: clamp x0_hat to [-1, 1] in every step (guided-diffusion; DDAD: false).
        condition_weight: DDAD weight w of :func:`ddad_condition` (0 = unconditioned).
        num_reconstructions: reconstructions with independent noise, averaged before the map.
        map_type: ``l1`` (channel mean of ``|x - x_hat|``) or ``l2`` (of the square), in [-1, 1].
        eval_seed: seed of the test-time noise, so evaluations are repeatable.
        postprocess: smoothing of the map (spec: sigma 4) and the score rule (max).
        pixel_metrics: compute pixel metrics.
    """

    requires_training = False
    default_postprocess = PostProcessor(sigma=4.0, score="max")
    fast_path_modules = ("unet",)  # networks the FastPath callback converts / compiles

    def __init__(
        self,
        unet: Callable[[], UNet],
        noise_scheduler: DiffusionScheduler,
        checkpoint: str | None = None,
        random_init: bool = False,
        input_size: int | Sequence[int] | None = None,
        t_start: int = 250,
        sampler: Literal["ddim", "ddpm"] = "ddim",
        num_steps: int | None = 25,
        eta: float = 0.0,
        clip_x0: bool = True,
        condition_weight: float = 0.0,
        num_reconstructions: int = 1,
        map_type: Literal["l1", "l2"] = "l1",
        eval_seed: int = 0,
        postprocess: PostProcessor | None = None,
        pixel_metrics: bool = True,
    ) -> None:
        super().__init__(None, None, postprocess, pixel_metrics)
        if not 0 <= t_start <= noise_scheduler.num_train_timesteps:
            raise ValueError(f"t_start must be in 0 .. T, got {t_start}")
        check_sampler(sampler, num_steps, t_start)
        if map_type not in ("l1", "l2"):
            raise ValueError(f"map_type must be 'l1' or 'l2', got {map_type!r}")
        if num_reconstructions < 1:
            raise ValueError(f"num_reconstructions must be >= 1, got {num_reconstructions}")
        self.save_hyperparameters(ignore=["unet", "noise_scheduler", "postprocess", "input_size"])
        self.unet = load_pretrained_unet(unet, checkpoint, random_init).requires_grad_(False)
        if input_size is not None:
            checked_image_size(input_size, self.unet.levels)
        self.noise_scheduler = noise_scheduler

    def training_step(self, batch: T.Batch, batch_idx: int) -> Tensor:
        """There is nothing to train; the CLI skips ``fit`` because ``requires_training`` is False.

        Raises:
            RuntimeError: always.
        """
        raise RuntimeError(
            "pretrained_ddpm is training-free (requires_training = False): run the test stage "
            "only (trainer.test), the weights come from model.checkpoint"
        )

    def predict_anomaly(self, images: Tensor) -> AnomalyOutput:
        """Raw map ``(B, 1, H, W)``: pixel distance to the (averaged) reconstruction.

        ``H`` and ``W`` must be divisible by ``2 ** (len(channel_mult) - 1)`` (32 for the
        checkpoint); the checkpoint was trained at 256 px (``dataset.image_size=256``).
        """
        x0 = images * 2 - 1
        generator = torch.Generator(device=images.device).manual_seed(self.hparams.eval_seed)
        w = self.hparams.condition_weight
        condition = ddad_condition(x0, w, self.noise_scheduler) if w else None
        x0_hat = torch.stack(
            [
                reconstruct(
                    x0,
                    self.hparams.t_start,
                    self.unet,
                    self.noise_scheduler,
                    num_steps=self.hparams.num_steps,
                    kind=self.hparams.sampler,
                    eta=self.hparams.eta,
                    condition=condition,
                    generator=generator,
                    clip_x0=self.hparams.clip_x0,
                )
                for _ in range(self.hparams.num_reconstructions)
            ]
        ).mean(dim=0)
        error = (x0 - x0_hat).abs()
        if self.hparams.map_type == "l2":
            error = error.square()
        return AnomalyOutput(error.mean(dim=1, keepdim=True), None, (x0_hat + 1) / 2)

    # --------------------------------------------- keep the 2.2 GB weights out of run checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the UNet weights when they come from ``checkpoint`` (re-read on construction)."""
        super().on_save_checkpoint(checkpoint)
        if self.hparams.checkpoint is not None:
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("unet.")
            }

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """Fill UNet weights left out by :meth:`on_save_checkpoint` from the loaded file."""
        if self.hparams.checkpoint is not None:
            own = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
            state_dict = own | dict(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
