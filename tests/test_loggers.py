"""``logger=csv`` and ``logger=mlflow`` (a local store under the run dir) next to TensorBoard: a
1-epoch run logs its parameters and test metrics to each."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import compose_train
from hydra.core.hydra_config import HydraConfig

from adlab.cli import train

SMOKE = ["model=autoencoder", "trainer=smoke", "trainer.max_epochs=1"]


def _run(tmp_path: Path, data_root: Path, logger: str) -> tuple[Path, dict[str, float]]:
    cfg = compose_train(tmp_path, data_root, [*SMOKE, f"logger={logger}"])
    HydraConfig().set_config(cfg)
    return Path(cfg.paths.output_dir), train.run(cfg)


def test_csv_logger_writes_metrics_and_hparams(tmp_path: Path, synthetic_root: Path) -> None:
    run_dir, results = _run(tmp_path, synthetic_root, "csv")
    (version,) = (run_dir / "csv").glob("version_*")
    metrics = pd.read_csv(version / "metrics.csv")
    assert "train/loss" in metrics and metrics["train/loss"].notna().any()
    for key in ("test/img_auroc", "hp/img_auroc"):
        assert metrics[key].dropna().iloc[-1] == pytest.approx(results["img_auroc"]), key
    assert metrics["hp/train_seconds"].dropna().iloc[-1] > 0
    hparams = yaml.safe_load((version / "hparams.yaml").read_text())
    assert hparams["model_name"] == "autoencoder" and hparams["dataset"]["category"] == "weave"
    assert list((version / "sample").glob("*.png"))


@pytest.mark.slow
def test_mlflow_logger_uses_a_local_store_in_the_run_dir(
    tmp_path: Path, synthetic_root: Path
) -> None:
    mlflow = pytest.importorskip("mlflow")
    run_dir, results = _run(tmp_path, synthetic_root, "mlflow")
    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("autoencoder_synthetic")
    assert Path(experiment.artifact_location.removeprefix("file://")) == run_dir / "mlartifacts"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "weave" and run.info.status == "FINISHED"
    assert run.data.params["model_name"] == "autoencoder"
    for key in ("test/img_auroc", "hp/img_auroc"):
        assert run.data.metrics[key] == pytest.approx(results["img_auroc"]), key
    assert "train/loss" in run.data.metrics and run.data.metrics["hp/train_seconds"] > 0
    assert list((run_dir / "sample").glob("*.png"))  # no local logger dir: the run dir
