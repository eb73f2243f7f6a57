"""Shared post-processing: smoothing, resizing, the score rules and the one post-processor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf

from adlab.checkpoint import build_model
from adlab.postprocess import PostProcessor, gaussian_smooth, max_score, resize_map
from adlab.postprocess.pipeline import legacy_postprocess
from adlab.types import AnomalyOutput


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


# ---------------------------------------------------------------- the one post-processor
def _hot(size: int = 16) -> torch.Tensor:
    amap = torch.zeros(2, 1, size, size)
    amap[0, 0, 4, 4] = 1.0
    amap[1, 0, 8:12, 8:12] = 0.5
    return amap


def test_postprocessor_resizes_then_smooths_then_scores() -> None:
    raw = AnomalyOutput(_hot(8), None, torch.rand(2, 3, 32, 32))
    out = PostProcessor(sigma=2.0, score="max")(raw, (32, 32))
    expected = gaussian_smooth(resize_map(raw.anomaly_map, (32, 32)), 2.0)
    torch.testing.assert_close(out.anomaly_map, expected)
    torch.testing.assert_close(out.pred_score, expected.flatten(1).amax(1))
    assert out.reconstruction is raw.reconstruction


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("max", [1.0, 0.5]),
        ("mean", [1 / 256, 8 / 256]),
        ("topk_mean", [1 / 3, 0.5]),  # top 3 of 256 pixels (top_k 0.01 -> round(2.56) = 3)
        ("mean_filtered_max", [1 / 9, 0.5 * 9 / 9]),  # 3 x 3 box: a 4 x 4 block fills it
    ],
)
def test_score_rules(rule: str, expected: list[float]) -> None:
    post = PostProcessor(score=rule, kernel_size=3)
    assert post(AnomalyOutput(_hot()), (16, 16)).pred_score.tolist() == pytest.approx(expected)


def test_method_rule_passes_the_method_score_and_needs_one() -> None:
    own = torch.tensor([3.0, -1.0])
    post = PostProcessor(sigma=1.0, score="method")
    assert post(AnomalyOutput(_hot(), own), (16, 16)).pred_score.equal(own)
    with pytest.raises(ValueError, match="postprocess.score=method needs the method's pred_score"):
        post(AnomalyOutput(_hot()), (16, 16))


def test_mask_comes_before_the_score_and_crop_limits_score_and_metrics() -> None:
    mask = torch.ones(1, 1, 16, 16)
    mask[..., :6, :6] = 0  # hides image 0's hot pixel
    out = PostProcessor()(AnomalyOutput(_hot()), (16, 16), mask=mask)
    assert out.pred_score.tolist() == [0.0, 0.5]
    cropped = PostProcessor(eval_crop=6)  # rows/cols 5..10: image 0's pixel at 4 is outside
    assert cropped(AnomalyOutput(_hot()), (16, 16)).pred_score.tolist() == [0.0, 0.5]
    assert cropped.crop(_hot()).shape == (2, 1, 6, 6)
    assert PostProcessor().crop(_hot()).shape == (2, 1, 16, 16)


def test_decide_thresholds_score_and_map() -> None:
    out = PostProcessor()(AnomalyOutput(_hot()), (16, 16))
    label, mask = PostProcessor.decide(out, 0.75, 0.4)
    assert label.tolist() == [True, False] and int(mask.sum()) == 1 + 16
    label, _ = PostProcessor.decide(out, math.nan, math.nan)
    assert not label.any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"score": "maximum"},
            "postprocess.score='maximum': expected one of max, mean, mean_filtered_max, "
            "topk_mean, method",
        ),
        ({"sigma": -1.0}, "postprocess.sigma=-1.0: expected a value >= 0 (0 = none)"),
        ({"kernel_size": 4}, "postprocess.kernel_size=4: expected an odd size >= 1"),
        ({"top_k": 0.0}, "postprocess.top_k=0.0: expected a fraction in (0, 1]"),
        ({"eval_crop": 0}, "postprocess.eval_crop=0: expected a positive size or null"),
    ],
)
def test_postprocessor_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        PostProcessor(**kwargs)
    assert str(err.value) == message


def test_legacy_model_configs_get_a_postprocess_block() -> None:
    old = {"_target_": "x.AnoGAN", "score": "anogan", "map_sigma": 3.0, "smoothing_sigma": 4.0}
    new = legacy_postprocess(old, PostProcessor(sigma=4.0, score="method"))
    assert "map_sigma" not in new and "score" not in new and "smoothing_sigma" not in new
    assert new["postprocess"]["sigma"] == 5.0 and new["postprocess"]["score"] == "method"
    draem = legacy_postprocess({"score_kernel": 5}, PostProcessor(score="mean_filtered_max"))
    assert draem["postprocess"]["kernel_size"] == 5 and draem["postprocess"]["sigma"] == 0.0
    ddad = legacy_postprocess({"eval_crop": 224, "map_sigma": 4.0}, PostProcessor(sigma=4.0))
    assert ddad["postprocess"]["eval_crop"] == 224
    assert legacy_postprocess(new, PostProcessor()) is new


def test_checkpoint_configs_from_before_the_block_still_build(
    tmp_path: Path, synthetic_root: Path
) -> None:
    """A stored AnoGAN config with the old ``score`` / ``map_sigma`` / ``smoothing_sigma`` keys
    rebuilds with the post-processor they meant (:func:`adlab.checkpoint.build_model`)."""
    cfg = compose_train(tmp_path, synthetic_root, ["model=anogan", "+smoke=anogan"])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("postprocess")
    model_cfg |= {"score": "anogan", "map_sigma": 1.0, "smoothing_sigma": 0.0}
    model = build_model(model_cfg)
    assert model.postprocessor == PostProcessor(sigma=1.0, score="method")
