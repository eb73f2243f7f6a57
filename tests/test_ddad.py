"""DDAD: conditioned sampler, batch-independent scores, domain adaptation, per-category configs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, DETECT_GEN, compose_train, tiny_unet
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning import Trainer

from adlab.backbones import FeatureExtractor
from adlab.cli import train
from adlab.diffusion import DiffusionScheduler, ddad_condition, reconstruct
from adlab.models.ddad import DDADModule, RepeatedNoise
from adlab.postprocess import PostProcessor

SIZE = 32


def _module(stage: str = "diffusion", **kwargs: object) -> DDADModule:
    torch.manual_seed(0)
    unet = tiny_unet(SIZE, num_heads=2, num_head_channels=-1)
    extractor = FeatureExtractor("resnet18", (1, 2, 3), weights=None, allow_random_init=True)
    defaults = dict(t_start=10, num_steps=5, eta=1.0, w=1.0, postprocess=PostProcessor(sigma=1.0))
    return DDADModule(
        unet,
        DiffusionScheduler(20, noise_fn=RepeatedNoise()),
        extractor,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        da_optimizer=partial(torch.optim.AdamW, lr=1e-3),
        stage=stage,
        **{**defaults, **kwargs},
    )


def _equal(first: list[torch.Tensor], second: object) -> list[bool]:
    """Element-wise ``torch.equal`` of two parameter lists."""
    return [torch.equal(a, b) for a, b in zip(first, second, strict=True)]


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_w_zero_is_the_plain_sampler() -> None:
    module = _module().eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    plain = reconstruct(
        x * 2 - 1, 10, module.unet, module.noise_scheduler, 5, "ddim", 1.0, None, _seeded(), False
    )
    torch.testing.assert_close(module.reconstruct(x, x, 0.0, _seeded()), plain)
    hook = ddad_condition(x, 0.0, module.noise_scheduler)
    eps = torch.randn_like(x)
    t = torch.full((2,), 5)
    assert torch.equal(hook(torch.randn_like(x), t, eps, x), eps)


def test_conditioning_pulls_the_reconstruction_toward_the_target() -> None:
    module = _module(eta=0.0).eval()
    x, y = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 3, SIZE, SIZE)
    distances = [
        float((module.reconstruct(x, y, w, _seeded()) - (y * 2 - 1)).abs().mean())
        for w in (0.0, 0.5, 1.0, 1.5)
    ]
    assert distances == sorted(distances, reverse=True) and distances[-1] < 0.5 * distances[0]


@pytest.mark.parametrize("calibrated", [False, True])
def test_scores_do_not_depend_on_the_batch(calibrated: bool) -> None:
    module = _module().eval()
    images = torch.rand(5, 3, SIZE, SIZE)
    if calibrated:
        module.calibrate_pixel_ratio(torch.rand(4, 3, SIZE, SIZE))
        assert torch.isfinite(module.pixel_ratio)
    with torch.no_grad():
        together = module.evaluate_images(images)
        alone = [module.evaluate_images(images[i : i + 1]) for i in range(5)]
        shuffled = module.evaluate_images(images[[3, 0, 4]])
    for i, out in enumerate(alone):
        torch.testing.assert_close(
            out.anomaly_map[0], together.anomaly_map[i], rtol=1e-4, atol=1e-5
        )
    torch.testing.assert_close(
        shuffled.pred_score, together.pred_score[[3, 0, 4]], rtol=1e-4, atol=1e-5
    )
    assert together.anomaly_map.shape == (5, 1, SIZE, SIZE) and together.pred_score.shape == (5,)
    assert together.reconstruction.shape == images.shape


def test_diffusion_step_trains_the_unet_only() -> None:
    module = _module().train()
    loss = module.training_step({"image": torch.rand(4, 3, SIZE, SIZE)}, 0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 3 * SIZE * SIZE * 0.1  # summed over C, H, W
    assert all(p.grad is not None for p in module.unet.parameters())
    assert all(p.grad is None for p in module.feature_extractor.parameters())
    assert list(module.trainable_parameters()) == list(module.unet.parameters())


def test_domain_adaptation_loss_decreases_and_only_phi_changes() -> None:
    module = _module("domain_adaptation").train()
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    images = {"image": torch.rand(4, 3, SIZE, SIZE)}
    unet_before = [p.clone() for p in module.unet.parameters()]
    phi_before = [p.clone() for p in module.feature_extractor.parameters()]
    losses = []
    for step in range(6):
        torch.manual_seed(step)
        loss = module.training_step(images, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(_equal(unet_before, module.unet.parameters()))
    assert all(_equal(phi_before, module.frozen_extractor().parameters()))
    assert not all(_equal(phi_before, module.feature_extractor.parameters()))
    assert module.training_step({"image": torch.rand(1, 3, SIZE, SIZE)}, 0) is None


def test_stages_share_one_state_dict() -> None:
    diffusion, adaptation = _module(), _module("domain_adaptation")
    adaptation.frozen_extractor()
    assert diffusion.state_dict().keys() == adaptation.state_dict().keys()
    assert "pixel_ratio" in diffusion.state_dict()
    adaptation.load_state_dict(diffusion.state_dict())  # strict: what init_from does


def test_bad_stage_and_steps_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="stage"):
        _module("adapt")
    with pytest.raises(ValueError, match="num_steps"):
        _module(t_start=4, num_steps=5)


def test_stages_through_lightning(tmp_path: Path, synthetic_root: Path) -> None:
    """Diffusion fit, then domain adaptation from its weights: the adapted extractor and the
    recalibrated ratio are in the saved checkpoint."""
    cfg = compose_train(tmp_path, synthetic_root, ["model=ddad", "+smoke=ddad"])
    datamodule = instantiate(cfg.dataset)
    fit = partial(
        Trainer,
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    first = instantiate(cfg.model)
    fit().fit(first, datamodule=datamodule)
    assert torch.isfinite(first.pixel_ratio)
    second = instantiate(cfg.model, stage="domain_adaptation")
    second.load_state_dict(first.state_dict())
    trainer = fit()
    trainer.fit(second, datamodule=datamodule)
    trainer.save_checkpoint(tmp_path / "da.ckpt")
    state = torch.load(tmp_path / "da.ckpt", weights_only=True)["state_dict"]  # as trainer.test
    key = "feature_extractor.model.conv_stem.weight"
    assert not torch.equal(state[key], first.state_dict()[key])
    assert not torch.equal(state["pixel_ratio"], first.pixel_ratio)
    assert all(torch.equal(v, state[k]) for k, v in first.state_dict().items() if "unet" in k)


@pytest.mark.parametrize(
    ("experiment", "category", "stage", "expected"),
    [
        ("ddad_mvtec", "bottle", "diffusion", (3, 1, 1000, 32)),
        ("ddad_mvtec", "screw", "domain_adaptation", (2, 1, 4, 16)),
        ("ddad_visa", "pcb1", "domain_adaptation", (9, 7, 8, 16)),
        ("ddad_visa", "candle", "diffusion", (6, 7, 1000, 32)),
    ],
)
def test_experiment_tables_follow_the_category(
    experiment: str, category: str, stage: str, expected: tuple
) -> None:
    overrides = [f"experiment={experiment}", f"dataset.category={category}", f"model.stage={stage}"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides)
        overridden = compose("train.yaml", overrides=[*overrides, "model.w=0.5"])
    got = (cfg.model.w, cfg.model.v, cfg.trainer.max_epochs, cfg.dataset.batch_size)
    assert got == expected and overridden.model.w == 0.5


@pytest.mark.slow
def test_domain_adaptation_stage_runs_from_the_saved_checkpoint(
    tmp_path: Path, detect_root: Path
) -> None:
    """``train.py model=ddad`` then ``model.stage=domain_adaptation init_from=<its ckpt>``: the
    second run starts from the first one's weights, adapts phi, and still detects."""
    base = ["model=ddad", "trainer=smoke", "+smoke=ddad"]
    first = compose_train(tmp_path / "diffusion", detect_root, base, DETECT_GEN)
    HydraConfig().set_config(first)
    train.run(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "model.ckpt"
    overrides = [*base, "model.stage=domain_adaptation", f"init_from={ckpt}"]
    second = compose_train(
        tmp_path / "da", detect_root, [*overrides, "trainer.max_epochs=2"], DETECT_GEN
    )
    HydraConfig().set_config(second)
    results = train.run(second)
    assert results["img_auroc"] >= 0.75, results
    before = torch.load(ckpt, weights_only=False)["state_dict"]
    after = torch.load(
        Path(second.paths.output_dir) / "checkpoints" / "model.ckpt", weights_only=False
    )
    key = "feature_extractor.model.conv_stem.weight"
    assert not torch.equal(before[key], after["state_dict"][key])
    unet = [k for k in before if k.startswith("unet.")]
    assert all(torch.equal(before[k], after["state_dict"][k]) for k in unet)


def test_init_from_refuses_another_model(tmp_path: Path, synthetic_root: Path) -> None:
    source = compose_train(
        tmp_path / "ae",
        synthetic_root,
        [
            "model=autoencoder",
            "trainer=smoke",
            "+smoke=autoencoder",
            "trainer.max_epochs=1",
            "test=false",
        ],
    )
    HydraConfig().set_config(source)
    train.run(source)
    ckpt = Path(source.paths.output_dir) / "checkpoints" / "model.ckpt"
    assert ckpt.is_file()
    cfg = compose_train(
        tmp_path / "ddad", synthetic_root, ["model=ddad", "+smoke=ddad", f"init_from={ckpt}"]
    )
    HydraConfig().set_config(cfg)
    with pytest.raises(ValueError, match="'autoencoder' model, not model=ddad"):
        train.run(cfg)


# ------------------------------------------------------------------ official protocol options
def test_eval_crop_scores_and_measures_inside_the_central_crop() -> None:
    """Official: map and mask cropped to the central window; the input is not cropped."""
    from adlab.metrics import AnomalyMetrics

    module = _module(postprocess=PostProcessor(sigma=1.0, eval_crop=24), ratio_images=0).eval()
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        full = _module(ratio_images=0).eval().evaluate_images(images)
        out = module.evaluate_images(images)
    assert out.anomaly_map.shape == (2, 1, SIZE, SIZE)  # the map covers the whole input
    torch.testing.assert_close(out.anomaly_map, full.anomaly_map)
    inside = full.anomaly_map[..., 4:28, 4:28].flatten(1).amax(dim=1)
    torch.testing.assert_close(out.pred_score, inside)
    seen: dict[str, torch.Tensor] = {}

    class Recorder(AnomalyMetrics):
        def update(self, *args: torch.Tensor | None) -> None:
            seen["map"], seen["mask"] = args[2], args[3]

    mask = torch.zeros(2, 1, SIZE, SIZE)
    batch = {"image": images, "gt_mask": mask, "gt_label": torch.tensor([0, 1])}
    with torch.no_grad():
        returned = module._eval_step(batch, Recorder())
    assert seen["map"].shape == seen["mask"].shape == (2, 1, 24, 24)
    assert returned["anomaly_map"].shape == (2, 1, SIZE, SIZE)  # pictures keep the whole map


def test_batch_ratio_mode_is_the_official_batch_wide_maximum() -> None:
    module = _module(ratio_mode="batch").eval()
    images = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        x0 = module.reconstruct(images, images, 1.0, _seeded())
        d_f, d_p = module.distances(images, x0)
        expected = d_f + (d_f.max() / d_p.max()) * d_p
        torch.testing.assert_close(module.anomaly_map(images, x0), expected)
    with pytest.raises(ValueError, match="ratio_mode"):
        _module(ratio_mode="test_set")


def test_domain_adaptation_draws_noise_per_image() -> None:
    """The official DA reconstructions use i.i.d. noise per image, not one shared draw."""
    module = _module("domain_adaptation")
    seen: list[torch.Tensor] = []
    base = module.noise_scheduler.noise_fn.base

    def recording(like: torch.Tensor, t: object = None, generator: object = None) -> torch.Tensor:
        noise = base(like, t, generator)
        seen.append(noise)
        return noise

    module.noise_scheduler.noise_fn.base = recording
    module._adaptation_step(torch.rand(4, 3, SIZE, SIZE))
    assert seen and all(n.shape[0] == 2 for n in seen)  # drawn for both images of the half-batch
    assert not torch.equal(seen[0][0], seen[0][1])
    assert isinstance(module.noise_scheduler.noise_fn, RepeatedNoise)  # restored afterwards


def test_training_loader_drops_the_last_partial_batch(synthetic_root: Path) -> None:
    from adlab.data import SyntheticDataModule

    kwargs = dict(root=str(synthetic_root), category="weave", image_size=32, batch_size=5)
    kwargs |= {"gen_image_size": 32, "n_train": 16, "n_test_good": 4, "n_test_per_defect": 2}
    for drop_last, batches in [(False, 4), (True, 3)]:  # 16 images, batch 5
        dm = SyntheticDataModule(**kwargs, drop_last=drop_last)
        dm.setup("fit")
        assert len(dm.train_dataloader()) == batches


def test_ema_copy_is_frozen_and_follows_the_unet_in_the_diffusion_stage_only() -> None:
    module = _module(ema_decay=0.999)
    assert module.ema is not None
    assert not any(p.requires_grad for p in module.ema.parameters())
    assert module.ema_source() is module.unet and module.sampling_unet() is module.ema.module
    assert _module("domain_adaptation", ema_decay=0.999).ema_source() is None
