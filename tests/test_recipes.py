"""Every paper recipe (``configs/experiment/<method>_<dataset>.yaml``) composes for every category
of its dataset and gives the paper's values (image size, batch, epochs, LR schedule, per-category
values, evaluation protocol). The values asserted here are the papers' and official repositories'
(``shared/methods/*.md``), written out, so a changed recipe fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from adlab.models.draem.lightning_model import multistep_at_fractions

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CATEGORIES = OmegaConf.load(CONFIG_DIR / "hydra" / "sweeper" / "categories.yaml").categories
MVTEC, VISA = list(CATEGORIES.mvtec), list(CATEGORIES.visa)


def _compose(experiment: str, category: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train.yaml",
            overrides=[f"experiment={experiment}", f"dataset.category={category}", *overrides],
            return_hydra_config=True,
        )
    HydraConfig().set_config(cfg)
    for key in cfg:  # every interpolation resolves for every category
        if key != "hydra" and OmegaConf.is_config(cfg[key]):
            OmegaConf.to_container(cfg[key], resolve=True)
    return cfg


# ------------------------------------------------------------------------------------- DRAEM
@pytest.mark.parametrize("category", MVTEC)
def test_draem_mvtec_paper_recipe(category: str) -> None:
    cfg = _compose("draem_mvtec", category)
    assert cfg.dataset.name == "mvtec" and cfg.dataset.category == category
    assert (cfg.dataset.image_size, cfg.dataset.batch_size, cfg.trainer.max_epochs) == (256, 8, 700)
    assert cfg.model.optimizer.lr == 1e-4 and cfg.model.optimizer._target_ == "torch.optim.Adam"
    sched = cfg.model.scheduler
    assert sched.max_epochs == 700 and sched.gamma == 0.1
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    steps = multistep_at_fractions(optimizer, 700, sched.milestones, sched.gamma).milestones
    assert sorted(steps) == [400, 600]  # x0.1 after epochs 400 and 600
    assert cfg.model.loss_variant == "official"
    assert list(cfg.model.synthesizer.beta_range) == [0.1, 1.0]
    assert len(cfg.model.synthesizer.source_ops) == 7 and cfg.model.rotate_degrees == 45
    assert cfg.model.score_kernel == 21 and cfg.model.ssim_weight == 1.0


@pytest.mark.parametrize("variant, epochs", [("code", 700), ("released", 800)])
def test_draem_mvtec_official_code_variant(variant: str, epochs: int) -> None:
    cfg = _compose("draem_mvtec", "bottle", f"draem_variant={variant}")
    assert cfg.trainer.max_epochs == epochs and cfg.model.scheduler.max_epochs == epochs
    assert list(cfg.model.synthesizer.beta_range) == [0.0, 0.8]
    assert len(cfg.model.synthesizer.source_ops) == 10 and cfg.model.rotate_degrees == 90
    assert list(cfg.model.scheduler.milestones) == [0.8, 0.9] and cfg.model.scheduler.gamma == 0.2
