"""Export a checkpoint for deployment: ``python export.py ckpt_path=PATH format=onnx``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("ADLAB_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    from adlab.cli.export import run

    run(cfg)


if __name__ == "__main__":
    main()
