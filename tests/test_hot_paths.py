"""Hot-path caches and checks (issue 16): same outputs, no per-call host work."""

from __future__ import annotations

import pytest
import torch

from adlab.diffusion.sampling import reconstruct
from adlab.diffusion.scheduler import DiffusionScheduler
from adlab.models.dmad.deformation import CoordConv, coord_channels, identity_grid, warp


def test_ddpm_reconstruct_equals_explicit_consecutive_steps() -> None:
    sched = DiffusionScheduler(50)
    x = torch.rand(2, 3, 8, 8) * 2 - 1

    def unet(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.3 * x_t + 0.01 * t[:, None, None, None]

    got = reconstruct(x, 6, unet, sched, kind="ddpm", generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    t = torch.full((2,), 5)
    x_t = sched.add_noise(x, sched.sample_noise(x, t, generator), t)
    for step in range(5, -1, -1):
        t = torch.full((2,), step)
        x_t = sched.step(unet(x_t, t), t, x_t, t_prev=t - 1, kind="ddpm", generator=generator)
    assert torch.equal(got, x_t)
    with pytest.raises(ValueError, match="num_steps"):
        reconstruct(x, 6, unet, sched, num_steps=3, kind="ddpm")
    with pytest.raises(ValueError, match="t_prev == t - 1"):
        sched.step(x, torch.full((2,), 5), x, t_prev=torch.full((2,), 3), kind="ddpm")


def test_coordconv_caches_channels_per_size_outside_the_state_dict() -> None:
    conv = CoordConv(3, 4)
    for size in (16, 24, 16):
        x = torch.rand(2, 3, size, size)
        out = conv(x)
        expected = conv.conv(torch.cat((x, coord_channels(size, size).expand(2, -1, -1, -1)), 1))
        assert torch.equal(out, expected) and conv.coords.shape == (1, 4, size, size)
    assert "coords" not in conv.state_dict()
    conv.to(torch.float64)
    assert conv(torch.rand(1, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64


def test_warp_with_cached_grid_matches_an_explicit_grid() -> None:
    x, field = torch.rand(2, 3, 12, 10), 0.1 * torch.randn(2, 2, 6, 5)
    full = torch.nn.functional.interpolate(field, (12, 10), mode="bilinear", align_corners=True)
    grid = (identity_grid(12, 10) + full.permute(0, 2, 3, 1)).clamp(-1, 1)
    expected = torch.nn.functional.grid_sample(x, grid, align_corners=True)
    assert torch.equal(warp(x, field), expected) and torch.equal(warp(x, field), expected)
