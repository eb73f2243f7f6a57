"""Checkpoints: resuming a killed run, safe loading, the stored config under ``train=false``,
debug runs that save nothing, divergence stops, results keys with the stage, and DDAD's ratio
in every file saved while fitting."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_train
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from adlab.callbacks.divergence import DivergenceError
from adlab.callbacks.fast_path import FastPath
from adlab.checkpoint import UnsafeCheckpointError, load_checkpoint, restore
from adlab.cli import train
from adlab.models.autoencoder import AutoEncoderModule
from adlab.results import has_row, upsert_rows

FAST = ["logger=none", "callbacks.sample_visualizer=null", "callbacks.rich_progress_bar=null"]
AE = ["model=autoencoder", "trainer=smoke", "+smoke=autoencoder", *FAST]
# 4 batches of 4 shuffled images per epoch, 2 epochs: a resume must replay the shuffle
RESUME = [*AE, "dataset.batch_size=4", "trainer.limit_train_batches=4", "trainer.max_epochs=2"]
RESUME += ["trainer.deterministic=true", "test=false"]


def _run(tmp: Path, data: Path, overrides: list[str]) -> tuple[dict, Path]:
    cfg = compose_train(tmp, data, overrides)
    HydraConfig().set_config(cfg)
    return train.run(cfg), Path(cfg.paths.output_dir)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "model.ckpt")["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """Two epochs of the autoencoder, never stopped; its run dir."""
    return _run(tmp_path_factory.mktemp("whole"), synthetic_root, RESUME)[1]


def test_a_killed_run_resumes_to_the_same_weights(
    uninterrupted: Path, tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(self: AutoEncoderModule, batch: dict, batch_idx: int) -> None:
        if self.current_epoch == 1 and batch_idx == 2:
            raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(AutoEncoderModule, "on_train_batch_start", killed)
        with pytest.raises(RuntimeError, match="killed"):
            _run(tmp_path / "killed", synthetic_root, RESUME)
    ckpt = tmp_path / "killed" / "run" / "checkpoints" / "model.ckpt"
    assert load_checkpoint(ckpt)["epoch"] == 0  # the end of epoch 0 is all that was saved
    _, resumed = _run(tmp_path / "resumed", synthetic_root, [*RESUME, f"ckpt_path={ckpt}"])
    whole, again = _weights(uninterrupted), _weights(resumed)
    assert whole.keys() == again.keys()
    for key in whole:  # bit for bit (NaN thresholds included: test=false)
        torch.testing.assert_close(again[key], whole[key], rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(
        whole["net.decoder.4.weight"], load_checkpoint(ckpt)["state_dict"]["net.decoder.4.weight"]
    )


def test_train_false_uses_the_stored_config_with_overrides_on_top(
    uninterrupted: Path, tmp_path: Path, synthetic_root: Path
) -> None:
    ckpt = uninterrupted / "checkpoints" / "model.ckpt"
    # no model=: the stored autoencoder (widths 8/16 from the smoke file) is rebuilt
    overrides = ["train=false", f"ckpt_path={ckpt}", "trainer=smoke", *FAST]
    results, _ = _run(tmp_path / "eval", synthetic_root, [*overrides, "dataset.category=disc"])
    row = pd.read_csv(tmp_path / "eval" / "results.csv").iloc[0]
    stored = load_checkpoint(ckpt)["adlab_run"]
    assert (row.model, row.category, row.epochs) == ("autoencoder", "disc", stored["epochs"])
    assert row.ckpt_path == str(ckpt) and 0 <= results["img_auroc"] <= 1
    with pytest.raises(ValueError, match="holds a 'autoencoder' model but model=cnn"):
        _run(tmp_path / "bad", synthetic_root, [*overrides, "model=cnn"])


def test_unsafe_checkpoints_are_refused_unless_trusted(
    uninterrupted: Path, tmp_path: Path, synthetic_root: Path
) -> None:
    ckpt = load_checkpoint(uninterrupted / "checkpoints" / "model.ckpt")
    ckpt["extra"] = argparse.Namespace(payload="arbitrary object")
    path = tmp_path / "unsafe.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=true"):
        restore(path)
    overrides = ["train=false", f"ckpt_path={path}", "trainer=smoke", *FAST]
    with pytest.raises(UnsafeCheckpointError, match="Namespace"):
        _run(tmp_path / "refused", synthetic_root, overrides)
    assert restore(path, trust=True).model.image_threshold != 0  # loads, NaN or a value
    results, _ = _run(tmp_path / "trusted", synthetic_root, [*overrides, "trust_checkpoint=true"])
    assert 0 <= results["img_auroc"] <= 1


def test_debug_run_saves_nothing_and_skip_existing_is_not_fooled(
    tmp_path: Path, synthetic_root: Path
) -> None:
    results, run_dir = _run(tmp_path, synthetic_root, [*AE, "debug=fdr"])
    assert results  # it did test
    assert not (tmp_path / "results.csv").exists() and not (run_dir / "results.csv").exists()
    assert not list(run_dir.rglob("*.ckpt"))
    again, _ = _run(tmp_path, synthetic_root, [*AE, "debug=fdr", "skip_existing=true"])
    assert again, "skip_existing skipped a category that only had a debug run"


def test_a_diverging_fit_stops_at_its_step(
    tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = AutoEncoderModule.training_step

    def diverging(self: AutoEncoderModule, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 1 else loss

    monkeypatch.setattr(AutoEncoderModule, "training_step", diverging)
    overrides = [*AE, "dataset.batch_size=4", "trainer.limit_train_batches=4"]
    with pytest.raises(DivergenceError, match=r"at step 2 \(epoch 0, batch 1\): loss = nan"):
        _run(tmp_path, synthetic_root, overrides)
    assert not (tmp_path / "results.csv").exists()


def test_results_rows_are_keyed_by_stage_and_run_name(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    base = {"model": "ddad", "dataset": "mvtec", "category": "bottle", "img_auc": 0.9}
    upsert_rows(path, [base | {"stage": "diffusion"}])
    upsert_rows(path, [base | {"stage": "domain_adaptation", "img_auc": 0.95}])
    upsert_rows(path, [base | {"stage": "diffusion", "run_name": "ablation"}])
    assert len(pd.read_csv(path)) == 3
    assert has_row(path, "ddad", "mvtec", "bottle", "domain_adaptation")
    assert not has_row(path, "ddad", "mvtec", "bottle")  # no stage-less row
    cfg = compose_train(tmp_path, tmp_path, ["model=ddad", "model.stage=domain_adaptation"])
    node = OmegaConf.to_container(cfg.callbacks.results_csv, resolve=True)
    assert (node["stage"], node["run_name"]) == ("domain_adaptation", None)


def test_ddad_files_saved_while_fitting_hold_their_own_ratio(
    tmp_path: Path, synthetic_root: Path
) -> None:
    """Stage 1 (tested), then stage 2 from it with ``test=false``: each file holds the ratio of
    its own weights (not NaN, not the previous stage's), and stage 2 none of stage 1's
    thresholds."""
    overrides = ["model=ddad", "trainer=smoke", "+smoke=ddad", *FAST]
    overrides += ["trainer.limit_train_batches=1", "trainer.max_epochs=1"]
    _, stage1 = _run(tmp_path / "s1", synthetic_root, overrides)
    ckpt1 = stage1 / "checkpoints" / "model.ckpt"
    da = [*overrides, "model.stage=domain_adaptation", f"init_from={ckpt1}", "test=false"]
    _, stage2 = _run(tmp_path / "s2", synthetic_root, da)
    images = torch.stack(_train_images(synthetic_root))
    models = [restore(c).model for c in (ckpt1, stage2 / "checkpoints" / "model.ckpt")]
    for model in models:
        for net in FastPath.modules(model):  # channels_last, as FastPath (auto) ran the fit
            net.to(memory_format=torch.channels_last)
        stored = float(model.pixel_ratio)
        assert stored == pytest.approx(model.calibrate_pixel_ratio(images), rel=1e-5)
    assert float(models[0].pixel_ratio) != float(models[1].pixel_ratio)
    assert not math.isnan(models[0].image_threshold) and math.isnan(models[1].image_threshold)


def _train_images(root: Path) -> list[torch.Tensor]:
    from adlab.data.folder import prepare_image
    from adlab.data.io import read_image

    files = sorted((root / "weave" / "train" / "good").glob("*.png"))[:16]
    return [prepare_image(read_image(f), (32, 32), None) for f in files]
