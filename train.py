"""Train and test one method on one dataset category: ``python train.py model=... dataset=...``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

import adlab  # noqa: F401  (registers the adlab_stored config resolver)

os.environ.setdefault("ADLAB_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from adlab.cli.train import run

    run(cfg)


if __name__ == "__main__":
    main()
