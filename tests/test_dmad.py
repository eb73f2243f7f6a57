"""DMAD: warps, vector quantisation, losses, official sizes and batch-independent scores."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import compose_train
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adlab import types as T
from adlab.backbones import FeatureExtractor
from adlab.checkpoint import restore
from adlab.cli import train
from adlab.models.dmad import DMADModel, DMADModule, OffsetNet, VectorQuantizer, warp
from adlab.models.dmad.deformation import Deformation, coord_channels, field_magnitude
from adlab.models.dmad.loss import dmad_losses, smoothness
from adlab.postprocess import PostProcessor, max_score

_SMOOTH = PostProcessor(sigma=1.0, score="method")


def _smooth_image(size: int = 40) -> torch.Tensor:
    """``(1, 3, S, S)`` low-frequency pattern (periods 23 and 29 px), values in [0.1, 0.9]."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    channels = [
        0.5 + 0.4 * torch.sin(2 * math.pi * (xs / 23 + k / 3)) * torch.cos(2 * math.pi * ys / 29)
        for k in range(3)
    ]
    return torch.stack(channels).unsqueeze(0).float()


def _pixels(field_px: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel displacements ``(B, 2, H, W)`` (x, y) -> normalised align_corners units."""
    scale = torch.tensor([2 / (width - 1), 2 / (height - 1)]).view(1, 2, 1, 1)
    return field_px * scale


def _invert(field: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Inverse displacement g with g(p) = -f(p + g(p)), by fixed-point iteration."""
    inverse = -field
    for _ in range(iterations):
        inverse = -warp(field, inverse)
    return inverse


# ------------------------------------------------------------------ warping
def test_identity_field_warps_image_to_itself() -> None:
    x = torch.rand(2, 3, 16, 20)
    assert torch.allclose(warp(x, torch.zeros(2, 2, 16, 20)), x, atol=1e-5)
    # a coarse zero field is upsampled to the image size first
    assert torch.allclose(warp(x, torch.zeros(2, 2, 2, 3)), x, atol=1e-5)


def test_shift_field_moves_image_by_expected_pixels() -> None:
    x = torch.rand(1, 3, 12, 16)
    shift = torch.zeros(1, 2, 12, 16)
    shift[:, 0], shift[:, 1] = 3.0, 2.0  # sample 3 px right, 2 px down
    out = warp(x, _pixels(shift, 12, 16))
    assert torch.allclose(out[..., :-2, :-3], x[..., 2:, 3:], atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-2)


def test_forward_then_inverse_warp_restores_input() -> None:
    n = 40
    x = _smooth_image(n)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    coarse_px = torch.stack((3.0 * torch.sin(math.pi * ys), 2.5 * torch.cos(math.pi * xs)))
    fine_px = torch.stack((1.0 * torch.cos(2 * math.pi * ys), 0.8 * torch.sin(2 * math.pi * xs)))
    a1, a2 = _pixels(coarse_px[None], n, n), _pixels(fine_px[None], n, n)
    x2 = warp(warp(x, a1), a2)
    inner = (..., slice(5, -5), slice(5, -5))  # clamped borders are not invertible
    restored = Deformation(x2, a1, a2, _invert(a1), _invert(a2)).inverse_warp(x2)
    negated = Deformation(x2, a1, a2, -a1, -a2).inverse_warp(x2)  # a cruder inverse
    error = (restored - x)[inner].abs()
    assert (x2 - x)[inner].abs().mean() > 0.1
    assert error.max() < 0.03 and error.mean() < 0.01  # what is left is bilinear blur
    assert error.mean() < 0.5 * (negated - x)[inner].abs().mean()


def test_coord_channels_encode_cell_and_position() -> None:
    coords = coord_channels(8, 12, cell=4)
    assert coords.shape == (1, 4, 8, 12)
    fine_rows, coarse_rows, fine_cols, coarse_cols = coords[0]
    assert torch.equal(coarse_rows[:, 0], torch.tensor([-1.0] * 4 + [1.0] * 4))
    assert torch.allclose(coarse_cols[0], torch.tensor([-1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert torch.allclose(fine_cols[0, :4], torch.arange(4) / 11 * 2 - 1)
    assert torch.equal(fine_rows[:, 5], fine_rows[:, 0])  # rows vary along H only
    with pytest.raises(ValueError, match="divisible by 4"):
        coord_channels(10, 12)


def test_warp_rejects_bad_field() -> None:
    with pytest.raises(ValueError, match=r"\(B, 2, h, w\)"):
        warp(torch.rand(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize("side", [16, 32])
def test_offset_net_limits_are_fractions_of_the_side(side: int) -> None:
    """Official limits 8/256 and 3/256 of the side: the same model at any input size."""
    torch.manual_seed(0)
    net = OffsetNet(width=4, coarse_levels=2, coarse_fraction=2 / 16, fine_fraction=1 / 16)
    net.forward_coarse[-2].bias.data.fill_(50.0)  # saturate the tanh: the field is at its limit
    d = net(torch.randn(2, 3, side, side))
    assert d.warped.shape == (2, 3, side, side) and d.inverse_coarse.shape == (2, 2, side, side)
    torch.testing.assert_close(d.forward_coarse.abs().amax(), torch.tensor(2 * 2 / 16))
    assert d.forward_fine.abs().max() <= 2 * 1 / 16 + 1e-6  # normalised units, side-independent
    with pytest.raises(ValueError, match="coarse_fraction"):
        OffsetNet(coarse_fraction=8.0)


def test_smoothness_is_zero_for_constant_interior() -> None:
    field = torch.full((1, 2, 8, 8), 0.3)
    assert smoothness(torch.zeros(1, 2, 8, 8)) == 0
    # only the zero-padded border responds to a constant field: per channel c (8 - n) / 8 with
    # n in-image neighbours (corners 3, other border pixels 5, interior 8), two channels summed
    border = 4 * 2 * 0.3 * 5 / 8 + 24 * 2 * 0.3 * 3 / 8
    assert smoothness(field).item() == pytest.approx(border / 64)


# ------------------------------------------------------------------ vector quantisation
def test_vq_returns_codes_and_passes_gradients_straight_through() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=5, dim=3, beta=0.25)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = vq(z)
    codes = vq.codebook[out.indices].permute(0, 3, 1, 2)
    assert torch.allclose(out.quantized, codes)
    distances = torch.cdist(z.detach().permute(0, 2, 3, 1).reshape(-1, 3), vq.codebook.detach())
    assert torch.equal(out.indices.flatten(), distances.argmin(dim=1))
    assert torch.isclose(out.loss, 1.25 * (codes - z).pow(2).mean())
    upstream = torch.randn_like(z)
    (out.quantized * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)  # identity gradient through the quantiser
    assert vq.codebook.grad is None
    out = vq(z)
    out.loss.backward()
    assert vq.codebook.grad.abs().sum() > 0  # codebook term moves the codes


# ------------------------------------------------------------------ full model
def _tiny_model(official_init: bool = True, vq_detach: bool = False) -> DMADModel:
    teacher = FeatureExtractor("resnet18", weights=None, allow_random_init=True)
    offset = OffsetNet(width=4, coarse_levels=2, coarse_fraction=2 / 32, fine_fraction=1 / 32)
    return DMADModel(
        teacher, offset, reduce_channels=8, num_codes=8, bottleneck_blocks=1,
        bottleneck_width=32, decoder_blocks=(1, 1, 1), official_init=official_init,
        vq_detach=vq_detach,
    )  # fmt: skip


def test_vq_loss_trains_the_codebook_not_the_deformation() -> None:
    """The commitment term reaches the offset net through the teacher (official, vq_detach
    false: on magnetic tile ~30x the gradient of L_rd + L_offset on the forward heads, fields of
    a few pixels everywhere, pixel AUROC below the offsets-off run). The model config keeps it
    out: the deformation then learns from L_rd and L_offset only, the codebook from L_vq."""
    heads = ("forward_coarse", "forward_fine")
    for vq_detach in (False, True):
        torch.manual_seed(0)
        model = _tiny_model(vq_detach=vq_detach)
        out = model(torch.rand(2, 3, 32, 32))
        weights = [getattr(model.offset_net, h)[-2].weight for h in heads]
        vq = torch.autograd.grad(out.vq_loss, weights, retain_graph=True, allow_unused=True)
        rd = torch.autograd.grad(dmad_losses(out)["rd"], weights, retain_graph=True)
        codebook = torch.autograd.grad(out.vq_loss, model.bottleneck.vq.codebook)[0]
        reached = [g is not None and g.abs().sum() > 0 for g in vq]
        assert reached == [not vq_detach] * 2
        assert all(g.abs().sum() > 0 for g in rd) and codebook.abs().sum() > 0
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/model/dmad.yaml")
    assert cfg.model.vq_detach is True


def test_loss_terms_finite_and_decrease_on_tiny_data() -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    images = torch.rand(4, 3, 32, 32)
    params = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.teacher.parameters())
    optimizer = torch.optim.Adam(params, lr=2e-3)
    history = []
    for _ in range(12):
        out = model(images)
        assert [t.shape for t in out.teacher] == [s.shape for s in out.student]
        losses = dmad_losses(out, gamma=1.0, vq_weight=1.0)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert model.offset_net.forward_coarse[-2].weight.grad.abs().sum() > 0  # through the teacher
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert history[-1]["rd"] < history[0]["rd"] and history[-1]["vq"] < history[0]["vq"]


def test_scores_independent_of_batch_and_calibrated() -> None:
    torch.manual_seed(0)
    module = DMADModule(_tiny_model(official_init=False), w=0.2, postprocess=_SMOOTH).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        module.calibrate(images, batch_size=3)
        m, o = (module.postprocessor.smooth(x) for x in module.raw_maps(images))
        batch = module.evaluate_images(images)
        single = [module.evaluate_images(images[i : i + 1]) for i in range(4)]
    low_m, high_m, low_o, high_o = module.calibration
    assert torch.isclose(max_score(m).min(), low_m) and torch.isclose(max_score(o).max(), high_o)
    assert batch.anomaly_map.shape == (4, 1, 32, 32) and batch.pred_score.shape == (4,)
    assert batch.pred_score.min() >= -1e-5 and batch.pred_score.max() <= 1.2 + 1e-5
    assert torch.allclose(torch.cat([s.pred_score for s in single]), batch.pred_score, atol=1e-5)
    assert torch.allclose(torch.cat([s.anomaly_map for s in single]), batch.anomaly_map, atol=1e-5)


def test_map_terms_are_scaled_by_their_pixel_range() -> None:
    """The map is M' and O min-max normalised over the pixels of the calibration images (the
    official pixel evaluation's global min-max), so w weighs O against M' on their pixel scale.
    With inverse fields at their limit on every image the maxima of O hardly vary, and scaling
    the map by the range of the maxima made w O outweigh M' (maps hottest on the background)."""
    torch.manual_seed(0)
    module = DMADModule(_tiny_model(official_init=False), w=0.05, postprocess=_SMOOTH).eval()
    for head in (module.model.offset_net.inverse_coarse, module.model.offset_net.inverse_fine):
        head[-2].bias.data.fill_(1.0)  # inverse fields near their limit on every image
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        module.calibrate(images, batch_size=3)
        m, o = (module.postprocessor.smooth(x) for x in module.raw_maps(images))
        anomaly_map = module.evaluate_images(images).anomaly_map
    low_o, high_o = module.calibration[2:]
    assert high_o - low_o < 0.1 * (o.amax() - o.amin())  # the maxima of O barely vary
    torch.testing.assert_close(
        module.pixel_calibration, torch.stack((m.amin(), m.amax(), o.amin(), o.amax()))
    )
    assert anomaly_map.min() >= -1e-5 and anomaly_map.max() <= 1.05 + 1e-5
    m_n = (m - m.amin()) / (m.amax() - m.amin())
    assert (anomaly_map - m_n).abs().max() <= 0.05 + 1e-5  # O moves the map by at most w


def test_official_sizes_with_wide_resnet50() -> None:
    """Parameter counts of the official WRN-50-2 setup, less its unused layers: the CoordConv
    parent weights (38,720 of OffsetNet's 572,040) and BN_layer's conv4 + bn4 (1,050,624)."""
    with torch.device("meta"):
        teacher = FeatureExtractor("wide_resnet50_2", weights=None, allow_random_init=True)
        model = DMADModel(teacher, OffsetNet())

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(model.offset_net) == 572_040 - 38_720
    assert count(model.bottleneck) == 44_960_512 - 1_050_624
    assert count(model.decoder) == 24_917_504


def test_zero_fields_train_without_nan() -> None:
    """Zero-initialised heads start at the identity and get finite gradients."""
    torch.manual_seed(0)
    net = OffsetNet(width=4, coarse_levels=2, zero_init=True)
    x = torch.randn(2, 3, 16, 16)
    d = net(x)
    assert torch.equal(d.forward_coarse, torch.zeros_like(d.forward_coarse))
    assert torch.allclose(d.warped, x, atol=1e-5)
    loss = sum(field_magnitude(f).mean() for f in d[1:]) + (d.warped - x.flip(-1)).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert net.forward_coarse[-2].weight.grad.abs().sum() > 0


def _trained(tmp_path: Path, root: Path, overrides: list[str]) -> tuple[DictConfig, Any]:
    """Train a run of ``overrides``; its config and its data module, set up for fitting."""
    cfg = compose_train(tmp_path, root, overrides)
    HydraConfig().set_config(cfg)
    train.run(cfg)
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("fit")
    return cfg, datamodule


def test_each_checkpoint_and_validation_carry_their_own_calibration(
    tmp_path: Path, synthetic_root: Path
) -> None:
    """Per-epoch checkpoints (compared by evaluate.py) and validation thresholds use the
    calibration of their own weights, not the raw scores of an uncalibrated model."""
    overrides = ["model=dmad", "trainer=smoke", "+smoke=dmad", "trainer.max_epochs=2"]
    overrides += ["dataset.val_split=from_test", "dataset.val_fraction=0.5"]
    overrides += ["callbacks.model_checkpoint.save_top_k=-1"]
    overrides += ["callbacks.model_checkpoint.filename='{epoch}'", "logger=none"]
    cfg, datamodule = _trained(tmp_path, synthetic_root, overrides)
    count = cfg.model.calibration_images
    images = torch.stack([datamodule.train_dataset[i][T.IMAGE] for i in range(count)])
    paths = sorted((tmp_path / "run" / "checkpoints").glob("epoch=*.ckpt"))
    assert len(paths) == 2
    stored = []
    for path in paths:
        module, _ = restore(path)
        stored.append(module.calibration.clone())
        assert torch.isfinite(stored[-1]).all()
        module.eval()
        assert torch.allclose(module.calibrate(images), stored[-1], rtol=1e-4, atol=1e-6)
    assert not torch.equal(stored[0], stored[1])
    row = pd.read_csv(cfg.paths.results_csv).iloc[0]
    assert row.threshold_source == "validation" and 0 < row.img_threshold < 3


# ------------------------------------------------------------------ official settings
def test_bottleneck_and_decoder_use_the_official_kaiming_fan_out_init() -> None:
    torch.manual_seed(0)
    model = _tiny_model()
    convs = [
        m
        for part in (model.bottleneck, model.decoder)
        for m in part.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert convs
    for conv in convs:  # kaiming normal, fan_out, relu gain: std = sqrt(2 / (C_out k k))
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        if conv.weight.numel() >= 2000:  # enough samples to estimate the std
            expected = (2 / fan_out) ** 0.5
            assert conv.weight.std().item() == pytest.approx(expected, rel=0.15)
    bns = [m for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    torch.manual_seed(0)
    default = _tiny_model(official_init=False).decoder.stages[0][0].body[0].weight
    assert default.std().item() < 0.5 * model.decoder.stages[0][0].body[0].weight.std().item()
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/experiment/dmad_mvtec.yaml")
    assert cfg.model.model.official_init is True  # the paper recipe uses it


@pytest.mark.parametrize("config", ["model/dmad.yaml", "experiment/dmad_mvtec.yaml"])
def test_teacher_asks_for_torchvision_weights(config: str) -> None:
    """Untagged ``wide_resnet50_2`` is timm's ``racm_in1k``; the official code: torchvision's."""
    from hydra import compose, initialize_config_dir
    from timm.models import get_pretrained_cfg

    overrides = ["model=dmad"] if config.startswith("model") else ["experiment=dmad_mvtec"]
    config_dir = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir, version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides)
    teacher = cfg.model.model.teacher
    assert teacher.weights == "timm"
    pretrained = get_pretrained_cfg(teacher.name)
    assert pretrained.tag == "tv_in1k"
    assert pretrained.url == "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"


def test_calibration_on_held_out_normal_images_and_w0_score_reported(
    tmp_path: Path, synthetic_root: Path
) -> None:
    """calibration_source=val: min-max statistics from dataset.val_split=from_train images (not
    the images the model fit); the results row carries the w = 0 score's AUROC as well."""
    overrides = ["model=dmad", "trainer=smoke", "+smoke=dmad", "trainer.max_epochs=1"]
    overrides += ["dataset.val_split=from_train", "dataset.val_fraction=0.25", "logger=none"]
    overrides += ["model.calibration_source=val", "model.calibration_images=4"]
    cfg, datamodule = _trained(tmp_path, synthetic_root, overrides)
    held_out = torch.stack([datamodule.val_dataset[i][T.IMAGE] for i in range(4)])
    module, _ = restore(tmp_path / "run" / "checkpoints" / "model.ckpt")
    stored = module.calibration.clone()
    assert torch.allclose(module.eval().calibrate(held_out), stored, rtol=1e-4, atol=1e-6)
    row = pd.read_csv(cfg.paths.results_csv).iloc[0]
    assert 0 <= row.img_auroc_w0 <= 1 and 0 <= row.img_auc <= 1


def test_held_out_calibration_needs_a_held_out_split(tmp_path: Path, synthetic_root: Path) -> None:
    overrides = ["model=dmad", "trainer=smoke", "+smoke=dmad", "trainer.max_epochs=1"]
    overrides += ["model.calibration_source=val", "logger=none"]
    cfg = compose_train(tmp_path, synthetic_root, overrides)
    HydraConfig().set_config(cfg)
    with pytest.raises(ValueError, match="val_split=from_train"):
        train.run(cfg)
    with pytest.raises(ValueError, match="calibration_source"):
        DMADModule(_tiny_model(), calibration_source="test")
