"""AnoGAN: DCGAN shapes (seed and small layouts), latent search, inference-mode scoring."""

from __future__ import annotations

import functools

import pytest
import torch

from adlab.models.anogan import AnoGANModule, Discriminator, Generator, latent_search
from adlab.postprocess import PostProcessor

DCGAN32 = dict(kernel_sizes=(4, 4, 4, 4), paddings=(0, 1, 1, 1))


def _tiny(latent_dim: int = 8) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    generator = Generator(latent_dim, (32, 16, 8), strides=(1, 2, 2, 2), image_size=32, **DCGAN32)
    discriminator = Discriminator(
        3, (8, 16, 32), (4, 4, 4, 4), strides=(2, 2, 2, 1), paddings=(1, 1, 1, 0), image_size=32
    )
    return generator, discriminator


def _module(**kw) -> AnoGANModule:
    adam = functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
    args = dict(
        search_steps=5, search_lr=0.05, postprocess=PostProcessor(sigma=1.0, score="method")
    )
    return AnoGANModule(*_tiny(), adam, functools.partial(torch.optim.SGD, lr=0.1), **(args | kw))


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_seed_256_topology_shapes_and_sizes() -> None:
    """The seed's 256 px G / D (baselines spec 3.2) from the same classes, on the meta device."""
    with torch.device("meta"):
        generator = Generator(
            100, (512, 256, 128, 64), (8, 4, 2, 2, 2), (1, 4, 2, 2, 2), (0,) * 5, image_size=256
        )
        discriminator = Discriminator(
            3, (64, 128, 256, 512), (6, 4, 4, 4, 4), (4, 4, 2, 2, 1), (1, 0, 1, 1, 0), 256
        )
        x_hat = generator(torch.empty(2, 100))
        assert x_hat.shape == (2, 3, 256, 256)
        assert discriminator(x_hat).shape == (2,)
        assert discriminator.features(x_hat).shape == (2, 512 * 4 * 4)
    assert (_num_params(generator), _num_params(discriminator)) == (5_540_480, 2_769_408)


def test_small_layout_shapes_and_size_checks() -> None:
    generator, discriminator = _tiny()
    x_hat = generator(torch.randn(4, 8))
    assert x_hat.shape == (4, 3, 32, 32) and x_hat.abs().max() <= 1
    assert discriminator(x_hat).shape == (4,)
    assert discriminator.features(x_hat).shape == (4, 32 * 4 * 4)
    with pytest.raises(ValueError, match="image_size=64"):
        Generator(8, (32, 16, 8), strides=(1, 2, 2, 2), image_size=64, **DCGAN32)
    with pytest.raises(ValueError, match="1x1"):
        Discriminator(3, (8, 16, 32), (4,) * 4, (2, 2, 2, 1), (1, 1, 1, 0), image_size=64)
    with pytest.raises(ValueError, match="entries"):
        Generator(8, (32, 16, 8), strides=(1, 2, 2), image_size=32, **DCGAN32)


def test_latent_search_decreases_the_loss_and_leaves_the_networks() -> None:
    generator, discriminator = _tiny()
    generator.eval(), discriminator.eval()
    before = [p.clone() for p in generator.parameters()]
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    mapping = latent_search(generator, discriminator, x, torch.randn(3, 8), 30, lr=0.05, lam=0.1)
    assert mapping.losses.shape == (31, 3) and mapping.z.shape == (3, 8)
    assert (mapping.losses[-1] < mapping.losses[0]).all()
    expected = 0.9 * mapping.residual + 0.1 * mapping.discrimination
    torch.testing.assert_close(mapping.losses[-1], expected)
    assert all(torch.equal(a, b) for a, b in zip(before, generator.parameters(), strict=True))
    assert all(p.grad is None for p in generator.parameters())


@pytest.mark.parametrize("score", ["method", "max"])
def test_predict_anomaly_works_under_inference_mode(score: str) -> None:
    """Lightning tests under ``torch.inference_mode()``; the search must still get gradients."""
    module = _module(postprocess=PostProcessor(sigma=1.0, score=score)).eval()
    with torch.inference_mode():
        images = torch.rand(2, 3, 48, 48)  # an inference tensor, and not the networks' size
        out = module.evaluate_images(images)
    assert out.anomaly_map.shape == (2, 1, 48, 48) and out.reconstruction.shape == (2, 3, 48, 48)
    assert out.pred_score.shape == (2,) and torch.isfinite(out.pred_score).all()
    assert (out.anomaly_map >= 0).all()


def test_two_optimizers_come_from_the_config() -> None:
    module = _module()
    assert not module.automatic_optimization
    opt_g, opt_d = module.configure_optimizers()
    assert isinstance(opt_g, torch.optim.Adam) and opt_g.defaults["betas"] == (0.5, 0.999)
    assert isinstance(opt_d, torch.optim.SGD) and opt_d.defaults["lr"] == 0.1
    assert {id(p) for p in opt_g.param_groups[0]["params"]} == {
        id(p) for p in module.generator.parameters()
    }
