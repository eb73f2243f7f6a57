"""Gaussian (or simplex) diffusion scheduler: forward noising and DDPM / DDIM reverse steps.

Timestep convention (as in openai/guided-diffusion and diffusers): a timestep ``t`` is an index
``0 .. T-1`` into the schedule, and ``x_t`` has ``alphas_cumprod[t] = prod_{s <= t} (1 - beta_s)``;
index ``t`` is step ``t + 1`` of Ho et al. (2020), whose ``x_0`` is the clean image. Index ``-1``
denotes the clean image itself, with ``alphas_cumprod[-1] := 1`` (DDIM's ``alpha_0 = 1``; DDAD's
``abar_{-1}``), so ``add_noise(x0, eps, -1) == x0`` and the last reverse step goes to ``-1``. The
network is always fed the index ``t`` (never ``t + 1``), matching pretrained guided-diffusion
weights.
"""

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from adlab.diffusion.schedules import get_beta_schedule
from adlab.synthesis.noise import NoiseFn, gaussian_noise

VARIANCE_TYPES = ("fixed_large", "fixed_small")
"""Values of ``variance_type`` (the DDPM step's fixed reverse-process variance)."""


class DiffusionScheduler(nn.Module):
    """Holds the schedule constants and implements q-sampling and reverse steps.

    All constants are float32 non-persistent buffers (derived in float64), so they follow
    ``.to(device)`` and never enter checkpoints.

    Args:
        num_train_timesteps: T.
        beta_schedule: Name understood by ``get_beta_schedule`` (``"linear"``, ``"cosine"``).
        variance_type: Fixed reverse-process variance of the DDPM step (Ho et al. 2020, sec. 3.2):
            ``"fixed_large"`` sigma_t^2 = beta_t (with the posterior variance at t = 1 replacing
            beta at index 0, as in guided-diffusion; AnoDDPM), or ``"fixed_small"``
            sigma_t^2 = posterior variance beta~_t (eq. 7).
        noise_fn: Noise for the forward process and ancestral steps (``gaussian_noise`` or e.g.
            ``SimplexNoise()``).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        variance_type: Literal["fixed_large", "fixed_small"] = "fixed_large",
        noise_fn: NoiseFn = gaussian_noise,
    ) -> None:
        super().__init__()
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"noise_scheduler.variance_type={variance_type!r}: expected one of "
                f"{', '.join(VARIANCE_TYPES)}"
            )
        self.num_train_timesteps = num_train_timesteps
        self.variance_type = variance_type
        self.noise_fn = noise_fn
        betas = get_beta_schedule(beta_schedule, num_train_timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x0) = N(coef1 x0 + coef2 x_t, beta~_t I), Ho et al. eq. 7.
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        constants = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_variance": posterior_variance,
            # beta~_0 = 0, so the log uses beta~_1 at index 0 (never sampled: no noise at t = 0).
            "posterior_log_variance_clipped": torch.cat(
                [posterior_variance[1:2], posterior_variance[1:]]
            ).log(),
            "large_log_variance": torch.cat([posterior_variance[1:2], betas[1:]]).log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
            * (1.0 - betas).sqrt()
            / (1.0 - alphas_cumprod),
        }
        for name, value in constants.items():
            self.register_buffer(name, value.float(), persistent=False)

    def _extract(self, buffer: Tensor, t: Tensor, fill: float) -> Tensor:
        """``buffer[t]`` as ``(B, 1, 1, 1)``, with ``fill`` where ``t == -1`` (the clean image)."""
        values = torch.where(t >= 0, buffer[t.clamp(min=0)], fill)
        return rearrange(values, "b -> b 1 1 1")

    @staticmethod
    def _as_batch(t: int | Tensor, x: Tensor) -> Tensor:
        """Broadcast an int or 0-d timestep to a ``(B,)`` long tensor on ``x``'s device.

        An int is filled on the device (no host-to-device copy per call).
        """
        if isinstance(t, int):
            return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        t = torch.as_tensor(t, device=x.device, dtype=torch.long)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def _check_consecutive(self, t: int | Tensor, t_prev: int | Tensor, x: Tensor) -> None:
        """Refuse an ancestral step that skips timesteps; ints are compared on the host."""
        if isinstance(t, int) and isinstance(t_prev, int):
            consecutive = t_prev == t - 1
        else:
            consecutive = torch.equal(self._as_batch(t_prev, x), self._as_batch(t, x) - 1)
        if not consecutive:
            raise ValueError("kind='ddpm' needs t_prev == t - 1; use kind='ddim', eta=1")

    def sample_noise(
        self, like: Tensor, t: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw noise with the injected ``noise_fn`` (shape, device and dtype of ``like``)."""
        return self.noise_fn(like, t, generator)

    def add_noise(self, x0: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """Forward process q(x_t | x0) (Ho et al. eq. 4).

        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

        Args:
            x0: ``(B, C, H, W)`` clean images, usually in [-1, 1].
            eps: ``(B, C, H, W)`` noise (e.g. from ``sample_noise``).
            t: ``(B,)`` long indices in ``-1 .. T-1`` (per-sample), or an int; ``-1`` returns x0.

        Returns:
            ``(B, C, H, W)`` x_t.
        """
        t = self._as_batch(t, x0)
        return (
            self._extract(self.sqrt_alphas_cumprod, t, 1.0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, 0.0) * eps
        )

    def predict_x0(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        """Invert the forward process (Ho et al. eq. 15).

        x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t).

        Args:
            x_t: ``(B, C, H, W)`` noisy images.
            t: ``(B,)`` long indices in ``-1 .. T-1``, or an int.
            eps: ``(B, C, H, W)`` (predicted) noise.

        Returns:
            ``(B, C, H, W)`` x0_hat.
        """
        t = self._as_batch(t, x_t)
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, 1.0) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, 0.0) * eps
        )

    def predict_eps(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
        """Noise implied by x_t and x0 (inverse of ``predict_x0``); ``t`` in ``0 .. T-1``.

        Returns:
            ``(B, C, H, W)`` eps = (x_t / sqrt(abar_t) - x0) / sqrt(1 / abar_t - 1).
        """
        t = self._as_batch(t, x_t)
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, 1.0) * x_t - x0) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, 1.0
        )

    def set_timesteps(self, num_inference_steps: int, t_start: int | None = None) -> Tensor:
        """Decreasing, evenly spaced timestep subsequence for (partial) reverse diffusion.

        The chain starts at index ``t_start - 1`` (where ``x`` was noised to, i.e. after
        ``t_start`` forward steps) and uses a stride of ``t_start / num_inference_steps``
        ("trailing" spacing); the step after the last element goes to ``-1`` (clean image).
        E.g. T = 1000, ``t_start=250``, 10 steps: ``[249, 224, ..., 24]``; all steps:
        ``[t_start - 1, ..., 0]``. Unlike diffusers, the subsequence is returned, not stored:
        the scheduler has no sampling state.

        Args:
            num_inference_steps: Number of network evaluations, ``1 .. t_start``.
            t_start: Number of forward steps lambda (default T).

        Returns:
            ``(num_inference_steps,)`` long tensor of indices, decreasing.
        """
        t_start = self.num_train_timesteps if t_start is None else t_start
        if not 1 <= num_inference_steps <= t_start <= self.num_train_timesteps:
            raise ValueError(
                f"need 1 <= num_inference_steps ({num_inference_steps}) <= t_start ({t_start})"
                f" <= T ({self.num_train_timesteps})"
            )
        stride = t_start / num_inference_steps
        steps = torch.arange(num_inference_steps, 0, -1, dtype=torch.float64) * stride
        return steps.round().long().to(self.betas.device) - 1

    def step(
        self,
        eps: Tensor,
        t: int | Tensor,
        x_t: Tensor,
        t_prev: int | Tensor | None = None,
        eta: float = 0.0,
        noise: Tensor | None = None,
        kind: Literal["ddpm", "ddim"] = "ddpm",
        clip_x0: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One reverse step x_t -> x_{t_prev} from the predicted noise.

        x0_hat = ``predict_x0(x_t, t, eps)``, clamped to [-1, 1] if ``clip_x0`` (then eps is
        recomputed from the clamped x0_hat, as in guided-diffusion's DDIM).

        - ``"ddpm"``: ancestral step (Ho et al. eq. 6-7): mean = posterior mean
          coef1_t x0_hat + coef2_t x_t, variance per ``variance_type``; noise only for t > 0.
          Only consecutive steps (``t_prev == t - 1``); for skipped ancestral steps use ``"ddim"``
          with ``eta=1``, which is the DDPM posterior of the respaced chain (Song et al. 2021).
        - ``"ddim"``: Song et al. 2021 eq. 12: x_prev = sqrt(abar_prev) x0_hat
          + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with eq. 16
          sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

        Args:
            eps: ``(B, C, H, W)`` predicted noise eps_theta(x_t, t).
            t: ``(B,)`` long indices in ``0 .. T-1`` (per-sample), or an int.
            x_t: ``(B, C, H, W)`` current sample.
            t_prev: Target indices (``-1`` = clean image); default ``t - 1``. With ``"ddpm"``
                it must be ``t - 1``: leave it None in loops (checking tensors reads them back
                to the host, a device sync per step).
            eta: DDIM stochasticity (0 = deterministic, 1 = DDPM posterior variance).
            noise: ``(B, C, H, W)`` noise z; drawn from ``noise_fn(x_t, t, generator)`` if None.
            kind: ``"ddpm"`` or ``"ddim"``.
            clip_x0: Clamp x0_hat to [-1, 1].
            generator: Optional ``torch.Generator`` for the drawn noise.

        Returns:
            ``(B, C, H, W)`` x_{t_prev}.
        """
        if kind == "ddpm" and t_prev is not None:
            self._check_consecutive(t, t_prev, x_t)
        t = self._as_batch(t, x_t)
        t_prev = t - 1 if t_prev is None else self._as_batch(t_prev, x_t)
        x0_hat = self.predict_x0(x_t, t, eps)
        if clip_x0:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
            eps = self.predict_eps(x_t, t, x0_hat)
        if noise is None and (kind == "ddpm" or eta > 0):
            noise = self.sample_noise(x_t, t, generator)
        if kind == "ddpm":
            return self._ddpm_step(x0_hat, t, x_t, noise)
        if kind == "ddim":
            return self._ddim_step(x0_hat, eps, t, t_prev, eta, noise)
        raise ValueError(f"unknown step kind {kind!r}; expected 'ddpm' or 'ddim'")

    def _ddpm_step(self, x0_hat: Tensor, t: Tensor, x_t: Tensor, noise: Tensor) -> Tensor:
        """Ancestral step x_{t-1} = mu~_t(x_t, x0_hat) + sigma_t z (Ho et al. eq. 7, alg. 2)."""
        mean = (
            self._extract(self.posterior_mean_coef1, t, 1.0) * x0_hat
            + self._extract(self.posterior_mean_coef2, t, 0.0) * x_t
        )
        log_variance = (
            self.large_log_variance
            if self.variance_type == "fixed_large"
            else self.posterior_log_variance_clipped
        )
        std = self._extract(log_variance, t, 0.0).mul(0.5).exp()
        nonzero = rearrange((t > 0).to(x_t.dtype), "b -> b 1 1 1")
        return mean + nonzero * std * noise

    def _ddim_step(
        self,
        x0_hat: Tensor,
        eps: Tensor,
        t: Tensor,
        t_prev: Tensor,
        eta: float,
        noise: Tensor | None,
    ) -> Tensor:
        """Generalised step of Song et al. 2021 eq. 12 with sigma from eq. 16."""
        abar_t = self._extract(self.alphas_cumprod, t, 1.0)
        abar_prev = self._extract(self.alphas_cumprod, t_prev, 1.0)
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        x_prev = abar_prev.sqrt() * x0_hat + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        return x_prev if noise is None else x_prev + sigma * noise
