"""AnoDDPM specifics: lambda = 0 reproduces the input, batches > 1, repeatable test-time noise."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_unet

from adlab.diffusion import DiffusionScheduler
from adlab.models.anoddpm import AnoDDPMModule
from adlab.synthesis import SimplexNoise


def _module(t_start: int, **kwargs: object) -> AnoDDPMModule:
    unet = tiny_unet(num_heads=2, num_head_channels=-1)
    scheduler = DiffusionScheduler(20, noise_fn=SimplexNoise(octaves=2, frequency=4))
    return AnoDDPMModule(unet, scheduler, train_t_max=16, t_start=t_start, **kwargs).eval()


def test_lambda_zero_reconstructs_the_input_exactly() -> None:
    images = torch.rand(3, 3, 16, 16)
    out = _module(t_start=0).predict_anomaly(images)  # the raw map
    torch.testing.assert_close(out.reconstruction, images)
    assert out.anomaly_map.abs().max() < 1e-10


def test_batches_use_per_sample_noise_and_repeat_exactly() -> None:
    module = _module(t_start=5, sampler="ddpm")
    image = torch.rand(1, 3, 16, 16)
    batch = image.expand(4, -1, -1, -1).clone()
    with torch.no_grad():
        first, second = module.predict_anomaly(batch), module.predict_anomaly(batch)
    assert first.anomaly_map.shape == (4, 1, 16, 16) and (first.anomaly_map >= 0).all()
    torch.testing.assert_close(first.anomaly_map, second.anomaly_map)  # seeded test-time noise
    assert not torch.allclose(first.reconstruction[0], first.reconstruction[1])  # own noise each


def test_training_step_loss_is_finite_and_has_gradients() -> None:
    module = _module(t_start=5).train()
    loss = module.training_step({"image": torch.rand(2, 3, 16, 16)}, 0)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in module.unet.parameters() if p.requires_grad)


def test_bad_lambda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="t_start"):
        _module(t_start=50)


def test_ema_warms_up_and_is_frozen() -> None:
    """decay min(0.9999, (1 + n) / (10 + n)): after 50 steps the EMA is near the trained weights."""
    module = _module(t_start=5, ema_decay=0.9999)
    assert module.ema is not None
    assert not any(p.requires_grad for p in module.ema.parameters())  # DDP rejects unused grads
    start = [p.detach().clone() for p in module.unet.parameters()]
    module.on_train_batch_end(None, None, 0)  # n = 0: copy
    with torch.no_grad():
        for p in module.unet.parameters():
            p.add_(1.0)  # "training" moved every weight by 1
    for step in range(50):
        module.on_train_batch_end(None, None, step + 1)
    pairs = zip(module.ema.module.parameters(), start, strict=True)
    moved = [(e - s).mean().item() for e, s in pairs]
    # Without warm-up: 1 - 0.9999**50 = 0.005 of the way; with it, prod_n (1 + n) / (10 + n) ~ 1e-9
    # of the start remains.
    assert min(moved) > 0.99
