"""End to end through ``adlab.cli.train.run``: train, test, results row, samples, checkpoint
round trip, evaluation without training, skip_existing, and prediction on a folder."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_train
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from adlab.cli import predict, train


def test_run_writes_row_samples_and_checkpoint(trained_autoencoder: dict) -> None:
    cfg, results = trained_autoencoder["cfg"], trained_autoencoder["results"]
    run_dir = Path(cfg.paths.output_dir)
    for key in ("img_auroc", "pixel_auroc", "pixel_aupro", "pixel_f1max", "img_f1max", "pixel_ap"):
        assert 0.0 <= results[key] <= 1.0, key
    shared = pd.read_csv(cfg.paths.results_csv)
    row = shared.iloc[0]
    assert list(shared.columns[:6]) == [
        "model",
        "dataset",
        "category",
        "category_type",
        "img_auc",
        "pixel_auc",
    ]
    assert (row.model, row.dataset, row.category, row.category_type) == (
        "autoencoder",
        "synthetic",
        "weave",
        "texture",
    )
    assert row.img_auc == pytest.approx(results["img_auroc"])
    assert row.train_seconds > 0 and row.epochs == 2
    assert not math.isnan(row.img_threshold) and row.threshold_source == "test"
    assert pd.read_csv(run_dir / "results.csv").iloc[0].img_auc == row.img_auc
    assert (run_dir / "checkpoints" / "model.ckpt").is_file()
    samples = list(run_dir.glob("lightning_logs/version_*/sample/*.png"))
    assert len(samples) >= 4
    assert list(run_dir.glob("lightning_logs/version_*/events.out.tfevents.*"))


def test_checkpoint_round_trip_gives_same_numbers(trained_autoencoder: dict) -> None:
    cfg = trained_autoencoder["cfg"]
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "model.ckpt"
    eval_cfg = compose_train(
        trained_autoencoder["tmp"] / "eval",
        Path(cfg.dataset.root),
        [
            "model=autoencoder",
            "trainer=smoke",
            "+smoke=autoencoder",
            "train=false",
            f"ckpt_path={ckpt}",
        ],
    )
    HydraConfig().set_config(eval_cfg)
    again = train.run(eval_cfg)
    for key, value in trained_autoencoder["results"].items():
        assert again[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    row = pd.read_csv(eval_cfg.paths.results_csv).iloc[0]
    assert row.epochs == 2 and row.ckpt_path == str(ckpt)


def test_eval_needs_matching_model_and_existing_checkpoint(
    trained_autoencoder: dict, tmp_path: Path
) -> None:
    data = Path(trained_autoencoder["cfg"].dataset.root)
    cfg = compose_train(tmp_path, data, ["train=false", f"ckpt_path={tmp_path / 'nope.ckpt'}"])
    HydraConfig().set_config(cfg)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        train.run(cfg)
    cfg = compose_train(tmp_path, data, ["train=false"])
    HydraConfig().set_config(cfg)
    with pytest.raises(ValueError, match="ckpt_path"):
        train.run(cfg)


def test_skip_existing_skips_a_done_category(trained_autoencoder: dict) -> None:
    cfg = trained_autoencoder["cfg"]
    with open_dict(cfg):
        cfg.skip_existing = True
    assert train.run(cfg) == {}


def test_predict_on_a_folder(trained_autoencoder: dict, tmp_path: Path) -> None:
    cfg = trained_autoencoder["cfg"]
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "model.ckpt"
    images = sorted((Path(cfg.dataset.root) / "weave" / "test").rglob("*.png"))[:5]
    folder = tmp_path / "new"
    folder.mkdir()
    for img in images:
        (folder / f"{img.parent.name}_{img.name}").write_bytes(img.read_bytes())
    out = tmp_path / "pred"
    pred_cfg = {
        "ckpt_path": str(ckpt),
        "input": str(folder),
        "backend": "lightning",
        "batch_size": 2,
        "accelerator": "cpu",
        "output_dir": str(out),
    }
    from omegaconf import OmegaConf

    table = predict.run(OmegaConf.create(pred_cfg))
    written = pd.read_csv(out / "predictions.csv")
    assert len(written) == len(table) == 5
    threshold = pd.read_csv(cfg.paths.results_csv).iloc[0].img_threshold
    assert (written.image_threshold == threshold).all()
    assert (written.is_anomalous == (written.score >= threshold)).all()
    assert {"path", "name", "score", "is_anomalous", "mask", "overlay"} <= set(written.columns)
    assert len(list((out / "masks").glob("*.png"))) == 5
    assert len(list((out / "overlays").glob("*.png"))) == 5
    glob_out = tmp_path / "pred_glob"
    pred_cfg |= {"input": str(folder / "good_*.png"), "output_dir": str(glob_out)}
    assert set(predict.run(OmegaConf.create(pred_cfg)).name) <= set(written.name)


def test_thresholds_come_from_a_labelled_validation_split(
    tmp_path: Path, synthetic_root: Path
) -> None:
    overrides = ["trainer=smoke", "+smoke=autoencoder", "trainer.max_epochs=1"]
    overrides += ["dataset.val_split=from_test", "dataset.val_fraction=0.5"]
    cfg = compose_train(tmp_path, synthetic_root, overrides)
    HydraConfig().set_config(cfg)
    train.run(cfg)
    row = pd.read_csv(cfg.paths.results_csv).iloc[0]
    assert row.threshold_source == "validation"
    assert not math.isnan(row.img_threshold)
