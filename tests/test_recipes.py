"""Every paper recipe (``configs/experiment/<method>_<dataset>.yaml``) composes for every category
of its dataset and gives the paper's values (image size, batch, epochs, LR schedule, per-category
values, evaluation protocol). The values asserted here are the papers' and official repositories'
(``shared/methods/*.md``), written out, so a changed recipe fails loudly."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from adlab.models.draem.lightning_model import multistep_at_fractions

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CATEGORIES = OmegaConf.load(CONFIG_DIR / "hydra" / "sweeper" / "categories.yaml").categories
MVTEC, VISA = list(CATEGORIES.mvtec), list(CATEGORIES.visa)


@functools.cache
def _composed(experiment: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "train.yaml",
            overrides=[f"experiment={experiment}", *overrides],
            return_hydra_config=True,
        )


def _compose(experiment: str, category: str, *overrides: str) -> DictConfig:
    """The recipe for one category, every interpolation resolved.

    One Hydra composition per recipe (0.13 s each); the category is then set as the command-line
    override ``dataset.category=...`` would set it (a plain value: per-category values are
    interpolations keyed by it, so they follow as under ``-m dataset.category=...``).
    """
    cfg = copy.deepcopy(_composed(experiment, *overrides))
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.dataset.category = category
    resolved = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key])
        else cfg[key]
        for key in cfg
        if key != "hydra"
    }  # fmt: skip
    return OmegaConf.create(resolved)


def test_category_override_matches_a_full_composition() -> None:
    """The shortcut above gives what ``dataset.category=screw`` on the command line gives."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        direct = compose(
            "train.yaml",
            overrides=["experiment=ddad_mvtec", "dataset.category=screw"],
            return_hydra_config=True,
        )
    HydraConfig().set_config(direct)
    shortcut = _compose("ddad_mvtec", "screw")
    for key in ("model", "dataset", "trainer"):
        assert OmegaConf.to_container(direct[key], resolve=True) == OmegaConf.to_container(
            shortcut[key]
        )


def test_every_trained_method_has_an_mvtec_recipe() -> None:
    untrained = {"pretrained_ddpm"}  # training-free
    methods = {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")} - untrained
    recipes = {p.stem for p in (CONFIG_DIR / "experiment").glob("*_mvtec.yaml")}
    assert {f"{m}_mvtec" for m in methods} <= recipes


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
    assert cfg.model.postprocess.kernel_size == 21 and cfg.model.ssim_weight == 1.0
    assert cfg.model.postprocess.score == "mean_filtered_max" and cfg.model.postprocess.sigma == 0


@pytest.mark.parametrize("variant, epochs", [("code", 700), ("released", 800)])
def test_draem_mvtec_official_code_variant(variant: str, epochs: int) -> None:
    cfg = _compose("draem_mvtec", "bottle", f"draem_variant={variant}")
    assert cfg.trainer.max_epochs == epochs and cfg.model.scheduler.max_epochs == epochs
    assert list(cfg.model.synthesizer.beta_range) == [0.0, 0.8]
    assert len(cfg.model.synthesizer.source_ops) == 10 and cfg.model.rotate_degrees == 90
    assert list(cfg.model.scheduler.milestones) == [0.8, 0.9] and cfg.model.scheduler.gamma == 0.2


# -------------------------------------------------------------------------------------- DDAD
# Official README of arimousa/DDAD @ 4323a15 (shared/methods/ddad.md section 7): w, diffusion
# epochs (released checkpoint), domain-adaptation epochs.
DDAD_MVTEC = {
    "carpet": (0, 2500, 0), "grid": (4, 2000, 6), "leather": (11, 2000, 8), "tile": (4, 1000, 0),
    "wood": (11, 2000, 16), "bottle": (3, 1000, 5), "cable": (3, 3000, 0),
    "capsule": (8, 1500, 8), "hazelnut": (5, 2000, 3), "metal_nut": (7, 3000, 1),
    "pill": (9, 1000, 4), "screw": (2, 2000, 4), "toothbrush": (0, 2000, 2),
    "transistor": (0, 2000, 0), "zipper": (10, 1000, 6),
}  # fmt: skip
DDAD_VISA = {
    "candle": (6, 1000, 1), "capsules": (5, 1000, 3), "cashew": (0, 1750, 0),
    "chewinggum": (6, 1250, 0), "fryum": (4, 1000, 3), "macaroni1": (5, 500, 7),
    "macaroni2": (2, 500, 11), "pcb1": (9, 500, 8), "pcb2": (5, 500, 5), "pcb3": (6, 500, 1),
    "pcb4": (6, 500, 1), "pipe_fryum": (8, 500, 6),
}  # fmt: skip


def _ddad_common(cfg: DictConfig) -> None:
    assert cfg.dataset.image_size == 256 and cfg.dataset.drop_last is True
    assert cfg.model.postprocess.eval_crop == 224  # official: central 224 of map and mask
    assert cfg.model.ratio_mode == "calibrated"  # what the recipe reports (official: batch)
    assert (cfg.model.t_start, cfg.model.num_steps, cfg.model.eta) == (250, 10, 1.0)
    assert cfg.model.map_layers == [1, 2] and cfg.model.postprocess.sigma == 4
    assert cfg.model.feature_extractor.name == "wide_resnet101_2.tv_in1k"
    assert cfg.model.optimizer.lr == 3e-4 and cfg.model.optimizer.weight_decay == 0.05
    assert cfg.model.da_optimizer.lr == 1e-4 and cfg.model.da_w == 3


@pytest.mark.parametrize("category", MVTEC)
def test_ddad_mvtec_recipe(category: str) -> None:
    w, epochs, da_epochs = DDAD_MVTEC[category]
    cfg = _compose("ddad_mvtec", category)
    _ddad_common(cfg)
    assert (cfg.model.w, cfg.model.v, cfg.model.da_lambda) == (w, 1, 0.1)
    assert (cfg.trainer.max_epochs, cfg.dataset.batch_size) == (epochs, 32)
    assert cfg.dataset.eval_batch_size == 16
    da = _compose("ddad_mvtec", category, "model.stage=domain_adaptation")
    assert (da.trainer.max_epochs, da.dataset.batch_size) == (da_epochs, 16)


@pytest.mark.parametrize("category", VISA)
def test_ddad_visa_recipe(category: str) -> None:
    w, epochs, da_epochs = DDAD_VISA[category]
    cfg = _compose("ddad_visa", category)
    _ddad_common(cfg)
    v = 1 if category == "cashew" else 7  # official comment: cashew 1 or 1.5
    assert (cfg.model.w, cfg.model.v, cfg.model.da_lambda) == (w, v, 0.01)
    assert (cfg.trainer.max_epochs, cfg.dataset.batch_size) == (epochs, 32)
    da = _compose("ddad_visa", category, "model.stage=domain_adaptation")
    da_batch = 16 if category in ("macaroni2", "pcb1") else 32
    assert (da.trainer.max_epochs, da.dataset.batch_size) == (da_epochs, da_batch)


# -------------------------------------------------------------------------------------- DMAD
@pytest.mark.parametrize("category", MVTEC)
def test_dmad_mvtec_recipe(category: str) -> None:
    """Train_mvtec.py / test.py of FlappyPeggy/DMAD @ b3fefbb (shared/methods/dmad.md)."""
    cfg = _compose("dmad_mvtec", category)
    assert (cfg.dataset.image_size, cfg.dataset.batch_size, cfg.trainer.max_epochs) == (256, 8, 400)
    assert cfg.seed == 111
    assert cfg.model.w == (0.2 if category in ("screw", "carpet", "metal_nut") else 0.05)
    net = cfg.model.model
    assert net.teacher.name == "wide_resnet50_2.tv_in1k" and net.official_init is True
    assert (net.offset_net.coarse_fraction, net.offset_net.fine_fraction) == (8 / 256, 3 / 256)
    assert (net.num_codes, net.reduce_channels, list(net.decoder_blocks)) == (200, 64, [3, 4, 6])
    assert cfg.model.optimizer.lr == 0.005 and list(cfg.model.optimizer.betas) == [0.5, 0.999]
    assert cfg.model.scheduler.T_max == 400


# ----------------------------------------------------------------------------------- AnoDDPM
@pytest.mark.parametrize("category", MVTEC)
def test_anoddpm_mvtec_recipe(category: str) -> None:
    """args28.json / diffusion_training.py of Julian-Wyatt/AnoDDPM @ 3052f04."""
    cfg = _compose("anoddpm_mvtec", category)
    assert (cfg.dataset.image_size, cfg.dataset.batch_size, cfg.trainer.max_steps) == (
        256,
        1,
        300_000,
    )
    m = cfg.model
    assert (m.t_start, m.sampler, m.train_t_max, m.ema_decay, m.grad_clip_norm) == (
        250,
        "ddpm",
        800,
        0.9999,
        1.0,
    )
    noise = m.noise_scheduler.noise_fn
    assert (noise.octaves, noise.persistence, noise.frequency, noise.std) == (6, 0.8, 128, 0.507)
    assert m.optimizer._target_ == "torch.optim.AdamW" and m.optimizer.lr == 1e-4
    assert list(m.unet.channel_mult) == [1, 1, 2, 2, 4, 4] and m.unet.model_channels == 128


# --------------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("category", MVTEC)
@pytest.mark.parametrize(
    "experiment, size, batch, epochs, lr",
    [
        ("cnn_mvtec", 256, 64, 5, 1e-4),  # seed: batch 128 = 64 normal + 64 synthetic
        ("autoencoder_mvtec", 256, 128, 100, 1e-4),
        ("anogan_mvtec", 64, 64, 200, None),
    ],
)
def test_baseline_mvtec_recipes(
    category: str, experiment: str, size: int, batch: int, epochs: int, lr: float | None
) -> None:
    cfg = _compose(experiment, category)
    assert (cfg.dataset.image_size, cfg.dataset.batch_size, cfg.trainer.max_epochs) == (
        size,
        batch,
        epochs,
    )
    if lr is not None:
        assert cfg.model.optimizer.lr == lr
    else:  # AnoGAN: DCGAN optimisers, Gamma = 500, lambda = 0.1
        assert cfg.model.optimizer_g.lr == 2e-4 and cfg.model.search_steps == 500
        assert cfg.model.lam == 0.1 and cfg.model.generator.image_size == 64
