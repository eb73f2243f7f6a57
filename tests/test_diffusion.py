"""Schedules, DiffusionScheduler math and partial-diffusion reconstruction (CPU, tiny tensors)."""

import math

import pytest
import torch
from conftest import tiny_unet
from torch import Tensor

from adlab.diffusion import (
    DiffusionScheduler,
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
    reconstruct,
)
from adlab.synthesis import SimplexNoise, gaussian_noise


def _rand(*shape: int, seed: int = 0) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_linear_schedule_closed_form() -> None:
    betas = linear_beta_schedule(1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    scaled = linear_beta_schedule(100)  # s = 1000 / T = 10
    assert scaled[0].item() == pytest.approx(1e-3) and scaled[-1].item() == pytest.approx(0.2)
    unscaled = linear_beta_schedule(100, scale_to_1000=False)
    assert unscaled[-1].item() == pytest.approx(0.02)


def test_cosine_schedule_closed_form() -> None:
    T, s = 1000, 0.008
    alphas_cumprod = torch.cumprod(1 - cosine_beta_schedule(T), 0)

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):  # eq. 17; the beta clip only acts at the very end
        assert alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert cosine_beta_schedule(T).max().item() == pytest.approx(0.999)
    with pytest.raises(ValueError):
        get_beta_schedule("quadratic", 10)


def test_scheduler_constants_match_closed_form() -> None:
    sched = DiffusionScheduler(100)
    betas = get_beta_schedule("linear", 100)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    expected = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
        "posterior_variance": betas * (1 - abar_prev) / (1 - abar),
        "posterior_mean_coef1": betas * abar_prev.sqrt() / (1 - abar),
        "posterior_mean_coef2": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
    }
    for name, value in expected.items():
        buffer = getattr(sched, name)
        assert buffer.dtype == torch.float32
        torch.testing.assert_close(buffer.double(), value, rtol=1e-6, atol=1e-8)
    assert sched.state_dict() == {}  # non-persistent buffers


def test_add_noise_index_semantics() -> None:
    """Index -1 is the clean image (no noise); index 0 is one forward step (a little noise)."""
    sched = DiffusionScheduler(1000)
    x0, eps = _rand(2, 3, 8, 8), _rand(2, 3, 8, 8, seed=1)
    assert torch.equal(sched.add_noise(x0, eps, -1), x0)
    x_first = sched.add_noise(x0, eps, 0)
    # |x_0 - x0| <= (1 - sqrt(1 - beta_0)) |x0| + sqrt(beta_0) |eps| <= 5e-5 + 1e-2
    assert 0 < (x_first - x0).abs().max() <= 1.01e-2
    t = torch.tensor([-1, 999])
    x_t = sched.add_noise(x0, eps, t)  # per-sample t
    assert torch.equal(x_t[0], x0[0])
    abar = sched.alphas_cumprod[999]
    torch.testing.assert_close(x_t[1], abar.sqrt() * x0[1] + (1 - abar).sqrt() * eps[1])


def test_predict_x0_and_eps_invert_add_noise() -> None:
    sched = DiffusionScheduler(100)
    x0, eps, t = _rand(4, 2, 4, 4), _rand(4, 2, 4, 4, seed=1), torch.tensor([0, 5, 50, 99])
    x_t = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(sched.predict_x0(x_t, t, eps), x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(sched.predict_eps(x_t, t, x0), eps, atol=1e-3, rtol=0)


def test_set_timesteps() -> None:
    sched = DiffusionScheduler(1000)
    assert sched.set_timesteps(1000).tolist() == list(range(999, -1, -1))
    assert sched.set_timesteps(10, t_start=250).tolist() == list(range(249, 0, -25))
    assert sched.set_timesteps(5, t_start=5).tolist() == [4, 3, 2, 1, 0]
    with pytest.raises(ValueError):
        sched.set_timesteps(20, t_start=10)


def test_ddim_eta0_deterministic_and_follows_x0_prediction() -> None:
    sched = DiffusionScheduler(100)
    x0, eps = _rand(2, 3, 8, 8), _rand(2, 3, 8, 8, seed=1)
    x_t = sched.add_noise(x0, eps, 60)
    first = sched.step(eps, 60, x_t, t_prev=30, kind="ddim", eta=0.0)
    second = sched.step(eps, 60, x_t, t_prev=30, kind="ddim", eta=0.0)
    assert torch.equal(first, second)
    # With the true eps, DDIM (eq. 12, sigma = 0) stays on q(x_s | x0) with the same eps.
    torch.testing.assert_close(first, sched.add_noise(x0, eps, 30), atol=1e-5, rtol=0)
    # The last step (to index -1, abar = 1) returns x0_hat = predict_x0.
    last = sched.step(eps, 60, x_t, t_prev=-1, kind="ddim", clip_x0=False)
    torch.testing.assert_close(last, sched.predict_x0(x_t, 60, eps))


@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_eta1_equals_ddpm_small_variance(clip_x0: bool) -> None:
    """Song et al. 2021: eta = 1 with consecutive steps is the DDPM posterior (eq. 7)."""
    sched = DiffusionScheduler(100, variance_type="fixed_small")
    x_t, eps = 1.5 * _rand(4, 3, 8, 8), _rand(4, 3, 8, 8, seed=1)
    t = torch.tensor([1, 10, 50, 99])
    zeros, ones = torch.zeros_like(x_t), torch.ones_like(x_t)
    kw = dict(clip_x0=clip_x0)
    mean_ddim = sched.step(eps, t, x_t, kind="ddim", eta=1.0, noise=zeros, **kw)
    mean_ddpm = sched.step(eps, t, x_t, kind="ddpm", noise=zeros, **kw)
    torch.testing.assert_close(mean_ddim, mean_ddpm, atol=1e-5, rtol=1e-5)
    std_ddim = sched.step(eps, t, x_t, kind="ddim", eta=1.0, noise=ones, **kw) - mean_ddim
    std_ddpm = sched.step(eps, t, x_t, kind="ddpm", noise=ones, **kw) - mean_ddpm
    torch.testing.assert_close(std_ddim, std_ddpm, atol=1e-5, rtol=1e-4)


def test_ddpm_variance_and_last_step() -> None:
    sched = DiffusionScheduler(100)  # fixed_large: sigma_t^2 = beta_t
    x_t, eps = _rand(3, 1, 4, 4), _rand(3, 1, 4, 4, seed=1)
    t, ones = torch.tensor([0, 1, 70]), torch.ones_like(x_t)
    std = sched.step(eps, t, x_t, noise=ones) - sched.step(eps, t, x_t, noise=0 * ones)
    expected = torch.tensor([0.0, sched.betas[1].sqrt(), sched.betas[70].sqrt()])
    torch.testing.assert_close(std[:, 0, 0, 0], expected)
    # t = 0 goes to the clean image: x0_hat, no noise.
    x0_hat = sched.predict_x0(x_t, 0, eps).clamp(-1, 1)
    torch.testing.assert_close(sched.step(eps, 0, x_t, noise=ones), x0_hat, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="ddim"):
        sched.step(eps, 50, x_t, t_prev=40, kind="ddpm")


def test_injected_noise_fn_is_used() -> None:
    calls = []

    def noise_fn(like: Tensor, t: Tensor | None, generator: torch.Generator | None) -> Tensor:
        calls.append(t)
        return gaussian_noise(like, t, generator)

    sched = DiffusionScheduler(50, noise_fn=noise_fn)
    x = _rand(2, 1, 4, 4)
    noise = sched.sample_noise(x, torch.tensor([3, 4]), torch.Generator().manual_seed(0))
    assert torch.equal(noise, gaussian_noise(x, None, torch.Generator().manual_seed(0)))
    sched.step(x, 10, x, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2 and calls[1].tolist() == [10, 10]
    sched.step(x, 10, x, t_prev=5, kind="ddim", eta=0.0)  # deterministic: draws nothing
    assert len(calls) == 2


def _perfect_unet(x0: Tensor, sched: DiffusionScheduler):
    """eps_theta(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) for the known x0."""

    def unet(x_t: Tensor, t: Tensor) -> Tensor:
        abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    return unet


@pytest.mark.parametrize(
    ("kind", "num_steps", "eta", "noise_fn"),
    [
        ("ddim", 5, 0.0, gaussian_noise),
        ("ddim", 5, 1.0, gaussian_noise),
        ("ddpm", None, 0.0, gaussian_noise),
        ("ddpm", None, 0.0, SimplexNoise(octaves=2, frequency=4)),
    ],
)
def test_reconstruct_with_perfect_predictor_returns_input(kind, num_steps, eta, noise_fn) -> None:
    sched = DiffusionScheduler(50, noise_fn=noise_fn)
    x = _rand(2, 3, 8, 8)
    x_hat = reconstruct(
        x, 20, _perfect_unet(x, sched), sched, num_steps, kind, eta, None, torch.Generator()
    )
    torch.testing.assert_close(x_hat, x, atol=1e-4, rtol=0)


def test_reconstruct_t_start_zero_and_condition_hook() -> None:
    sched = DiffusionScheduler(50)
    x = _rand(2, 3, 8, 8)

    def unet(x_t: Tensor, t: Tensor) -> Tensor:
        return 0.5 * x_t

    assert torch.equal(reconstruct(x, 0, unet, sched), x)
    seen = []

    def condition(x_t: Tensor, t: Tensor, eps: Tensor, x0_hat: Tensor) -> Tensor:
        seen.append(t.tolist())
        torch.testing.assert_close(x0_hat, sched.predict_x0(x_t, t, eps))
        return eps

    kw = dict(num_steps=4, eta=1.0, clip_x0=False)
    plain = reconstruct(x, 20, unet, sched, generator=torch.Generator().manual_seed(0), **kw)
    hooked = reconstruct(
        x, 20, unet, sched, condition=condition, generator=torch.Generator().manual_seed(0), **kw
    )
    assert torch.equal(plain, hooked)
    assert seen == [[19, 19], [14, 14], [9, 9], [4, 4]]


def test_reconstruct_with_tiny_unet_and_simplex_noise() -> None:
    torch.manual_seed(0)
    unet = tiny_unet()
    sched = DiffusionScheduler(100, noise_fn=SimplexNoise(octaves=2, frequency=8))
    x = _rand(2, 3, 16, 16)
    with torch.no_grad():
        x_hat = reconstruct(x, 20, unet, sched, num_steps=2, generator=torch.Generator())
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
