"""Partial-diffusion reconstruction: noise an image to an intermediate step and denoise it back.

Shared by AnoDDPM (Wyatt et al. 2022: ancestral DDPM from lambda, simplex noise), DDAD
(Mousakhan et al. 2023: DDIM with a conditioning hook) and reconstruction with a pretrained DDPM.
"""

from collections.abc import Callable
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from adlab.diffusion.scheduler import DiffusionScheduler

EpsModel = Callable[[Tensor, Tensor], Tensor]
"""``eps_model(x_t (B, C, H, W), t (B,) long) -> eps (B, C, H, W)``, e.g. ``UNet``."""

ConditionFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``condition(x_t, t, eps, x0_hat) -> eps``: adjusts the predicted noise before each step."""


SAMPLERS = ("ddim", "ddpm")
"""Reverse-step rules of :func:`reconstruct` (``model.sampler``)."""


def check_sampler(kind: str, num_steps: int | None, t_start: int) -> None:
    """Refuse a sampler / step-count combination :func:`reconstruct` cannot run.

    Methods call it when they are built, so a bad ``model.sampler`` / ``model.num_steps`` fails
    before training, not at the first test batch.

    Raises:
        ValueError: naming the keys, the values and what is allowed.
    """
    if kind not in SAMPLERS:
        raise ValueError(f"model.sampler={kind!r}: expected one of {', '.join(SAMPLERS)}")
    if kind == "ddpm" and num_steps not in (None, t_start):
        raise ValueError(
            f"model.sampler=ddpm takes every step from model.t_start={t_start}, so "
            f"model.num_steps must be null or {t_start}, got {num_steps}; for skipped "
            "ancestral steps use model.sampler=ddim model.eta=1"
        )
    if num_steps is not None and not 1 <= num_steps <= max(t_start, 1):
        raise ValueError(
            f"model.num_steps={num_steps}: expected null or 1 .. model.t_start ({t_start})"
        )


def ddad_condition(y: Tensor, w: float, scheduler: DiffusionScheduler) -> ConditionFn:
    """DDAD's conditioning of the noise estimate on a target image (Mousakhan et al. 2023,
    eq. 8-9), used by DDAD and optionally by the pretrained DDPM.

    ``y_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps`` (the target noised with the *predicted*
    noise, as in the official ``reconstruction.py``) and
    ``eps_hat = eps - w sqrt(1 - abar_t) (y_t - x_t)``; ``w = 0`` returns ``eps`` unchanged.

    Args:
        y: ``(B, C, H, W)`` target in [-1, 1] (the test image itself at detection).
        w: Conditioning weight.
        scheduler: Provides ``abar_t``.

    Returns:
        A ``condition(x_t, t, eps, x0_hat) -> eps_hat`` hook for :func:`reconstruct`.
    """

    def condition(x_t: Tensor, t: Tensor, eps: Tensor, x0_hat: Tensor) -> Tensor:
        y_t = scheduler.add_noise(y, eps, t)
        sqrt_one_minus_abar = rearrange(scheduler.sqrt_one_minus_alphas_cumprod[t], "b -> b 1 1 1")
        return eps - w * sqrt_one_minus_abar * (y_t - x_t)

    return condition


def reconstruct(
    x: Tensor,
    t_start: int,
    unet: EpsModel,
    scheduler: DiffusionScheduler,
    num_steps: int | None = None,
    kind: Literal["ddim", "ddpm"] = "ddim",
    eta: float = 0.0,
    condition: ConditionFn | None = None,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
) -> Tensor:
    """Reconstruct ``x`` by partial diffusion to ``t_start`` and reverse denoising.

    1. ``x_lambda = add_noise(x, noise_fn(x, t_start - 1), t_start - 1)``, i.e. after lambda =
       ``t_start`` forward steps (AnoDDPM: "noise added at index lambda - 1").
    2. For the decreasing subsequence ``scheduler.set_timesteps(num_steps, t_start)`` and then
       index -1: ``eps = unet(x_t, t)``, optionally ``eps = condition(x_t, t, eps, x0_hat)`` with
       the unclipped ``x0_hat = predict_x0(x_t, t, eps)``, and ``x_t = scheduler.step(...)``.

    Gradients flow if enabled; wrap the call in ``torch.no_grad()`` for inference.

    Args:
        x: ``(B, C, H, W)`` images in [-1, 1].
        t_start: Number of forward steps lambda in ``0 .. T``; 0 returns ``x`` unchanged.
        unet: Noise predictor ``(x_t, t) -> eps``.
        scheduler: Schedule, step rule and ``noise_fn`` (Gaussian or simplex).
        num_steps: Network evaluations (DDIM skipping); None = all ``t_start`` steps. ``"ddpm"``
            needs all steps.
        kind: ``"ddim"`` (Song et al. 2021) or ``"ddpm"`` ancestral steps (Ho et al. 2020).
        eta: DDIM stochasticity (0 deterministic; 1 = DDPM posterior variance, as in DDAD).
        condition: Optional hook, e.g. DDAD's ``eps - w sqrt(1 - abar_t) (y_t - x_t)``.
        generator: Optional ``torch.Generator`` for the forward noise and stochastic steps.
        clip_x0: Clamp x0_hat to [-1, 1] in every step (guided-diffusion, AnoDDPM; DDAD: False).

    Returns:
        ``(B, C, H, W)`` reconstruction x0_hat.
    """
    if t_start == 0:
        return x.clone()
    check_sampler(kind, num_steps, t_start)
    timesteps = scheduler.set_timesteps(num_steps or t_start, t_start).tolist()
    t = torch.full((x.shape[0],), t_start - 1, device=x.device, dtype=torch.long)
    x_t = scheduler.add_noise(x, scheduler.sample_noise(x, t, generator), t)
    for t_cur, t_prev in zip(timesteps, timesteps[1:] + [-1], strict=True):
        t = torch.full_like(t, t_cur)
        eps = unet(x_t, t)
        if condition is not None:
            eps = condition(x_t, t, eps, scheduler.predict_x0(x_t, t, eps))
        # DDPM steps are consecutive by construction: no t_prev, so no per-step host check.
        x_t = scheduler.step(
            eps,
            t,
            x_t,
            t_prev=None if kind == "ddpm" else t_prev,
            eta=eta,
            kind=kind,
            clip_x0=clip_x0,
            generator=generator,
        )
    return x_t
