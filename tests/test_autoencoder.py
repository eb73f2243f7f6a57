"""Autoencoder network: shapes, size checks, padding modes."""

from __future__ import annotations

import pytest
import torch

from adlab.models.autoencoder import AutoEncoder


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate"])
def test_reconstruction_keeps_the_shape_and_range(padding_mode: str) -> None:
    net = AutoEncoder(widths=(8, 16), latent_channels=4, padding_mode=padding_mode).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and y.min() >= 0.0 and y.max() <= 1.0


def test_reflect_padding_reaches_every_padded_conv() -> None:
    net = AutoEncoder(widths=(8, 16), latent_channels=4, padding_mode="reflect")
    convs = [m for m in net.modules() if type(m) is torch.nn.Conv2d]
    assert len(convs) == 5 and all(c.padding_mode == "reflect" for c in convs)


def test_a_constant_image_stays_constant_at_the_border_only_with_reflect() -> None:
    """Zero padding makes the border of a flat image look different from its interior."""
    x = torch.full((1, 3, 32, 32), 0.7)
    for mode, flat in (("zeros", False), ("reflect", True)):
        torch.manual_seed(0)
        features = AutoEncoder(widths=(8,), latent_channels=4, padding_mode=mode).encoder[0][0](x)
        spread = (features - features[..., 4:5, 4:5]).abs().amax().item()
        assert (spread < 1e-6) is flat, f"{mode}: spread {spread}"


def test_bad_padding_mode_is_named() -> None:
    with pytest.raises(ValueError, match="padding_mode must be one of .* got 'circle'"):
        AutoEncoder(widths=(8,), padding_mode="circle")
