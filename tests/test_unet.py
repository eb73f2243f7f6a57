"""Guided-diffusion UNet: checkpoint layout, paper parameter counts, tiny forward/backward."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_unet
from torch import Tensor

from adlab.diffusion import UNET_PRESETS, UNet, timestep_embedding
from adlab.diffusion.unet import AttentionBlock

# Every key and shape of OpenAI's 256x256_diffusion_uncond.pt (copied from shared/fixtures).
FIXTURE = Path(__file__).parent / "fixtures" / "guided_diffusion_256_uncond_keys.json"


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_guided_diffusion_256_state_dict_layout() -> None:
    manifest = json.loads(FIXTURE.read_text())
    with torch.device("meta"):
        model = UNet(**UNET_PRESETS["guided_diffusion_256_uncond"])
    layout = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(layout) == list(manifest["state_dict"])  # same keys, same order
    assert layout == manifest["state_dict"]
    assert _num_params(model) == manifest["_meta"]["num_parameters"] == 552_814_086


@pytest.mark.parametrize(
    ("preset", "expected"), [("ddad_256", 32_952_707), ("anoddpm_256", 131_654_403)]
)
def test_paper_parameter_counts(preset: str, expected: int) -> None:
    with torch.device("meta"):
        model = UNet(**UNET_PRESETS[preset])
    assert _num_params(model) == expected


@pytest.mark.parametrize(
    "kw",
    [
        dict(learn_sigma=False),
        dict(learn_sigma=True, use_scale_shift_norm=True, flip_sin_to_cos=True),
        dict(resblock_updown=False, dropout=0.1),
    ],
)
def test_tiny_unet_forward_backward(kw: dict) -> None:
    torch.manual_seed(0)
    model = tiny_unet(**kw)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 999])
    raw = model.forward_raw(x_t, t)
    assert raw.shape == (2, 6 if kw.get("learn_sigma") else 3, 16, 16)
    eps = model(x_t, t)
    assert eps.shape == (2, 3, 16, 16)
    (eps - x_t).square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.out[2].weight.grad.abs().sum() > 0  # zero-init head still learns
    model.load_state_dict(tiny_unet(**kw).state_dict(), strict=True)


def test_conv_resampling_uses_guided_diffusion_names() -> None:
    keys = tiny_unet(resblock_updown=False).state_dict()
    assert "input_blocks.2.0.op.weight" in keys and "output_blocks.1.2.conv.weight" in keys


def test_attention_matches_qkv_attention_legacy() -> None:
    """Compare with guided-diffusion's QKVAttentionLegacy (einsum form, head-major qkv)."""
    torch.manual_seed(0)
    block = AttentionBlock(channels=8, num_heads=2, norm_num_groups=2)
    torch.nn.init.normal_(block.proj_out.weight)
    x = torch.randn(2, 8, 3, 3)
    qkv = block.qkv(block.norm(x.flatten(2)))
    bs, width, length = qkv.shape
    heads, ch = 2, width // 6
    q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)
    expected = (x.flatten(2) + block.proj_out(a)).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_timestep_embedding_order() -> None:
    t: Tensor = torch.tensor([0, 7])
    cos_first = timestep_embedding(t, 8, flip_sin_to_cos=True)
    sin_first = timestep_embedding(t, 8, flip_sin_to_cos=False)
    assert cos_first.shape == (2, 8)
    assert torch.equal(cos_first[0, :4], torch.ones(4)) and torch.equal(
        sin_first[0, :4], torch.zeros(4)
    )
    torch.testing.assert_close(cos_first[:, :4], sin_first[:, 4:])
    assert cos_first[1, 4].item() == pytest.approx(math.sin(7.0))
