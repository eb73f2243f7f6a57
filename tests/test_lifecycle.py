"""A trained model's whole life, for every ``configs/model/*.yaml`` at its smoke size: fit, save,
restore from the file alone with the network and every weight source disabled, ``train=false``
reproducing the test metrics exactly, predict on a folder with duplicate file names, and ONNX
export parity (or a refusal naming what blocks it). New methods are covered without edits."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MODEL_CONFIGS, compose_train
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image

from adlab import backbones
from adlab.checkpoint import restore
from adlab.cli import predict, train
from adlab.export import (
    PARITY_ATOL,
    ExportError,
    export_blocker,
    export_onnx,
    onnx_session,
    reference,
)
from adlab.export import run_onnx as onnx_forward

FAST = ["logger=none", "callbacks.sample_visualizer=null", "callbacks.rich_progress_bar=null"]
EXPORTABLE = {"autoencoder", "cnn", "draem", "dmad"}  # must export (single pass)
DIFFUSION = {"anoddpm", "ddad", "pretrained_ddpm"}  # export with the noise as an input


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sockets, no timm hub, no weights file, no offline weight package."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network and weight sources disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(backbones, "_hub_model", refuse)
    monkeypatch.setattr(backbones, "load_weights_file", refuse)
    offline = {k: (arch, refuse) for k, (arch, _) in backbones.OFFLINE_WEIGHTS.items()}
    monkeypatch.setattr(backbones, "OFFLINE_WEIGHTS", offline)


def _hub_backbones(node: object) -> int:
    """Set every backbone of a stored config to ``weights: timm`` (the hub); return how many."""
    if isinstance(node, list):
        return sum(_hub_backbones(v) for v in node)
    if not isinstance(node, dict):
        return 0
    count = sum(_hub_backbones(v) for v in node.values())
    if str(node.get("_target_", "")).endswith("backbones.FeatureExtractor"):
        node.update(weights="timm", allow_random_init=False)
        count += 1
    return count


def _check_hub_config_restores_offline(ckpt: Path, tmp: Path, expected: dict) -> None:
    """A checkpoint whose config says ``weights: timm`` restores with the network off."""
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    if not _hub_backbones(raw["adlab_run"]["model_cfg"]):
        return
    torch.save(raw, tmp / "hub.ckpt")
    state = restore(tmp / "hub.ckpt").model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def _fit(model: str, tmp: Path, data: Path) -> tuple[dict, Path]:
    overrides = [f"model={model}", "trainer=smoke", f"+smoke={model}"]
    cfg = compose_train(tmp, data, [*overrides, "trainer.limit_train_batches=1", *FAST])
    HydraConfig().set_config(cfg)
    return train.run(cfg), Path(cfg.paths.output_dir) / "checkpoints" / "model.ckpt"


def _reevaluate(model: str, ckpt: Path, tmp: Path, data: Path) -> tuple[dict, pd.Series]:
    """``train=false`` without ``model=``: the stored config, and a run dir named after it."""
    cfg = compose_train(tmp, data, ["train=false", f"ckpt_path={ckpt}", "trainer=smoke", *FAST])
    assert cfg.model_name == model
    assert Path(cfg.hydra.run.dir).parts[-4:-1] == (model, "synthetic", "weave")
    HydraConfig().set_config(cfg)
    results = train.run(cfg)
    return results, pd.read_csv(cfg.paths.results_csv).iloc[0]


def _prediction_folder(data: Path, out: Path) -> dict[str, tuple[int, int]]:
    """``a/000.png`` and ``b/000.png`` (same name) at 32 px, ``b/wide.png`` at 40x56."""
    test = sorted((data / "weave" / "test").rglob("*.png"))
    sizes = {}
    for name, src, size in (("a/000.png", test[0], None), ("b/000.png", test[-1], (56, 40))):
        dst = out / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(src).convert("RGB")
        image = image.resize(size) if size else image
        image.save(dst)
        sizes[name] = image.size[::-1]
    Image.open(test[1]).convert("RGB").resize((56, 40)).save(out / "b" / "wide.png")
    sizes["b/wide.png"] = (40, 56)
    return sizes


def _predict(ckpt: Path, folder: Path, out: Path, backend: str) -> pd.DataFrame:
    cfg = {"ckpt_path": str(ckpt), "input": str(folder), "backend": backend, "batch_size": 2}
    cfg |= {"accelerator": "cpu", "output_dir": str(out), "onnx_path": None}
    return predict.run(OmegaConf.create(cfg))


def _check_predictions(table: pd.DataFrame, out: Path, sizes: dict, threshold: float) -> None:
    assert sorted(table.name) == sorted(sizes)
    assert (table.image_threshold == threshold).all()
    assert (table.is_anomalous == (table.score >= threshold)).all()
    for name, size in sizes.items():
        for sub in ("masks", "overlays"):
            with Image.open(out / sub / name) as img:
                assert img.size[::-1] == size, (sub, name)
    assert len(list((out / "overlays").rglob("*.png"))) == len(sizes)


def _test_images(data: Path) -> torch.Tensor:
    from adlab.data.folder import prepare_image
    from adlab.data.io import read_image

    files = sorted((data / "weave" / "test").rglob("*.png"))[:4]
    return torch.stack([prepare_image(read_image(f), (32, 32), None) for f in files])


def _check_export(restored, ckpt: Path, data: Path) -> None:
    """Real test images through the graph vs the module (each image alone with sampled noise)."""
    onnx = ckpt.with_suffix(".onnx")
    written = export_onnx(restored, onnx, ckpt)
    noise = np.load(onnx.parent / written["noise"]) if "noise" in written else None
    images = _test_images(data)
    ref_map, ref_score = reference(restored.model, images, per_image=noise is not None)
    onnx_map, onnx_score = onnx_forward(onnx_session(onnx), images, noise)
    assert (ref_map - onnx_map).abs().max() <= PARITY_ATOL
    assert (ref_score - onnx_score).abs().max() <= PARITY_ATOL


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_life_cycle(
    model: str, tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, ckpt = _fit(model, tmp_path / "fit", synthetic_root)
    _offline(monkeypatch)
    restored = restore(ckpt)
    assert not math.isnan(restored.model.image_threshold), "thresholds lost in the checkpoint"
    _check_hub_config_restores_offline(ckpt, tmp_path, restored.model.state_dict())
    again, row = _reevaluate(model, ckpt, tmp_path / "eval", synthetic_root)
    for key, value in first.items():
        assert again[key] == pytest.approx(value, abs=0, rel=0, nan_ok=True), key
    assert row.model == model and row.ckpt_path == str(ckpt) and row.config_sha1.startswith("sha1:")
    assert (tmp_path / "eval" / "run" / "checkpoints" / "model.ckpt").is_file()
    sizes = _prediction_folder(synthetic_root, tmp_path / "in")
    lightning = _predict(ckpt, tmp_path / "in", tmp_path / "pred", "lightning")
    _check_predictions(lightning, tmp_path / "pred", sizes, restored.model.image_threshold)
    if export_blocker(restored.model):
        assert model not in EXPORTABLE | DIFFUSION
        with pytest.raises(ExportError, match=f"{model} cannot be exported to ONNX: its "):
            export_onnx(restored, tmp_path / "m.onnx", ckpt)
        return
    _check_export(restored, ckpt, synthetic_root)
    onnx = _predict(ckpt, tmp_path / "in", tmp_path / "pred_onnx", "onnx")
    _check_predictions(onnx, tmp_path / "pred_onnx", sizes, restored.model.image_threshold)
    if model in EXPORTABLE:  # batch-dependent noise: Lightning scored batches of 2, ONNX 1 by 1
        np.testing.assert_allclose(onnx.score, lightning.score, atol=PARITY_ATOL, rtol=0)


def test_exportable_methods_are_configs() -> None:
    """The methods that must export exist; the life-cycle test checks each one."""
    assert set(MODEL_CONFIGS) >= EXPORTABLE | DIFFUSION
