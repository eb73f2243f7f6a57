"""Score new images with a trained checkpoint: ``python predict.py ckpt_path=PATH input=DIR``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("ADLAB_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from adlab.cli.predict import run

    run(cfg)


if __name__ == "__main__":
    main()
