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
    from adlab.models.draem.lightning_model import DraemModule, draem_losses

    ref = draem["ref"]
    score = DraemModule.default_postprocess.score_map(ref["out_mask"].softmax(dim=1)[:, 1:])
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


# ------------------------------------------------------------------------------------- UNets
def _unet_by_position(ref: dict[str, Any], **kwargs: Any) -> Any:
    """adlab UNet with the official weights, zipped by position (README: same count, order and
    shapes; only the names differ by rule)."""
    from adlab.diffusion import UNet

    unet = UNet(**kwargs)
    official = _dequantize(ref["state_dict_q"], ref["state_dict_exp"])
    ours = unet.state_dict()
    assert len(ours) == len(official)
    for (key, mine), (theirs, value) in zip(ours.items(), official.items(), strict=True):
        assert mine.shape == value.shape, (key, theirs)
    unet.load_state_dict(dict(zip(ours, official.values(), strict=True)))
    return unet.eval()


def test_guided_diffusion_unet_matches_official() -> None:
    """guided-diffusion's state_dict is key-for-key adlab's: strict load, 2e-5."""
    from adlab.diffusion import UNet

    ref = _load("guided_diffusion_unet_tiny.pt")
    unet = UNet(
        in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2, 2),
        num_res_blocks=1, attention_resolutions=(8,), num_head_channels=16, dropout=0.0,
        use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True, image_size=32,
        flip_sin_to_cos=True,
    )  # fmt: skip
    unet.load_state_dict(_dequantize(ref["state_dict_q"], ref["state_dict_exp"]), strict=True)
    with torch.no_grad():
        out = unet.eval().forward_raw(ref["x"].float(), ref["t"])
    torch.testing.assert_close(out, ref["output"], atol=2e-5, rtol=0)


_DDAD_UNET = dict(
    in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 1), num_res_blocks=1,
    attention_resolutions=(16,), num_heads=4, num_head_channels=-1, dropout=0.0,
    norm_num_groups=32, use_scale_shift_norm=False, resblock_updown=True, learn_sigma=False,
    image_size=32, flip_sin_to_cos=False,
)  # fmt: skip


def test_ddad_unet_matches_official() -> None:
    ref = _load("ddad_unet_tiny.pt")
    unet = _unet_by_position(ref, **_DDAD_UNET)
    with torch.no_grad():
        out = unet(ref["x"].float(), ref["t"].long())
    torch.testing.assert_close(out, ref["output"], atol=2e-5, rtol=0)


def test_anoddpm_unet_matches_official() -> None:
    ref = _load("anoddpm_unet_tiny.pt")
    unet = _unet_by_position(
        ref, in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 1),
        num_res_blocks=1, attention_resolutions=(32, 16), num_heads=2, num_head_channels=-1,
        dropout=0.0, norm_num_groups=32, use_scale_shift_norm=False, resblock_updown=False,
        learn_sigma=False, image_size=32, flip_sin_to_cos=False,
    )  # fmt: skip
    with torch.no_grad():
        out = unet(ref["x"].float(), ref["t"])
    torch.testing.assert_close(out, ref["output"], atol=2e-5, rtol=0)


# ---------------------------------------------------------------------------------------- DDAD
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddad_conditioned_ddim_steps_match_official(eta: float) -> None:
    """Each official step from its stored state, eps and noise: ``ddad_condition`` + DDIM step."""
    from adlab.diffusion import DiffusionScheduler, ddad_condition

    ref = _load("ddad_conditioned_ddim.pt")
    scheduler = DiffusionScheduler(1000, "linear")
    abar = torch.cat([torch.ones(1), scheduler.alphas_cumprod.float()])
    torch.testing.assert_close(abar, ref["alpha_bar"], atol=1e-6, rtol=0)
    xs, eps = ref[f"eta{eta:.0f}_xs"], ref[f"eta{eta:.0f}_eps"]
    y0 = ref["y0"].float()
    torch.testing.assert_close(
        scheduler.add_noise(ref["x"].float(), ref["z_forward"].float(), 250), xs[0], atol=1e-6,
        rtol=0,
    )  # fmt: skip
    condition = ddad_condition(y0, float(ref["w"]), scheduler)
    for k, (t, t_prev) in enumerate(ref["pairs"].tolist()):
        t_b = torch.full((2,), t, dtype=torch.long)
        x0_hat = scheduler.predict_x0(xs[k], t_b, eps[k])
        eps_hat = condition(xs[k], t_b, eps[k], x0_hat)
        x_prev = scheduler.step(
            eps_hat, t_b, xs[k], t_prev=torch.full((2,), t_prev), eta=eta,
            noise=ref["z_steps"][k].float(), kind="ddim", clip_x0=False,
        )  # fmt: skip
        torch.testing.assert_close(x_prev, xs[k + 1], atol=2e-5, rtol=0, msg=f"step {k}")


def test_ddad_unet_eps_in_the_official_chain() -> None:
    ref, chain = _load("ddad_unet_tiny.pt"), _load("ddad_conditioned_ddim.pt")
    unet = _unet_by_position(ref, **_DDAD_UNET)
    with torch.no_grad():
        for k, (t, _) in enumerate(chain["pairs"].tolist()):
            eps = unet(chain["eta0_xs"][k], torch.full((2,), t, dtype=torch.long))
            torch.testing.assert_close(eps, chain["eta0_eps"][k], atol=2e-5, rtol=0)


def test_ddad_anomaly_map_and_da_loss_match_official() -> None:
    """Distances, the official batch-wide ratio (``ratio_mode=batch``), smoothing, DA loss."""
    from adlab.models.ddad.torch_model import (
        combine_distances,
        domain_adaptation_loss,
        feature_distance,
        pixel_distance,
    )
    from adlab.postprocess import center_crop, gaussian_smooth

    ref = _load("ddad_anomaly_map.pt")
    target, output = ref["target"].float(), ref["output"].float()
    d_p = pixel_distance(target, output)
    feats_t = [f.float() for f in ref["target_features"]]
    feats_o = [f.float() for f in ref["output_features"]]
    d_f = feature_distance(feats_t, feats_o, (32, 32))
    torch.testing.assert_close(d_p, ref["pixel_distance"], atol=1e-5, rtol=0)
    torch.testing.assert_close(d_f, ref["feature_distance"], atol=1e-5, rtol=0)
    ratio = d_f.max() / d_p.max()  # DDADModule(ratio_mode="batch")
    assert ratio.item() == pytest.approx(ref["ratio_batch"], rel=1e-5)
    raw = combine_distances(d_f, d_p, float(ref["v"]), ratio)
    torch.testing.assert_close(raw, ref["map_before_blur"], atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_smooth(raw, 4.0), ref["anomaly_map"], atol=1e-5, rtol=0)
    index = torch.arange(256.0).expand(1, 1, 256, 256)  # torchvision CenterCrop(224) of 256
    assert center_crop(index, 224)[0, 0, 0, 0].item() == ref["crop224_of_256_top_left"][1]
    phi = [[f.float() for f in ref[k]] for k in ("da_phi_x0", "da_phi_y", "da_phibar_x0")]
    phibar_y = [f.float() for f in ref["da_phibar_y"]]
    for lam in (0.1, 0.01):
        loss = domain_adaptation_loss(phi[0], phi[1], phi[2], phibar_y, lam)
        assert loss.item() == pytest.approx(ref[f"da_loss_lambda_{lam}"], abs=1e-6)
