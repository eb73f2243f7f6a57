"""Bad values fail when the objects are built (before any training), naming key, value and
what is allowed (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_train, tiny_unet
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import open_dict

from adlab.backbones import FeatureExtractor
from adlab.cli import train
from adlab.diffusion import DiffusionScheduler
from adlab.models.anoddpm import AnoDDPMModule
from adlab.models.ddad import DDADModule, RepeatedNoise
from adlab.models.pretrained_ddpm import PretrainedDDPMModule


def _built_error(node: object) -> str:
    """The message a config node's instantiation fails with (Hydra wraps the ValueError)."""
    with pytest.raises(InstantiationException) as err:
        instantiate(node)
    assert isinstance(err.value.__cause__, ValueError)
    return str(err.value.__cause__)


def test_unet_size_that_does_not_divide_fails_at_construction(
    tmp_path: Path, synthetic_root: Path
) -> None:
    """``dataset.image_size=100 model=ddad`` (6 levels: /32) used to die in the first forward."""
    cfg = compose_train(tmp_path, synthetic_root, ["model=ddad"])
    with open_dict(cfg):
        cfg.dataset.image_size = 100
    assert _built_error(cfg.model.unet) == (
        "dataset.image_size=100: the UNet (model.unet.channel_mult, 6 levels) halves its input "
        "5 times, so every side must be divisible by 32; 100 is not (use 96 or 128)"
    )
    with pytest.raises(ValueError) as err:
        tiny_unet([16])
    assert str(err.value) == "dataset.image_size=[16]: expected a positive size S or [H, W]"


def test_non_square_image_size_runs(tmp_path: Path, synthetic_root: Path) -> None:
    """``dataset.image_size=[H, W]`` used to be a TypeError in the UNet: now supported."""
    overrides = ["model=anoddpm", "+smoke=anoddpm", "model.t_start=3", "model.num_steps=3"]
    cfg = compose_train(tmp_path, synthetic_root, overrides)
    with open_dict(cfg):
        cfg.dataset.image_size = [32, 64]
    module = instantiate(cfg.model).eval()
    with torch.no_grad():
        out = module.evaluate_images(torch.rand(2, 3, 32, 64))
    assert out.anomaly_map.shape == (2, 1, 32, 64) and out.pred_score.isfinite().all()


def test_scheduler_variance_type_typo(tmp_path: Path, synthetic_root: Path) -> None:
    overrides = ["model=anoddpm", "model.noise_scheduler.variance_type=fixed_smal"]
    cfg = compose_train(tmp_path, synthetic_root, overrides)
    assert _built_error(cfg.model.noise_scheduler) == (
        "noise_scheduler.variance_type='fixed_smal': expected one of fixed_large, fixed_small"
    )


@pytest.mark.parametrize(
    "sampler, num_steps, message",
    [
        (
            "ddpm",
            2,
            "model.sampler=ddpm takes every step from model.t_start=5, so model.num_steps must "
            "be null or 5, got 2; for skipped ancestral steps use model.sampler=ddim model.eta=1",
        ),
        ("ddim", 6, "model.num_steps=6: expected null or 1 .. model.t_start (5)"),
        ("euler", None, "model.sampler='euler': expected one of ddim, ddpm"),
    ],
)
def test_anoddpm_sampler_and_steps_fail_at_construction(
    sampler: str, num_steps: int | None, message: str
) -> None:
    scheduler = DiffusionScheduler(20)
    with pytest.raises(ValueError) as err:
        AnoDDPMModule(tiny_unet(), scheduler, t_start=5, sampler=sampler, num_steps=num_steps)
    assert str(err.value) == message


def test_ddad_map_layers_fail_at_construction() -> None:
    extractor = FeatureExtractor("resnet18", (1, 2, 3), weights=None, allow_random_init=True)
    scheduler = DiffusionScheduler(20, noise_fn=RepeatedNoise())
    with pytest.raises(ValueError) as err:
        DDADModule(tiny_unet(), scheduler, extractor, t_start=10, num_steps=5, map_layers=[1, 3])
    assert str(err.value) == (
        "model.map_layers=[1, 3]: positions in the feature extractor's 3 maps "
        "(model.feature_extractor.out_indices); expected a non-empty list of values in 0 .. 2"
    )


def test_experiment_for_another_dataset_is_refused(tmp_path: Path, synthetic_root: Path) -> None:
    """``experiment=ddad_mvtec dataset=visa`` used to run MVTec's values on VisA silently."""
    cfg = compose_train(tmp_path, synthetic_root, ["experiment=ddad_mvtec", "dataset=visa"])
    with pytest.raises(ValueError) as err:
        train.run(cfg)
    assert str(err.value) == (
        "experiment=ddad_mvtec is made for dataset=mvtec (its per-category values and "
        "protocol), got dataset=visa; use an experiment made for visa or drop the dataset= "
        "override"
    )
    assert not (tmp_path / "run").exists()  # refused before anything was built or written
    train.check_experiment(compose_train(tmp_path, synthetic_root, ["experiment=ddad_visa"]))


def test_pretrained_ddpm_input_size_is_checked_at_construction() -> None:
    """Its UNet keeps the checkpoint's flags; the images' size (``input_size`` =
    ``dataset.image_size``) must still pass through its down-sampling."""
    with pytest.raises(ValueError) as err:
        PretrainedDDPMModule(
            lambda: tiny_unet(),
            DiffusionScheduler(100),
            t_start=20,
            num_steps=4,
            random_init=True,
            input_size=21,
        )
    assert str(err.value) == (
        "dataset.image_size=21: the UNet (model.unet.channel_mult, 2 levels) halves its input "
        "1 times, so every side must be divisible by 2; 21 is not (use 20 or 22)"
    )
