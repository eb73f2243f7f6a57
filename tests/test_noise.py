"""Seeded Gaussian and multi-octave simplex noise (CPU, small maps)."""

import pytest
import torch
from torch import Tensor

from adlab.synthesis import SimplexNoise, gaussian_noise
from adlab.synthesis.noise import SIMPLEX_STD, random_permutations, simplex_noise_3d


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lag1_corr(noise: Tensor) -> float:
    a, b = noise[..., 1:].flatten(), noise[..., :-1].flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@pytest.fixture(scope="module")
def simplex_batch() -> Tensor:
    """8 x 2 maps of 48 x 48 at a scale where many features fit in a map."""
    like = torch.zeros(8, 2, 48, 48)
    return SimplexNoise(octaves=3, persistence=0.8, frequency=8, std=1.0)(like, None, _gen(0))


def test_gaussian_noise_seeded() -> None:
    like = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    noise = gaussian_noise(like, None, _gen(1))
    assert noise.shape == like.shape and noise.dtype == torch.float64
    assert torch.equal(noise, gaussian_noise(like, torch.tensor([3, 4]), _gen(1)))
    assert not torch.equal(noise, gaussian_noise(like, None, _gen(2)))


def test_simplex_seeded_and_shaped() -> None:
    sn = SimplexNoise(octaves=3, frequency=8)
    like, t = torch.zeros(2, 3, 24, 20, dtype=torch.float64), torch.tensor([5, 700])
    noise = sn(like, t, _gen(0))
    assert noise.shape == (2, 3, 24, 20) and noise.dtype == torch.float64
    assert torch.equal(noise, sn(like, t, _gen(0)))
    assert not torch.allclose(noise, sn(like, t, _gen(1)))


def test_simplex_unit_variance(simplex_batch: Tensor) -> None:
    assert abs(simplex_batch.mean().item()) < 0.1
    assert simplex_batch.std().item() == pytest.approx(1.0, abs=0.1)
    raw = SimplexNoise(octaves=3, frequency=8, std=None)
    raw_noise = raw(torch.zeros(8, 2, 48, 48), None, _gen(0))
    assert raw_noise.std().item() == pytest.approx(raw.raw_std, rel=0.1)


def test_simplex_spatially_correlated(simplex_batch: Tensor) -> None:
    assert _lag1_corr(simplex_batch) > 0.5
    assert abs(_lag1_corr(gaussian_noise(simplex_batch, None, _gen(0)))) < 0.05


def test_simplex_maps_differ_within_batch(simplex_batch: Tensor) -> None:
    flat = simplex_batch.flatten(0, 1).flatten(1)  # (B * C, H * W)
    corr = torch.corrcoef(flat)
    off_diagonal = corr[~torch.eye(len(corr), dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.5  # every sample and channel has its own map


def test_simplex_timestep_is_a_smooth_coordinate() -> None:
    sn, like = SimplexNoise(octaves=2, frequency=16), torch.zeros(1, 1, 32, 32)
    n0 = sn(like, torch.tensor([100]), _gen(0))
    n1 = sn(like, torch.tensor([101]), _gen(0))
    n_far = sn(like, torch.tensor([900]), _gen(0))
    assert not torch.equal(n0, n1)
    assert _pearson(n0, n1) > 0.9 and abs(_pearson(n0, n_far)) < 0.5


def _pearson(a: Tensor, b: Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()


def test_simplex_kernel_std_constant() -> None:
    perm = random_permutations(16, torch.zeros(1), _gen(0))
    xyz = 256 * torch.rand(3, 16, 4096, generator=_gen(1))
    noise = simplex_noise_3d(xyz[0], xyz[1], xyz[2], perm)
    assert noise.abs().max() <= 1.0
    assert noise.std().item() == pytest.approx(SIMPLEX_STD, rel=0.03)
