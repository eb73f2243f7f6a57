"""Shared post-processing: smoothing and resizing of anomaly maps."""

from __future__ import annotations

import pytest
import torch

from adlab.postprocess import gaussian_smooth, max_score, resize_map


def test_smoothing_keeps_mass_and_lowers_the_peak() -> None:
    amap = torch.zeros(2, 1, 64, 64)
    amap[:, :, 32, 32] = 1.0
    smooth = gaussian_smooth(amap, sigma=2.0)
    assert smooth.shape == amap.shape
    assert float(smooth.sum()) == pytest.approx(2.0, rel=1e-3)
    expected_peak = 1 / (2 * torch.pi * 2.0**2)  # continuous 2-D Gaussian density at its centre
    assert float(smooth.max()) == pytest.approx(expected_peak, rel=0.05)


def test_zero_sigma_is_identity_and_large_sigma_fits_small_maps() -> None:
    amap = torch.rand(3, 1, 8, 8)
    assert gaussian_smooth(amap, 0.0) is amap
    smooth = gaussian_smooth(amap, 4.0)  # kernel 33 > 8: cut to 15, no padding error
    assert smooth.shape == amap.shape and torch.isfinite(smooth).all()


def test_resize_and_max_score() -> None:
    amap = torch.zeros(2, 1, 8, 8)
    amap[1, 0, 3, 3] = 5.0
    assert resize_map(amap, (8, 8)) is amap
    assert resize_map(amap, (32, 32)).shape == (2, 1, 32, 32)
    torch.testing.assert_close(max_score(amap), torch.tensor([0.0, 5.0]))
