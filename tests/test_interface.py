"""The AnomalyModule contract: shapes, dtypes, resizing and smoothing, threshold persistence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import MODEL_CONFIGS, compose_train
from hydra.utils import instantiate

from adlab.models.base import AnomalyModule
from adlab.types import AnomalyOutput


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_predict_anomaly_contract(model: str, tmp_path: Path, synthetic_root: Path) -> None:
    cfg = compose_train(tmp_path, synthetic_root, [f"model={model}", f"+smoke={model}"])
    module: AnomalyModule = instantiate(cfg.model).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = module.evaluate_images(images)
    assert isinstance(out, AnomalyOutput)
    assert out.anomaly_map.shape == (2, 1, 32, 32) and out.anomaly_map.dtype == torch.float32
    assert out.pred_score.shape == (2,) and torch.isfinite(out.pred_score).all()
    if out.reconstruction is not None:
        assert out.reconstruction.shape == images.shape


class _Fixed(AnomalyModule):
    """A method whose map is a fixed low-resolution pattern: tests the shared post-processing."""

    def predict_anomaly(self, images: torch.Tensor) -> AnomalyOutput:
        amap = torch.zeros(images.shape[0], 1, 8, 8)
        amap[:, :, 4, 4] = 1.0
        return AnomalyOutput(amap, amap.flatten(1).amax(1))


def test_base_resizes_and_smooths_maps() -> None:
    raw = _Fixed().evaluate_images(torch.rand(3, 3, 32, 32))
    assert raw.anomaly_map.shape == (3, 1, 32, 32)
    smooth = _Fixed(smoothing_sigma=2.0).evaluate_images(torch.rand(3, 3, 32, 32))
    assert smooth.anomaly_map.max() < raw.anomaly_map.max()
    assert float(smooth.anomaly_map.sum()) == pytest.approx(float(raw.anomaly_map.sum()), rel=0.05)


def test_thresholds_survive_a_checkpoint() -> None:
    module = _Fixed()
    module.image_threshold, module.pixel_threshold = 0.25, 0.5
    module.threshold_source = "validation"
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    restored = _Fixed()
    assert math.isnan(restored.image_threshold)
    restored.on_load_checkpoint(ckpt)
    assert (restored.image_threshold, restored.pixel_threshold) == (0.25, 0.5)
    assert restored.threshold_source == "validation"


def test_missing_optimizer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        _Fixed().configure_optimizers()
