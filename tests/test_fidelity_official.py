"""Fidelity against the official code: tensors and statistics in ``../shared/fixtures/official/``.

Each test compares an adlab part with numbers the paper's own repository computed (see that
folder's README for the calls, commits and tolerances). Never compared against adlab's own output.
The whole module skips when ``../shared`` is absent (a checkout outside the project workspace).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"
pytestmark = pytest.mark.skipif(
    not OFFICIAL.is_dir(), reason=f"official fixtures not found at {OFFICIAL}"
)


def _load(name: str) -> dict[str, Any]:
    path = OFFICIAL / name
    if not path.exists():
        pytest.skip(f"{path} missing")
    return torch.load(path, weights_only=True)


def _dequantize(q: dict[str, Tensor], exp: dict[str, Any]) -> dict[str, Tensor]:
    """``state_dict_q`` / ``state_dict_exp`` -> float weights (README: int8 ``q * 2**exp``)."""
    out = {}
    for key, value in q.items():
        if key in exp and value.dtype == torch.int8:
            out[key] = value.float() * 2.0 ** float(exp[key])
        else:
            out[key] = value.float() if value.is_floating_point() else value
    return out


# ------------------------------------------------------------------------------------- AnoDDPM
def _acf(noise: Tensor, lags: list[int]) -> list[float]:
    """README definition: per-map standardised, mean of the x and y lag products."""
    n = (noise - noise.mean()) / noise.std()
    return [
        (((n[:, k:] * n[:, :-k]).mean() + (n[k:, :] * n[:-k, :]).mean()) / 2).item() for k in lags
    ]


def test_anoddpm_simplex_matches_official_std_and_spectrum() -> None:
    """The model config's noise: std within 0.05 and every acf lag within 0.05, over 16 maps."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = OFFICIAL / "anoddpm_simplex.json"
    if not path.exists():
        pytest.skip(f"{path} missing")
    ref = json.loads(path.read_text())
    config = Path(__file__).resolve().parents[1] / "configs" / "model" / "anoddpm.yaml"
    noise_fn = instantiate(OmegaConf.load(config).noise_scheduler.noise_fn)
    timesteps = [m["T"] for m in ref["per_map"]]
    stds, acfs = [], []
    for k in range(16):
        like = torch.zeros(1, 1, 256, 256, dtype=torch.float64)
        generator = torch.Generator().manual_seed(k)
        noise = noise_fn(like, torch.tensor([timesteps[k % 8]]), generator)[0, 0]
        stds.append(noise.std().item())
        acfs.append(_acf(noise, ref["lags"]))
    assert np.mean(stds) == pytest.approx(ref["aggregate"]["std"], abs=0.05)
    np.testing.assert_allclose(np.mean(acfs, axis=0), ref["aggregate"]["acf"], atol=0.05)


# --------------------------------------------------------------------------------------- DRAEM
def _draem_seg_key(key: str) -> str:
    """Official discriminative-net key -> adlab's (fixture README, key mapping)."""
    import re

    key = re.sub(r"^encoder_segment\.block(\d)\.", lambda m: f"encoder.{int(m[1]) - 1}.", key)
    key = key.replace("decoder_segment.up_b.", "ups.0.").replace(
        "decoder_segment.db_b.", "blocks.0."
    )
    key = re.sub(r"^decoder_segment\.up(\d)\.", r"ups.\1.", key)
    key = re.sub(r"^decoder_segment\.db(\d)\.", r"blocks.\1.", key)
    return key.replace("decoder_segment.fin_out.0.", "head.")


@pytest.fixture(scope="module")
def draem() -> dict[str, Any]:
    from adlab.models.draem import DiscriminativeSubNetwork, ReconstructiveSubNetwork

    ref = _load("draem_nets_tiny.pt")
    rec, seg = ReconstructiveSubNetwork(3, 3, 4), DiscriminativeSubNetwork(6, 2, 4)
    rec_sd = _dequantize(ref["rec_state_dict_q"], ref["rec_state_dict_exp"])
    rec.load_state_dict(dict(zip(rec.state_dict(), rec_sd.values(), strict=True)))
    seg_sd = _dequantize(ref["seg_state_dict_q"], ref["seg_state_dict_exp"])
    seg.load_state_dict({_draem_seg_key(k): v for k, v in seg_sd.items()})
    return {"ref": ref, "rec": rec.eval(), "seg": seg.eval()}


def test_draem_subnetworks_match_official(draem: dict[str, Any]) -> None:
    """One net at a time, 3e-4 (README: the deep BatchNorm stacks amplify kernel rounding)."""
    ref = draem["ref"]
    augmented = ref["augmented"].float()
    with torch.no_grad():
        gray_rec = draem["rec"](augmented)
        out_mask = draem["seg"](torch.cat([ref["gray_rec"], augmented], dim=1))
    torch.testing.assert_close(gray_rec, ref["gray_rec"], atol=3e-4, rtol=0)
    torch.testing.assert_close(out_mask, ref["out_mask"], atol=3e-4, rtol=0)


def test_draem_score_and_losses_match_official(draem: dict[str, Any]) -> None:
    from adlab.models.draem.lightning_model import draem_losses, mean_filter_max

    ref = draem["ref"]
    score = mean_filter_max(ref["out_mask"].softmax(dim=1)[:, 1:], 21)
    torch.testing.assert_close(score, ref["image_score"], atol=1e-5, rtol=0)
    terms = draem_losses(
        ref["gray_rec"], ref["out_mask"], ref["clean"].float(), ref["anomaly_mask"].float()
    )
    assert terms["l2"].item() == pytest.approx(ref["l2_loss"], abs=1e-5)
    assert terms["ssim"].item() == pytest.approx(ref["ssim_loss"], abs=1e-5)  # L = 2 case
    assert terms["focal"].item() == pytest.approx(ref["focal_loss"], abs=1e-5)


def test_draem_official_ssim_and_focal_standalone_cases(draem: dict[str, Any]) -> None:
    from adlab.models.draem.loss import official_focal_loss, official_ssim

    ref = draem["ref"]
    for case, first, second in [
        ("ssim_a_loss", "ssim_a_img1", "ssim_a_img2"),  # both in [0, 1]: L = 1, border only
        ("ssim_b_loss", "ssim_b_img1", "ssim_b_img2"),  # first in [-1, 1]: L = 2
        ("ssim_b_loss_swapped_args", "ssim_b_img2", "ssim_b_img1"),  # L from the first: 1
    ]:
        loss = 1 - official_ssim(ref[first].float(), ref[second].float())
        assert loss.item() == pytest.approx(ref[case], abs=1e-5), case
    probs = ref["focal_logits"].float().softmax(dim=1)
    focal = official_focal_loss(probs, ref["focal_mask"])
    assert focal.item() == pytest.approx(ref["focal_loss_standalone"], abs=1e-5)


# ---------------------------------------------------------------------------------------- DMAD
_DMAD_PREFIXES = [  # official -> adlab (README: match the longer "..._." prefixes first)
    ("conv_offset4_.", "inverse_coarse."),
    ("conv_offset3_.", "inverse_fine."),
    ("conv_offset1.", "stem."),
    ("conv_offset2.", "res."),
    ("conv_offset4.", "forward_coarse."),
    ("conv_offset3.", "forward_fine."),
]


def _dmad_key(key: str) -> str:
    for official, ours in _DMAD_PREFIXES:
        if key.startswith(official):
            return ours + key.removeprefix(official)
    raise KeyError(key)


@pytest.fixture(scope="module")
def dmad() -> dict[str, Any]:
    from adlab.models.dmad import OffsetNet

    ref = _load("dmad_tiny.pt")
    # Default limits (8/256 and 3/256 of the side) are the official constants at any size.
    net = OffsetNet(in_channels=3, width=64, coarse_levels=3, fine_levels=1, coord_cell=4)
    state = _dequantize(ref["state_dict_q"], ref["state_dict_exp"])
    net.load_state_dict({_dmad_key(k): v for k, v in state.items()})
    with torch.no_grad():
        deformation = net.eval()(ref["x"].float())
    return {"ref": ref, "deformation": deformation}


def test_dmad_offset_fields_and_warps_match_official(dmad: dict[str, Any]) -> None:
    ref, d = dmad["ref"], dmad["deformation"]
    for ours, theirs in [
        (d.forward_coarse, "field_forward_coarse"),
        (d.forward_fine, "field_forward_fine"),
        (d.inverse_coarse, "field_inverse_coarse"),
        (d.inverse_fine, "field_inverse_fine"),
    ]:
        torch.testing.assert_close(ours, ref[theirs], atol=1e-6, rtol=0, msg=theirs)
    torch.testing.assert_close(d.warped, ref["out2"], atol=1e-4, rtol=0)
    torch.testing.assert_close(d.inverse_warp(d.warped), ref["x_back"], atol=1e-4, rtol=0)


def test_dmad_offset_loss_matches_official(dmad: dict[str, Any]) -> None:
    from adlab.models.dmad.loss import offset_loss
    from adlab.models.dmad.torch_model import DMADOutput

    ref, d = dmad["ref"], dmad["deformation"]
    out = DMADOutput(d, ref["x"].float(), [], [], torch.zeros(()))
    assert offset_loss(out).item() == pytest.approx(ref["offset_loss"], abs=1e-5)


def test_dmad_vector_quantizer_matches_official() -> None:
    from adlab.models.dmad import VectorQuantizer

    ref = _load("dmad_tiny.pt")
    vq = VectorQuantizer(16, 16, 0.25)
    codebook = _dequantize(ref["vq_state_dict_q"], ref["vq_state_dict_exp"])["embedding.weight"]
    with torch.no_grad():
        vq.codebook.copy_(codebook)
        out = vq(ref["vq_input"].float())
    assert torch.equal(out.indices, ref["vq_indices"])
    torch.testing.assert_close(out.quantized, ref["vq_quantized"], atol=1e-6, rtol=0)
    assert out.loss.item() == pytest.approx(float(ref["vq_loss"]), abs=1e-5)
