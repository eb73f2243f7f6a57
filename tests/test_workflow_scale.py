"""Sweeps and scale-out: ``dataset.category=all``, launchers, DDP, training times, TensorBoard.

The two end-to-end tests run ``python train.py`` as a subprocess, as a user would: a DDP run with
two CPU processes (gloo) and a joblib sweep over every synthetic category. Tiny sizes keep each
under a minute on two cores.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import CONFIG_DIR, compose_train, run_train_py
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.utils import instantiate
from omegaconf import OmegaConf

from adlab.cli import train
from adlab.data.synthetic import generate_category
from adlab.training_times import format_duration, training_times_markdown

# 5 + 3 * 2 = 11 weave test images: an odd count, so a padding DDP sampler would repeat one
GEN = {"gen_image_size": 32, "n_train": 16, "n_test_good": 5, "n_test_per_defect": 2}
METRICS = {
    "img_auc": "img_auroc",
    "pixel_auc": "pixel_auroc",
    "pixel_aupro": "pixel_aupro",
    "pixel_f1max": "pixel_f1max",
    "img_f1max": "img_f1max",
    "pixel_ap": "pixel_ap",
    "img_ap": "img_ap",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_scale")
    gen = {k.removeprefix("gen_"): v for k, v in GEN.items()}
    for category in ("weave", "disc"):
        generate_category(root, category, **gen)
    return root


def _tiny(data_root: Path, out: Path) -> list[str]:
    """Overrides for a one-epoch AutoEncoder on the 32 px data, every output below ``out``."""
    return [
        "model=autoencoder",
        "+smoke=autoencoder",
        "trainer.max_epochs=1",
        f"dataset.root={data_root}",
        *(f"dataset.{k}={v}" for k, v in GEN.items()),
        "dataset.image_size=32",
        "dataset.batch_size=8",
        "dataset.eval_batch_size=4",
        "dataset.num_workers=0",
        f"paths.log_dir={out}",
        "callbacks.rich_progress_bar=null",
        "callbacks.sample_visualizer.num_samples=2",
    ]


# ---------------------------------------------------------------- dataset.category=all
def _category_sweeper_class() -> type:
    """The sweeper class as Hydra's plugin scan left it.

    The scan re-executes every plugin module (and Hydra's basic sweeper) in place, so a class
    imported before it subclasses a stale ``BasicSweeper``; scan first, then look the class up.
    """
    Plugins.instance()
    return importlib.import_module(
        "hydra_plugins.adlab_category_sweeper.category_sweeper"
    ).CategorySweeper


def test_category_sweeper_lists_and_folder_scan(tmp_path: Path) -> None:
    sweeper = _category_sweeper_class()(categories={"synthetic": ["weave", "disc"]})
    listed = OmegaConf.create({"name": "synthetic", "root": str(tmp_path / "absent")})
    assert sweeper.categories_of(listed) == ["weave", "disc"]
    for name in ("widget", "bolt"):
        (tmp_path / name / "train" / "good").mkdir(parents=True)
    (tmp_path / "notes").mkdir()  # no train/good: not a category
    folder = OmegaConf.create({"name": "folder", "root": str(tmp_path)})
    assert sweeper.categories_of(folder) == ["bolt", "widget"]
    empty = OmegaConf.create({"name": "folder", "root": str(tmp_path / "notes")})
    with pytest.raises(ValueError, match="dataset.category=all.*'folder'.*train/good"):
        sweeper.categories_of(empty)


def test_category_all_outside_multirun_names_the_fix(tmp_path: Path, data_root: Path) -> None:
    cfg = compose_train(tmp_path, data_root, ["dataset.category=all"], gen=GEN)
    HydraConfig().set_config(cfg)
    with pytest.raises(ValueError, match="dataset.category=all .* add -m"):
        train.run(cfg)


def test_launcher_configs_compose_and_instantiate() -> None:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        slurm = compose(
            "train.yaml",
            ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
        local = compose("train.yaml", ["hydra/launcher=local_parallel"], return_hydra_config=True)
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.timeout_min > 0 and launcher.partition is None
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"
    assert local.hydra.launcher._target_.endswith("joblib_launcher.JoblibLauncher")
    assert local.hydra.launcher.n_jobs == 2
    assert slurm.hydra.sweeper._target_.endswith("CategorySweeper")
    assert list(slurm.hydra.sweeper.categories.synthetic) == ["weave", "disc"]


# ---------------------------------------------------------------- training times
def test_training_times_markdown_groups_and_totals() -> None:
    assert format_duration(3725.4) == "1:02:05" and format_duration(math.nan) == "-"
    table = pd.DataFrame(
        [
            {"model": "ae", "dataset": "mvtec", "category": "wood", "epochs": 3,
             "train_seconds": 100.0, "test_seconds_per_image": 0.0125, "time": "t1"},
            {"model": "ae", "dataset": "mvtec", "category": "bottle", "epochs": 3,
             "train_seconds": 3625.0, "test_seconds_per_image": 0.01, "time": "t2"},
            {"model": "pre", "dataset": "mvtec", "category": "bottle", "epochs": 0,
             "train_seconds": math.nan, "test_seconds_per_image": 0.5, "time": "t3"},
        ]
    )  # fmt: skip
    text = training_times_markdown(table)
    ae = text.split("## ae / mvtec")[1].split("## pre / mvtec")[0]
    assert ae.index("| bottle | 3 | 1:00:25 | 3625.0 | 10.00 | t2 |") < ae.index("| wood |")
    assert "| wood | 3 | 0:01:40 | 100.0 | 12.50 | t1 |" in ae
    assert "| **total, 2 categories** | | **1:02:05** | **3725.0** | | |" in ae
    pre = text.split("## pre / mvtec")[1]
    assert "| bottle | 0 | - | - | 500.00 | t3 |" in pre
    assert "| **total, 1 category** | | **-** | **-** | | |" in pre


# ---------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_cpu_processes_write_one_row_over_the_whole_test_set(
    tmp_path: Path, data_root: Path
) -> None:
    out = tmp_path / "outputs"
    args = [*_tiny(data_root, out), "trainer=ddp_cpu", "trainer.devices=2"]
    run_train_py(args, tmp_path)
    shared = pd.read_csv(out / "results.csv")
    assert len(shared) == 1, shared  # rank zero only
    row = shared.iloc[0]
    assert (row.model, row.dataset, row.category) == ("autoencoder", "synthetic", "weave")
    assert row.train_seconds > 0 and row.epochs == 1
    run_dirs = list((out / "autoencoder" / "synthetic" / "weave").iterdir())
    assert run_dirs == [Path(row.run_dir)], "rank 1 must share rank 0's run dir"
    assert len(pd.read_csv(Path(row.run_dir) / "results.csv")) == 1
    assert "weave" in (out / "training_times.md").read_text()
    # the checkpoint's training time is the fit's, not fit + test (the final save follows the test)
    meta = train.load_checkpoint(row.ckpt_path)["adlab_run"]
    assert meta["train_seconds"] == pytest.approx(row.train_seconds, abs=0.1)

    # the same checkpoint in one process: equal metrics, so no test image was missed or repeated
    cfg = compose_train(
        tmp_path / "single",
        data_root,
        ["model=autoencoder", "trainer=smoke", "+smoke=autoencoder", "train=false"],
        gen=GEN,
    )
    cfg.ckpt_path = row.ckpt_path
    HydraConfig().set_config(cfg)
    single = train.run(cfg)
    for column, key in METRICS.items():
        assert row[column] == pytest.approx(single[key], abs=1e-6), column


# ---------------------------------------------------------------- joblib sweep + TensorBoard
def _tensorboard(run_dir: Path) -> tuple[dict, dict]:
    """(tags by type, hparams plugin data by tag) of the run's TensorBoard event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    (version,) = run_dir.glob("lightning_logs/version_*")
    acc = EventAccumulator(str(version), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    hparams = {
        tag: HParamsPluginData.FromString(content)
        for tag, content in acc.PluginTagToContent("hparams").items()
    }
    return acc.Tags(), hparams


@pytest.mark.slow
def test_joblib_sweep_over_all_synthetic_categories(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "outputs"
    args = [
        "-m",
        "hydra/launcher=local_parallel",
        "hydra.launcher.n_jobs=2",
        "trainer=smoke",
        *_tiny(data_root, out),
        "dataset.category=all",
    ]
    run_train_py(args, tmp_path)
    shared = pd.read_csv(out / "results.csv")
    assert sorted(shared.category) == ["disc", "weave"]
    assert shared.train_seconds.gt(0).all() and shared.test_seconds_per_image.gt(0).all()
    run_dirs = {Path(d) for d in shared.run_dir}
    assert len(run_dirs) == 2 and all(d.parent.parent == out / "multirun" for d in run_dirs)
    times = (out / "training_times.md").read_text()
    assert "## autoencoder / synthetic" in times and "**total, 2 categories**" in times
    for row in shared.itertuples():
        run_dir = Path(row.run_dir)
        assert pd.read_csv(run_dir / "results.csv").category.tolist() == [row.category]
        assert (run_dir / "checkpoints" / "model.ckpt").is_file()
        tags, hparams = _tensorboard(run_dir)
        assert {"train/loss", "test/img_auroc", "test/pixel_aupro"} <= set(tags["scalars"])
        assert any(t.startswith("test/sample_") for t in tags["images"]), tags["images"]
        start = hparams["_hparams_/session_start_info"].session_start_info.hparams
        assert start["model_name"].string_value == "autoencoder"
        assert start["dataset/category"].string_value == row.category
        assert "model/net/widths" in start
        metrics = {m.name.tag for m in hparams["_hparams_/experiment"].experiment.metric_infos}
        assert {"hp/img_auroc", "hp/train_seconds"} <= metrics


def test_multirun_ddp_children_rerun_only_their_job(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning relaunches ``sys.argv`` for ranks 1..: in a multirun it must be this job only,
    and the launcher's LOCAL_RANK etc. must not leak into the next job."""
    cfg = compose_train(tmp_path, data_root, ["dataset.category=disc"], gen=GEN)
    cfg.hydra.mode = "MULTIRUN"
    cfg.hydra.overrides.task = ["model=autoencoder", "dataset.category=disc"]
    HydraConfig().set_config(cfg)
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "dataset.category=weave,disc"])
    monkeypatch.setenv("MASTER_PORT", "1234")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    env = train._ddp_children_run_this_job()
    assert sys.argv == ["train.py", "model=autoencoder", "dataset.category=disc"]
    assert HydraConfig.get().run.dir == str(tmp_path / "run")
    monkeypatch.setenv("LOCAL_RANK", "0")  # what the launcher leaves behind
    monkeypatch.setenv("MASTER_PORT", "5678")
    train._end_distributed(env, barrier=True)
    assert "LOCAL_RANK" not in os.environ and os.environ["MASTER_PORT"] == "1234"


def test_ddp_children_keep_the_config_selecting_flags() -> None:
    argv = ["-m", "-cn", "train", "model=draem", "--config-dir=/cfg", "seed=1", "-cp", "conf"]
    assert train._config_flags(argv) == ["-cn", "train", "--config-dir=/cfg", "-cp", "conf"]
