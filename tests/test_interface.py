"""The AnomalyModule contract: shapes, dtypes, resizing and smoothing, threshold persistence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import MODEL_CONFIGS, compose_train
from hydra.utils import instantiate

from adlab import types as T
from adlab.checkpoint import restore
from adlab.models.base import AnomalyModule
from adlab.postprocess import PostProcessor
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
    post = module.postprocessor
    if post.score != "method":  # a map and its score always agree
        torch.testing.assert_close(out.pred_score, post.score_map(out.anomaly_map))


def test_a_trained_model_scores_anomalous_inputs_higher(trained_autoencoder: dict) -> None:
    """Beyond shapes: the trained smoke autoencoder gives every normal test image a lower score
    than the same image with a pasted 8 x 8 magenta patch, and its test set's defective images
    a higher mean score than its normal ones."""
    cfg = trained_autoencoder["cfg"]
    module = restore(Path(cfg.paths.output_dir) / "checkpoints" / "model.ckpt").model
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    labels = batch[T.GT_LABEL]
    assert 0 < int(labels.sum()) < len(labels)
    normal = batch[T.IMAGE][labels == 0]
    patched = normal.clone()
    patched[:, 0, 12:20, 12:20], patched[:, 1, 12:20, 12:20], patched[:, 2, 12:20, 12:20] = 1, 0, 1
    with torch.no_grad():
        normal_score = module.evaluate_images(normal).pred_score
        patched_score = module.evaluate_images(patched).pred_score
        score = module.evaluate_images(batch[T.IMAGE]).pred_score
    assert (patched_score > normal_score).all(), (patched_score, normal_score)
    assert score[labels == 1].mean() > score[labels == 0].mean()


class _Fixed(AnomalyModule):
    """A method whose map is a fixed low-resolution pattern: tests the shared post-processing."""

    def predict_anomaly(self, images: torch.Tensor) -> AnomalyOutput:
        amap = torch.zeros(images.shape[0], 1, 8, 8)
        amap[:, :, 4, 4] = 1.0
        return AnomalyOutput(amap)


def test_base_resizes_smooths_and_scores_the_smoothed_map() -> None:
    raw = _Fixed().evaluate_images(torch.rand(3, 3, 32, 32))
    assert raw.anomaly_map.shape == (3, 1, 32, 32)
    smooth = _Fixed(postprocess=PostProcessor(sigma=2.0)).evaluate_images(torch.rand(3, 3, 32, 32))
    assert smooth.anomaly_map.max() < raw.anomaly_map.max()
    assert float(smooth.anomaly_map.sum()) == pytest.approx(float(raw.anomaly_map.sum()), rel=0.05)
    # the score is the max of the smoothed map, not of the raw one (issue 17)
    torch.testing.assert_close(smooth.pred_score, smooth.anomaly_map.flatten(1).amax(1))
    assert (smooth.pred_score < raw.pred_score).all()


def test_thresholds_survive_a_checkpoint_even_if_a_subclass_replaces_the_hook() -> None:
    class Forgetful(_Fixed):
        def on_save_checkpoint(self, checkpoint: dict) -> None:  # no super(): DMAD's old bug
            checkpoint["other"] = 1

    module = Forgetful()
    module.image_threshold, module.pixel_threshold = 0.25, 0.5
    module.threshold_source = "validation"
    ckpt: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    restored = _Fixed()
    assert math.isnan(restored.image_threshold)
    restored.on_load_checkpoint(ckpt)
    restored.load_state_dict(ckpt["state_dict"])
    assert (restored.image_threshold, restored.pixel_threshold) == (0.25, 0.5)
    assert restored.threshold_source == "validation"


def test_checkpoints_from_before_the_threshold_buffers_still_load() -> None:
    buffers = ("thresholds", "threshold_source_id", "map_range")
    state = {k: v for k, v in _Fixed().state_dict().items() if k not in buffers}
    legacy = {"image_threshold": 0.3, "pixel_threshold": 0.6, "threshold_source": "test"}
    ckpt = {"state_dict": state, "adlab_thresholds": legacy}
    restored = _Fixed()
    restored.on_load_checkpoint(ckpt)
    restored.load_state_dict(ckpt["state_dict"])
    assert (restored.image_threshold, restored.pixel_threshold) == pytest.approx((0.3, 0.6))
    assert restored.threshold_source == "test"


def test_missing_optimizer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        _Fixed().configure_optimizers()
