"""Post-processing techniques (foreground masks, registration) and ``evaluate.py`` end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CONFIG_DIR, compose_train
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from kornia.geometry.transform import get_rotation_matrix2d, warp_affine
from omegaconf import OmegaConf, open_dict
from PIL import Image

from adlab.checkpoint import restore
from adlab.cli import evaluate, train
from adlab.data.synthetic import render_sample
from adlab.postprocess import PostProcessor, mask_map
from adlab.postprocess.foreground import estimate_foreground_mask, load_mask
from adlab.postprocess.registration import Registrator, to_pixel_homography, warp
from adlab.postprocess.techniques import ForegroundMasking, Registration
from adlab.types import AnomalyOutput


def _disc_images(n: int, size: int = 48, radius: float = 13.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images of a shaded orange disc on grey, and the disc's ``(1, 1, S, S)`` mask."""
    g = torch.Generator().manual_seed(0)
    axis = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    dist = torch.hypot(xx - size / 2, yy - size / 2)
    disc = (dist <= radius).float()
    shade = 0.8 + 0.2 * torch.cos(xx / 3) * torch.sin(yy / 4)  # texture on the object
    colour = torch.tensor([0.9, 0.55, 0.2])[:, None, None] * shade
    grey = torch.full((3, 1, 1), 0.25)
    image = disc * colour + (1 - disc) * grey
    images = (image + 0.02 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return images, disc[None, None]


def test_foreground_mask_of_a_disc_matches_the_disc() -> None:
    images, truth = _disc_images(8)
    mask = estimate_foreground_mask(images, margin=0)
    assert mask.shape == (1, 1, 48, 48)
    iou = (mask * truth).sum() / ((mask + truth) > 0).sum()
    assert iou > 0.95
    assert mask[0, 0, :3].sum() == 0 and mask[0, 0, 24, 24] == 1
    dilated = estimate_foreground_mask(images, margin=2)
    assert dilated.sum() > mask.sum() and (dilated >= mask).all()


def test_masking_zeros_the_background_of_a_map() -> None:
    images, truth = _disc_images(8)
    amap = torch.rand(3, 1, 48, 48) + 0.1
    masked = mask_map(amap, truth)
    assert (masked[:, :, truth[0, 0] == 0] == 0).all()
    assert torch.equal(masked[:, :, truth[0, 0] == 1], amap[:, :, truth[0, 0] == 1])
    technique = ForegroundMasking(margin=0)
    technique.fit(images)
    out = technique.apply(AnomalyOutput(amap), PostProcessor(score="max"), (48, 48))
    assert out.anomaly_map[:, :, 0, 0].eq(0).all()
    assert torch.equal(out.pred_score, out.anomaly_map.flatten(1).amax(1))
    # the model's own rule scores the masked map (mean: the background zeros count)
    mean = technique.apply(AnomalyOutput(amap), PostProcessor(score="mean"), (48, 48))
    torch.testing.assert_close(mean.pred_score, (amap * truth).flatten(1).mean(1))
    with pytest.raises(ValueError, match="does not match"):
        mask_map(amap, truth[..., :20, :20])


def test_user_mask_image_is_read_and_resized(tmp_path: Path) -> None:
    arr = torch.zeros(64, 64, dtype=torch.uint8)
    arr[16:48, 8:40] = 255
    Image.fromarray(arr.numpy()).save(tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", (32, 32))
    assert mask.shape == (1, 1, 32, 32) and mask.sum() == 16 * 16
    assert mask[0, 0, 8, 4] == 1 and mask[0, 0, 0, 0] == 0
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_mask(tmp_path / "nope.png", (32, 32))
    # with the data module's centre crop: resized to 32, then the central 16 x 16 window, whose
    # object pixels are rows 0-15 and columns 0-11 (the object spans rows 8-23, columns 4-19)
    cropped = load_mask(tmp_path / "mask.png", (32, 32), center_crop=16)
    assert cropped.shape == (1, 1, 16, 16) and cropped.sum() == 16 * 12
    assert cropped[0, 0, :, :12].all() and not cropped[0, 0, :, 12:].any()


def _moved(size: int, angle: float, shift: tuple[float, float]) -> tuple[torch.Tensor, ...]:
    """A synthetic disc image, a copy rotated by ``angle`` degrees and shifted by ``shift`` px,
    and the ``(1, 2, 3)`` pixel transform (reference -> moved coordinates)."""
    _, reference, _ = render_sample("disc", "good", size, torch.Generator().manual_seed(3))
    centre = torch.tensor([[(size - 1) / 2, (size - 1) / 2]])
    matrix = get_rotation_matrix2d(centre, torch.tensor([angle]), torch.ones(1, 2))
    matrix[:, :, 2] += torch.tensor(shift)
    moved = warp_affine(reference[None], matrix, (size, size), padding_mode="border")
    return reference[None], moved, matrix


def test_registration_recovers_a_known_rotation_and_shift() -> None:
    size = 48
    reference, moved, matrix = _moved(size, angle=5.0, shift=(2.5, -1.5))
    src_homo_dst = Registrator("similarity", num_iterations=80).estimate(moved, reference)
    pixel = to_pixel_homography(src_homo_dst, (size, size))[0]
    grid = torch.tensor([[x, y, 1.0] for x in (8, 24, 39) for y in (8, 24, 39)]).T
    estimated = pixel @ grid
    error = (estimated[:2] / estimated[2:] - matrix[0] @ grid).norm(dim=0)
    assert error.max() < 0.5  # pixels, at 5 degrees and 3 px of motion
    aligned = warp(moved, src_homo_dst)
    inner = (..., slice(6, -6), slice(6, -6))
    before = (moved - reference).abs()[inner].mean()
    after = (aligned - reference).abs()[inner].mean()
    assert after < 0.35 * before


def test_registration_technique_aligns_a_shifted_image_and_caches_it() -> None:
    reference, moved, _ = _moved(48, angle=0.0, shift=(3.0, 2.0))
    technique = Registration(num_iterations=60)
    technique.fit(torch.cat([reference, moved]))  # reference_index 0
    transforms = technique.transforms(moved, ["a.png"])
    aligned = warp(moved, transforms)
    inner = (..., slice(6, -6), slice(6, -6))
    assert (aligned - reference).abs()[inner].mean() < 0.3 * (moved - reference).abs()[inner].mean()
    assert technique.transforms(moved * 0, ["a.png"]).equal(transforms)  # cached by key


# ------------------------------------------------------------------ evaluate.py end to end
@pytest.fixture(scope="module")
def disc_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> dict:
    """A 2-epoch AutoEncoder run on the synthetic object keeping every epoch's checkpoint."""
    tmp = tmp_path_factory.mktemp("disc_run")
    overrides = ["trainer=smoke", "+smoke=autoencoder", "dataset.category=disc"]
    overrides += ["trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1"]
    overrides += ["callbacks.model_checkpoint.filename='{epoch}'", "logger=none"]
    overrides += ["callbacks.sample_visualizer=null"]
    cfg = compose_train(tmp, synthetic_root, overrides)
    HydraConfig().set_config(cfg)
    results = train.run(cfg)
    return {"run_dir": Path(cfg.paths.output_dir), "results": results, "tmp": tmp}


def _eval_cfg(out: Path, overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("evaluate.yaml", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(out)
        cfg.device = "cpu"
    return cfg


def _check_checkpoint_rows(written: pd.DataFrame) -> None:
    """epoch=1.ckpt and the final model.ckpt hold the same weights (epoch 1's): same numbers."""
    steps = written.groupby(written.ckpt_path.map(lambda p: Path(p).stem)).global_step.first()
    assert steps["epoch=0"] < steps["epoch=1"] == steps["model"]
    none = written[written.technique == "none"]
    none = none.set_index(none.ckpt_path.map(lambda p: Path(p).stem))
    for column in ("img_auc", "pixel_auc", "pixel_aupro", "pixel_f1max", "img_f1max"):
        assert none.loc["epoch=1", column] == pytest.approx(none.loc["model", column]), column


def test_evaluate_every_checkpoint_of_a_run(disc_run: dict, tmp_path: Path) -> None:
    run_dir = disc_run["run_dir"]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == [
        "epoch=0.ckpt",
        "epoch=1.ckpt",
        "model.ckpt",
    ]
    overrides = [f"ckpt={run_dir}", "techniques.foreground=null", "techniques.registration=null"]
    overrides += ["techniques.smoothing.sigmas=[2]"]
    table = evaluate.run(_eval_cfg(tmp_path, overrides))
    written = pd.read_csv(tmp_path / "evaluation.csv")
    assert len(written) == len(table) == 6
    assert sorted(set(written.technique)) == ["none", "sigma_2"]
    assert sorted(set(Path(p).name for p in written.ckpt_path)) == [
        "epoch=0.ckpt",
        "epoch=1.ckpt",
        "model.ckpt",
    ]
    assert list(written.columns[:7]) == [
        "model",
        "dataset",
        "category",
        "category_type",
        "technique",
        "img_auc",
        "pixel_auc",
    ]
    assert (written.category == "disc").all()
    _check_checkpoint_rows(written)
    # "none" on the final checkpoint reproduces the test run; smoothing changes the maps
    final = written[written.ckpt_path.str.endswith("model.ckpt")].set_index("technique")
    assert final.loc["none", "img_auc"] == pytest.approx(disc_run["results"]["img_auroc"])
    assert final.loc["none", "pixel_auc"] == pytest.approx(disc_run["results"]["pixel_auroc"])
    assert final.loc["sigma_2", "pixel_auc"] != final.loc["none", "pixel_auc"]
    for png in [*written.roc_png, *written.pr_png]:
        path = tmp_path / png
        assert path.suffix == ".png" and 2_000 < path.stat().st_size < 100_000
    assert not (tmp_path / "maps").exists()  # no maps by default


def test_evaluate_foreground_and_registration_on_a_glob(disc_run: dict, tmp_path: Path) -> None:
    pattern = str(disc_run["run_dir"] / "checkpoints" / "model*.ckpt")
    overrides = [f"ckpt='{pattern}'", "techniques.none=null", "techniques.smoothing=null"]
    overrides += ["techniques.registration.num_iterations=30", "save_maps=true"]
    cfg = _eval_cfg(tmp_path, overrides)
    table = evaluate.run(cfg)
    assert list(table.technique) == ["foreground", "registration"]
    assert not math.isnan(table.pixel_aupro.iloc[0])
    foreground = torch.load(next((tmp_path / "maps").rglob("foreground.pt")))
    registered = torch.load(next((tmp_path / "maps").rglob("registration.pt")))
    assert registered["anomaly_map"].dtype == torch.float16
    assert registered["anomaly_map"].shape[1:] == (1, 32, 32)
    # foreground: nothing outside the object mask (estimated as evaluate.py does) is anomalous
    final = disc_run["run_dir"] / "checkpoints" / "model.ckpt"
    datamodule = instantiate(OmegaConf.create(restore(final).meta["dataset_cfg"]))
    datamodule.setup("test")
    technique = instantiate(cfg.techniques.foreground)
    technique.fit(datamodule.first_train_images(cfg.max_train_images))
    outside = (technique.mask == 0).expand_as(foreground["anomaly_map"])
    assert outside.any() and (foreground["anomaly_map"][outside] == 0).all()
    # each score is the model's rule (max) on the saved map: map and score agree
    for maps in (foreground, registered):
        top = maps["anomaly_map"].float().flatten(1).amax(1)
        torch.testing.assert_close(maps["pred_score"], top, atol=2e-3, rtol=1e-3)


def test_find_checkpoints_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        evaluate.find_checkpoints(str(tmp_path / "missing.ckpt"))
    with pytest.raises(FileNotFoundError, match=r"\*\.ckpt"):
        evaluate.find_checkpoints(str(tmp_path / "*.ckpt"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="matched no .ckpt"):
        evaluate.find_checkpoints(str(tmp_path / "run"))
