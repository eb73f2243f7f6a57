"""Tests of the synthetic dataset generator and its DataModule."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from adlab.data import SYNTHETIC_CATEGORIES, DatasetError, SyntheticDataModule, generate_category
from adlab.data.synthetic import DEFECT_TYPES, NOISE_STD, render_sample
from adlab.types import GT_MASK, IMAGE

TINY = {"image_size": 16, "n_train": 2, "n_test_good": 1, "n_test_per_defect": 1}


def _files(category_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(category_dir)): p.read_bytes()
        for p in sorted(category_dir.rglob("*"))
        if p.is_file()
    }


def test_fixture_layout(synthetic_root: Path) -> None:
    for category, defects in DEFECT_TYPES.items():
        base = synthetic_root / category
        assert len(list((base / "train" / "good").glob("*.png"))) == 16
        assert len(list((base / "test" / "good").glob("*.png"))) == 4
        for defect in defects:
            stems = sorted(p.stem for p in (base / "test" / defect).glob("*.png"))
            masks = sorted(p.stem for p in (base / "ground_truth" / defect).glob("*.png"))
            assert len(stems) == 2 and masks == [f"{s}_mask" for s in stems]
        assert json.loads((base / "meta.json").read_text())["image_size"] == 32
    assert set(SYNTHETIC_CATEGORIES.values()) == {"texture", "object"}


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = generate_category(tmp_path / "a", "disc", seed=3, **TINY)
    b = generate_category(tmp_path / "b", "disc", seed=3, **TINY)
    c = generate_category(tmp_path / "c", "disc", seed=4, **TINY)
    files_a = _files(a)
    assert len(files_a) == 2 + 1 + 2 * 4 + 1 and files_a == _files(b)
    files_c = _files(c)
    images = [k for k in files_a if k.endswith(".png")]
    assert all(files_a[k] != files_c[k] for k in images if "train" in k)


def test_generation_is_idempotent_and_checks_params(tmp_path: Path) -> None:
    target = generate_category(tmp_path, "weave", **TINY)
    stamp = (target / "meta.json").stat().st_mtime_ns
    assert generate_category(tmp_path, "weave", **TINY) == target
    assert (target / "meta.json").stat().st_mtime_ns == stamp
    with pytest.raises(DatasetError, match=r"other parameters.*n_train.*delete the folder"):
        generate_category(tmp_path, "weave", **{**TINY, "n_train": 3})
    (tmp_path / "disc").mkdir()
    with pytest.raises(DatasetError, match="no meta.json.*delete it or choose another root"):
        generate_category(tmp_path, "disc", **TINY)
    with pytest.raises(DatasetError, match="'nut'.*available: weave, disc"):
        generate_category(tmp_path, "nut")


def _generate_after(barrier: multiprocessing.synchronize.Barrier, root: Path) -> None:
    barrier.wait()
    generate_category(root, "disc", **TINY)


def test_concurrent_generation(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_generate_after, args=(barrier, tmp_path)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["disc"]
    assert _files(tmp_path / "disc") == _files(generate_category(tmp_path / "ref", "disc", **TINY))


@pytest.mark.parametrize("category", list(SYNTHETIC_CATEGORIES))
def test_defects_visible_and_localised(category: str) -> None:
    generator = torch.Generator().manual_seed(0)
    clean, image, mask = render_sample(category, "good", 48, generator)
    assert torch.equal(clean, image) and mask.sum() == 0
    for defect in DEFECT_TYPES[category]:
        for _ in range(6):
            clean, image, mask = render_sample(category, defect, 48, generator)
            inside = mask.bool().expand(3, -1, -1)
            assert mask.sum() > 0
            assert (image - clean).abs()[inside].mean() > 2 * NOISE_STD, defect
            if defect != "missing":  # a cut also nudges partly covered rim pixels
                assert torch.equal(image[~inside], clean[~inside]), defect


@pytest.mark.parametrize("category", list(SYNTHETIC_CATEGORIES))
def test_trivial_detector_is_not_perfect(tmp_path: Path, category: str) -> None:
    """Scoring by the deviation of the image mean from the training mean must not solve it."""
    dm = SyntheticDataModule(
        str(tmp_path),
        category,
        image_size=32,
        gen_image_size=32,
        n_train=8,
        n_test_good=12,
        n_test_per_defect=4,
    )
    dm.setup()
    train_mean = torch.stack([item[IMAGE] for item in dm.train_dataset]).mean()
    test = [dm.test_dataset[i] for i in range(len(dm.test_dataset))]
    scores = [(item[IMAGE].mean() - train_mean).abs().item() for item in test]
    assert roc_auc_score(dm.test_dataset.labels, scores) < 0.9


def test_synthetic_datamodule(tmp_path: Path) -> None:
    kwargs = {"image_size": 16, "gen_image_size": 16, "n_train": 2, "n_test_good": 2}
    dm = SyntheticDataModule(
        str(tmp_path), "disc", n_test_per_defect=2, val_split="from_test", **kwargs
    )
    assert dm.name == "synthetic" and dm.category_type == "object"
    dm.setup()  # generates the missing folder
    assert (tmp_path / "disc" / "meta.json").is_file()
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == len(dm.test_dataset) == 5
    assert next(iter(dm.test_dataloader()))[GT_MASK].shape[1:] == (1, 16, 16)
    assert SyntheticDataModule(str(tmp_path), "weave").category_type == "texture"
    with pytest.raises(DatasetError, match="'nut'.*available: weave, disc"):
        SyntheticDataModule(str(tmp_path), "nut")
    single = SyntheticDataModule(
        str(tmp_path / "one"),
        "disc",
        n_test_per_defect=1,
        val_split="from_test",
        **{**kwargs, "n_test_good": 1},
    )
    with pytest.raises(DatasetError, match="val_split='from_test' left no validation images"):
        single.setup()
