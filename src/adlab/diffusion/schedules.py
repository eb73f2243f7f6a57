"""Beta schedules of the forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

Pure functions returning float64 tensors of shape ``(T,)``; the scheduler casts them to float32
after deriving its constants in float64 (as openai/guided-diffusion does).
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor


def linear_beta_schedule(T: int, scale_to_1000: bool = True) -> Tensor:
    """Linear schedule of Ho et al. 2020 (sec. 4): beta_1 = 1e-4 ... beta_T = 0.02.

    Args:
        T: Number of diffusion steps.
        scale_to_1000: Multiply both ends by ``s = 1000 / T`` (Nichol & Dhariwal 2021, as in
            guided-diffusion and AnoDDPM) so that a short chain ends with a similar noise level.

    Returns:
        ``(T,)`` float64 betas.
    """
    s = 1000.0 / T if scale_to_1000 else 1.0
    return torch.linspace(1e-4 * s, 0.02 * s, T, dtype=torch.float64)


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal 2021, eq. 17.

    ``alphas_cumprod(t) = f(t) / f(0)`` with ``f(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2``
    and ``beta_t = min(1 - alphas_cumprod(t) / alphas_cumprod(t - 1), max_beta)``.

    Args:
        T: Number of diffusion steps.
        s: Small offset that keeps beta_t from being too small near t = 0.
        max_beta: Clip that avoids the singularity at t = T.

    Returns:
        ``(T,)`` float64 betas.
    """
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


BETA_SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
}


def get_beta_schedule(name: str, T: int) -> Tensor:
    """Look up a beta schedule by name.

    Args:
        name: A key of ``BETA_SCHEDULES`` (``"linear"`` or ``"cosine"``), with defaults.
        T: Number of diffusion steps.

    Returns:
        ``(T,)`` float64 betas.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; expected one of {list(BETA_SCHEDULES)}")
    return BETA_SCHEDULES[name](T)
