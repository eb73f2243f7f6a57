"""The package: configs shipped inside it (``pkg://adlab.configs``), the ``adlab`` console script,
its help, the value it returns to sweepers, and a real (non-editable) install used from an empty
directory outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_train, run_train_py
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from adlab.cli import main as cli
from adlab.cli import train

REPO = Path(__file__).resolve().parents[1]
TINY = [  # smoke size: seconds on one CPU thread
    "trainer=smoke",
    "dataset.gen_image_size=32",
    "dataset.image_size=32",
    "dataset.n_train=16",
    "dataset.n_test_good=4",
    "dataset.n_test_per_defect=2",
    "dataset.batch_size=8",
    "callbacks.rich_progress_bar=null",
    "callbacks.sample_visualizer.num_samples=2",
]


@pytest.mark.parametrize("group", ["model", "dataset", "experiment", "logger"])
def test_packaged_config_groups_are_the_repository_configs(group: str) -> None:
    assert cli.config_options(group) == sorted(
        p.stem for p in (REPO / "configs" / group).glob("*.yaml")
    )


def test_help_lists_commands_models_datasets_and_experiments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.main(["--help"])
    text = capsys.readouterr().out
    for command in ("train", "evaluate", "predict", "export", "report"):
        assert f"\n  {command} " in text
    for group in ("model", "dataset", "experiment"):
        names = sorted(p.stem for p in (REPO / "configs" / group).glob("*.yaml"))
        assert f"({group}=NAME):\n  {' '.join(names)}\n" in text


def test_python_m_adlab_is_the_console_script() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "adlab", "--help"], capture_output=True, text=True, check=True
    )
    assert proc.stdout == cli.usage() + "\n"


def test_unknown_command_names_the_choices() -> None:
    with pytest.raises(SystemExit, match="unknown command 'trian' \\(choose from train, evaluate"):
        cli.main(["trian", "model=draem"])


def test_sweep_value_is_the_optimized_test_metric() -> None:
    results = {"img_auroc": 0.75, "pixel_auroc": 0.5}
    assert cli.sweep_value(OmegaConf.create({"optimized_metric": "img_auroc"}), results) == 0.75
    assert cli.sweep_value(OmegaConf.create({"optimized_metric": None}), results) is None
    with pytest.raises(
        KeyError,
        match=r"optimized_metric=img_auc is not a test result of this run "
        r"\(img_auroc, pixel_auroc\)",
    ):
        cli.sweep_value(OmegaConf.create({"optimized_metric": "img_auc"}), results)


@pytest.mark.slow  # ~6 s CPU: the run dir's resolver imports torch
def test_optimized_metric_without_a_test_is_refused_before_training(tmp_path: Path) -> None:
    env = {**os.environ, "ADLAB_ROOT": str(tmp_path)}
    command = [sys.executable, "-m", "adlab", "train", "optimized_metric=img_auroc", "test=false"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "optimized_metric=img_auroc is a test result: it needs test=true" in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before the dataset was built


def test_ddp_children_of_adlab_train_keep_the_command(
    tmp_path: Path, synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a multirun, Lightning's DDP ranks 1.. re-run ``adlab train <this job's overrides>``."""
    cfg = compose_train(tmp_path, synthetic_root, ["dataset.category=disc"])
    cfg.hydra.mode = "MULTIRUN"
    cfg.hydra.overrides.task = ["model=autoencoder", "dataset.category=disc"]
    HydraConfig().set_config(cfg)
    monkeypatch.setattr(
        sys, "argv", ["/venv/bin/adlab", "train", "-m", "dataset.category=weave,disc"]
    )
    for name in train.DDP_ENV:
        monkeypatch.delenv(name, raising=False)
    train._ddp_children_run_this_job()
    assert sys.argv == ["/venv/bin/adlab", "train", "model=autoencoder", "dataset.category=disc"]


def _checkout_copy(dest: Path) -> Path:
    """The files of this checkout that git tracks or would track (no .venv, outputs, ...)."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to know the project's files")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def _dependency_paths() -> list[str]:
    """This interpreter's import path without adlab's own source (the dependencies only)."""
    own = {REPO, REPO / "tests"}
    return [
        p
        for p in sys.path
        if p
        and Path(p).is_dir()
        and Path(p).resolve() not in own
        and not (Path(p) / "adlab").exists()
    ]


def _fresh_venv(path: Path) -> Path:
    """A venv without adlab that sees this interpreter's dependencies (offline, no downloads).

    A ``.pth`` file puts this interpreter's import path, less adlab's source, on the venv's path
    as plain directories: their packages import, but their own ``.pth`` files (an editable adlab's
    finder) are not processed.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "dev_dependencies.pth").write_text("\n".join(_dependency_paths()) + "\n")
    return python


@pytest.mark.slow
def test_pip_install_outside_the_repo_then_adlab_train_in_an_empty_dir(tmp_path: Path) -> None:
    """``pip install .`` (a wheel, not editable) from a copy of the checkout, then
    ``adlab train model=autoencoder trainer.max_epochs=1`` from an empty directory."""
    source = _checkout_copy(tmp_path / "source")
    python = _fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("ADLAB_ROOT", "PYTHONPATH")}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = subprocess.run([str(python), "-c", "import adlab"], cwd=tmp_path, capture_output=True)
    assert before.returncode != 0, "the fresh venv must not see this checkout's adlab"
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    install += ["--no-index", "--ignore-installed", "--quiet", str(source)]
    subprocess.run(install, cwd=tmp_path, env=env, check=True, timeout=120)
    shutil.rmtree(source)  # the install must not need the source any more
    where = subprocess.run(
        [str(python), "-c", "import adlab.configs; print(adlab.configs.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv")
    workdir = tmp_path / "empty"
    workdir.mkdir()
    command = [str(python.parent / "adlab"), "train", "model=autoencoder", "trainer.max_epochs=1"]
    proc = subprocess.run(
        [*command, *TINY], cwd=workdir, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, (
        f"adlab train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    row = pd.read_csv(workdir / "outputs" / "results.csv").iloc[0]
    assert (row.model, row.dataset, row.category, row.epochs) == (
        "autoencoder",
        "synthetic",
        "weave",
        1,
    )
    assert 0.0 <= row.img_auc <= 1.0
    assert Path(row.ckpt_path).is_file() and Path(row.ckpt_path).is_relative_to(workdir)
    assert (workdir / "data" / "synthetic" / "weave" / "train" / "good").is_dir()


@pytest.mark.slow
def test_optuna_sweep_maximises_the_optimized_metric(tmp_path: Path) -> None:
    """Two Optuna trials: the best value the sweeper reports is the best run's image AUROC."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = [
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.direction=maximize",
    ]
    sweep += ["hydra.sweeper.sampler.seed=0", "optimized_metric=img_auroc"]
    sweep += ["model.optimizer.lr=interval(1e-4,1e-2)", "model=autoencoder"]
    proc = run_train_py([*sweep, *TINY], tmp_path, {"ADLAB_ROOT": str(tmp_path)})
    assert "setup plugin" not in proc.stdout + proc.stderr  # alembic's notes stay quiet
    sweep_dir = next((tmp_path / "outputs" / "multirun").iterdir())
    trials = [pd.read_csv(f).iloc[0] for f in sorted(sweep_dir.glob("*/results.csv"))]
    assert len(trials) == 2
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(t.img_auc for t in trials))
    assert 1e-4 <= best.best_params["model.optimizer.lr"] <= 1e-2
