"""Best-model report from the results table and run dirs: ``python report.py``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("ADLAB_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="report")
def main(cfg: DictConfig) -> None:
    from adlab.cli.report import run

    run(cfg)


if __name__ == "__main__":
    main()
