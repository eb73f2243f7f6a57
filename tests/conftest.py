"""Shared pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from adlab.cli import train
from adlab.data.synthetic import SMOKE_DETECT_SET, SYNTHETIC_CATEGORIES, generate_category
from adlab.diffusion import UNet


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding every synthetic category at 32x32: 16 train, 4 good + 2 per defect test."""
    root = tmp_path_factory.mktemp("synthetic")
    for category in SYNTHETIC_CATEGORIES:
        generate_category(
            root, category, image_size=32, n_train=16, n_test_good=4, n_test_per_defect=2
        )
    return root


# ---------------------------------------------------------------- tiny networks
def tiny_unet(image_size: int = 16, **flags: Any) -> UNet:
    """The shared UNet at test size: widths 8 and 16, one ResBlock per level, attention at 8 px
    (and the middle block), 2 norm groups, 4 channels per head; ``flags`` override any of them
    (e.g. the pretrained checkpoint's ``use_scale_shift_norm``, ``learn_sigma``)."""
    tiny = dict(
        model_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_head_channels=4,
        norm_num_groups=2,
        image_size=image_size,
    )
    return UNet(**(tiny | flags))


# ---------------------------------------------------------------- Hydra composition for run tests
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def run_train_py(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the repository's ``train.py`` in a child at one thread; assert that it succeeded.

    Args:
        args: Hydra overrides (and flags such as ``-m``).
        cwd: working directory of the child.
        env: extra environment variables on top of this process's.

    Returns:
        The finished process (``stdout``/``stderr`` as text).
    """
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(CONFIG_DIR.parent / "train.py"), *args],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


MODEL_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
# generator parameters of the fixtures above / below (must match, or the datamodule refuses)
TINY_GEN = {"gen_image_size": 32, "n_train": 16, "n_test_good": 4, "n_test_per_defect": 2}
DETECT_GEN = {
    "gen_image_size" if key == "image_size" else key: value
    for key, value in SMOKE_DETECT_SET.items()
}


@pytest.fixture(scope="session")
def detect_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic ``weave`` and ``disc`` at 64 px: enough test images for a meaningful AUROC."""
    root = tmp_path_factory.mktemp("synthetic_detect")
    for category in ("weave", "disc"):
        generate_category(root, category, seed=0, **SMOKE_DETECT_SET)
    return root


def compose_train(
    tmp_path: Path,
    data_root: Path,
    overrides: list[str],
    gen: dict[str, int] | None = None,
) -> DictConfig:
    """Compose ``train.yaml`` like the CLI would, with every path under ``tmp_path``.

    Args:
        tmp_path: run dir, results table and logs go below it.
        data_root: an already generated synthetic root.
        overrides: Hydra overrides, e.g. ``["model=autoencoder", "trainer=smoke"]``.
        gen: generator parameters of ``data_root`` (default: the tiny fixture's).
    """
    gen = TINY_GEN if gen is None else gen
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.results_csv = str(tmp_path / "results.csv")
        cfg.dataset.root = str(data_root)
        if cfg.dataset.name == "synthetic":
            for key, value in gen.items():
                cfg.dataset[key] = value
            cfg.dataset.image_size = gen["gen_image_size"]
        cfg.dataset.num_workers = 0
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "0"
    return cfg


@pytest.fixture(scope="session")
def trained_autoencoder(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> dict:
    """One small AutoEncoder run (smoke sizes, 2 epochs) on the synthetic texture, shared by
    the tests that need a trained model: ``cfg``, ``results`` (the test metrics), ``tmp``."""
    tmp = tmp_path_factory.mktemp("ae_run")
    cfg = compose_train(
        tmp, synthetic_root, ["model=autoencoder", "trainer=smoke", "+smoke=autoencoder"]
    )
    with open_dict(cfg):
        cfg.trainer.max_epochs = 2
    HydraConfig().set_config(cfg)
    results = train.run(cfg)
    return {"cfg": cfg, "results": results, "tmp": tmp}
