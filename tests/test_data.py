"""Tests of the MVTec-layout Dataset/DataModule and image I/O (tiny files, CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adlab.data import DatasetError, MVTecLayoutDataModule
from adlab.data.io import read_image, read_mask
from adlab.types import DEFECT_TYPE, GT_LABEL, GT_MASK, HAS_MASK, IMAGE, IMAGE_PATH

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _png(path: Path, array: np.ndarray | None = None, mode: str | None = None) -> Path:
    """Write ``array`` (default: an 8x8 random RGB image) as a PNG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.random.default_rng(len(str(path))).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _mask_array(fill: int = 255) -> np.ndarray:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:5, 3:6] = fill
    return mask


def _layout(root: Path, category: str = "widget", masks: bool = True) -> Path:
    """``root/category`` with 3 train images, 2 good and 2 ``crack`` test images (with masks)."""
    base = root / category
    for i in range(3):
        _png(base / "train" / "good" / f"{i}.png")
    for i in range(2):
        _png(base / "test" / "good" / f"{i}.png")
        _png(base / "test" / "crack" / f"{i}.png")
        if masks:
            _png(base / "ground_truth" / "crack" / f"{i}_mask.png", _mask_array())
    return base


def _setup(root: Path, category: str = "widget", **kwargs) -> MVTecLayoutDataModule:
    kwargs.setdefault("image_size", 8)
    dm = MVTecLayoutDataModule(root=str(root), category=category, **kwargs)
    dm.setup()
    return dm


# --- layout, items and batches -------------------------------------------------------------------


def test_synthetic_layout_counts_labels_types(synthetic_root: Path) -> None:
    dm = _setup(synthetic_root, "disc", name="synthetic")
    assert len(dm.train_dataset) == 16 and set(dm.train_dataset.labels) == {0}
    test = dm.test_dataset
    assert len(test) == 4 + 4 * 2 and test.labels.count(0) == 4
    types = [s.defect_type for s in test.samples]
    assert sorted(set(types)) == ["good", "hole", "missing", "scratch", "stain"]
    assert all((s.label == 0) == (s.defect_type == "good") for s in test.samples)
    assert dm.val_dataset is None and dm.val_dataloader() == []


def test_collated_batch_shapes_dtypes_ranges(synthetic_root: Path) -> None:
    dm = MVTecLayoutDataModule(
        str(synthetic_root), "weave", image_size=24, batch_size=4, eval_batch_size=16
    )
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    n = len(dm.test_dataset)
    assert batch[IMAGE].shape == (n, 3, 24, 24) and batch[IMAGE].dtype == torch.float32
    assert batch[IMAGE].min() >= 0.0 and batch[IMAGE].max() <= 1.0
    assert batch[GT_MASK].shape == (n, 1, 24, 24) and batch[GT_MASK].dtype == torch.float32
    assert set(batch[GT_MASK].unique().tolist()) <= {0.0, 1.0}
    assert batch[GT_LABEL].dtype == torch.int64 and batch[GT_LABEL].shape == (n,)
    assert batch[HAS_MASK].dtype == torch.bool and bool(batch[HAS_MASK].all())
    assert isinstance(batch[IMAGE_PATH][0], str) and isinstance(batch[DEFECT_TYPE][0], str)
    per_image = batch[GT_MASK].sum(dim=(1, 2, 3))
    assert bool((per_image[batch[GT_LABEL] == 0] == 0).all())
    assert bool((per_image[batch[GT_LABEL] == 1] > 0).all())
    train = next(iter(dm.train_dataloader()))
    assert train[IMAGE].shape == (4, 3, 24, 24) and bool((train[GT_LABEL] == 0).all())


def test_mask_aligned_with_image(synthetic_root: Path) -> None:
    """At native size masks match their files; holes are darker than their surroundings."""
    dm = _setup(synthetic_root, "weave", image_size=32)
    for item in (dm.test_dataset[i] for i in range(len(dm.test_dataset))):
        if item[DEFECT_TYPE] == "good":
            continue
        stem = Path(item[IMAGE_PATH]).stem
        mask_file = (
            synthetic_root / "weave" / "ground_truth" / item[DEFECT_TYPE] / f"{stem}_mask.png"
        )
        assert torch.equal(item[GT_MASK], read_mask(mask_file))
        if item[DEFECT_TYPE] == "hole":
            inside = item[GT_MASK].bool().expand(3, -1, -1)
            assert item[IMAGE][inside].mean() < item[IMAGE][~inside].mean() - 0.1


def test_resize_tuple_and_center_crop(tmp_path: Path) -> None:
    _layout(tmp_path)
    dm = MVTecLayoutDataModule(str(tmp_path), "widget", image_size=(16, 12), center_crop=10)
    dm.setup()
    item = dm.test_dataset[0]
    assert (
        item[DEFECT_TYPE] == "crack"
        and item[IMAGE].shape == (3, 10, 10)
        and item[GT_MASK].shape == (1, 10, 10)
    )
    assert item[GT_MASK].sum() > 0
    assert MVTecLayoutDataModule(str(tmp_path), "w", image_size=[6, 4]).image_size == (6, 4)


def test_hidden_and_non_image_files_ignored(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    (base / "train" / "good" / "notes.txt").write_text("not an image")
    (base / "train" / "good" / ".DS_Store").write_bytes(b"\0\1")
    _png(base / "train" / "good" / ".hidden.png")
    (base / "test" / ".cache").mkdir()
    (tmp_path / ".trash").mkdir()
    dm = _setup(tmp_path)
    assert len(dm.train_dataset) == 3 and len(dm.test_dataset) == 4


# --- validation splits and category types --------------------------------------------------------


def test_val_split_from_train(synthetic_root: Path) -> None:
    dm = _setup(synthetic_root, "weave", val_split="from_train", val_fraction=0.25)
    assert len(dm.val_dataset) == 4 and len(dm.train_dataset) == 12
    assert set(dm.val_dataset.labels) == {0}
    val_paths = {s.image_path for s in dm.val_dataset.samples}
    assert not val_paths & {s.image_path for s in dm.train_dataset.samples}
    again = _setup(synthetic_root, "weave", val_split="from_train", val_fraction=0.25)
    assert val_paths == {s.image_path for s in again.val_dataset.samples}
    assert len(dm.test_dataset) == 4 + 3 * 2
    assert len(next(iter(dm.val_dataloader()))[IMAGE]) == 4


def test_val_split_from_test_is_stratified_and_seeded(synthetic_root: Path) -> None:
    dm = _setup(synthetic_root, "disc", val_split="from_test", val_fraction=0.5, seed=1)
    val, test = dm.val_dataset.samples, dm.test_dataset.samples
    assert len(val) + len(test) == 12 and not {s.image_path for s in val} & {
        s.image_path for s in test
    }
    for defect_type in ("good", "hole", "missing", "scratch", "stain"):
        assert any(s.defect_type == defect_type for s in val)
        assert any(s.defect_type == defect_type for s in test)
    assert {0, 1} <= set(dm.val_dataset.labels) and len(dm.train_dataset) == 16
    same = _setup(synthetic_root, "disc", val_split="from_test", val_fraction=0.5, seed=1)
    other = _setup(synthetic_root, "disc", val_split="from_test", val_fraction=0.5, seed=2)
    assert same.val_dataset.samples == val
    assert other.val_dataset.samples != val


def test_val_split_same_as_test(synthetic_root: Path) -> None:
    dm = _setup(synthetic_root, "disc", val_split="same_as_test")
    assert dm.val_dataset is dm.test_dataset and len(dm.val_dataset) == 12


def test_category_type_rules() -> None:
    def category_type(category: str, **kwargs) -> str:
        return MVTecLayoutDataModule("/nowhere", category, **kwargs).category_type

    assert category_type("carpet") == "texture" and category_type("wood") == "texture"
    assert category_type("bottle") == "object" and category_type("magnetic_tile") == "object"
    assert category_type("magnetic_tile", category_type="texture") == "texture"
    with pytest.raises(DatasetError, match="category_type='fabric'.*texture, object"):
        category_type("x", category_type="fabric")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"val_split": "random"}, "val_split='random'.*from_train"),
        ({"val_fraction": 1.5}, r"val_fraction=1.5.*\(0, 1\)"),
        ({"image_size": 0}, "image_size=0"),
        ({"image_size": 16, "center_crop": 20}, "center_crop=20"),
    ],
)
def test_invalid_options(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DatasetError, match=pattern):
        MVTecLayoutDataModule("/nowhere", "x", **kwargs)


# --- bad layouts ---------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"{tmp_path / 'absent'} does not exist"):
        _setup(tmp_path / "absent")


def test_unknown_category_lists_available(tmp_path: Path) -> None:
    _layout(tmp_path, "bolt")
    _layout(tmp_path, "nut")
    with pytest.raises(DatasetError, match="'screw' not found.*available categories: bolt, nut"):
        _setup(tmp_path, "screw")


def test_missing_train_good(tmp_path: Path) -> None:
    (tmp_path / "widget" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"train/good does not exist.*\.png, \.jpg"):
        _setup(tmp_path)


def test_empty_train_good(tmp_path: Path) -> None:
    good = tmp_path / "widget" / "train" / "good"
    good.mkdir(parents=True)
    (good / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"train/good is empty.*\.png, \.jpg, \.jpeg"):
        _setup(tmp_path)


def test_missing_test_folder(tmp_path: Path) -> None:
    _png(tmp_path / "widget" / "train" / "good" / "0.png")
    with pytest.raises(DatasetError, match=f"Missing test folder {tmp_path / 'widget' / 'test'}"):
        _setup(tmp_path)


def test_corrupt_image_named_at_setup(tmp_path: Path) -> None:
    bad = _layout(tmp_path) / "test" / "crack" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DatasetError, match=f"Cannot read image file {bad}"):
        _setup(tmp_path)


def test_decode_error_names_file(tmp_path: Path) -> None:
    dm = _setup(_layout(tmp_path).parent)
    path = dm.train_dataset.samples[0].image_path
    path.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=f"Cannot decode image file {path}"):
        dm.train_dataset[0]


def test_missing_masks_listed_unless_allowed(tmp_path: Path) -> None:
    base = _layout(tmp_path, masks=False)
    with pytest.raises(DatasetError, match=r"2 anomalous .*crack/0\.png.*allow_missing_masks=true"):
        _setup(tmp_path)
    _png(base / "ground_truth" / "crack" / "0_mask.png", _mask_array())
    dm = _setup(tmp_path, allow_missing_masks=True)
    items = {Path(it[IMAGE_PATH]).name: it for it in dm.test_dataset if it[DEFECT_TYPE] == "crack"}
    assert items["0.png"][HAS_MASK] and items["0.png"][GT_MASK].sum() == 9
    assert not items["1.png"][HAS_MASK] and items["1.png"][GT_LABEL] == 1
    assert items["1.png"][GT_MASK].sum() == 0


# --- loading edge cases --------------------------------------------------------------------------


def test_grayscale_rgba_palette_loading(tmp_path: Path) -> None:
    grey = _png(tmp_path / "grey.png", np.full((4, 5), 128, dtype=np.uint8))
    x = read_image(grey)
    assert x.shape == (3, 4, 5) and torch.allclose(x, torch.full_like(x, 128 / 255))
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0
    assert torch.allclose(read_image(_png(tmp_path / "rgba.png", rgba))[0], torch.ones(4, 4))
    palette = Image.fromarray(np.full((4, 4, 3), (0, 255, 0), dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")[:, 0, 0].tolist() == [0.0, 1.0, 0.0]


def test_16bit_png_scaled_by_full_range(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[65535, 32768], [0, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    x = read_image(path)
    assert x.shape == (3, 2, 2)
    assert x[0, 0, 0].item() == 1.0 and x[0, 1, 0].item() == 0.0
    assert x[:, 0, 1].tolist() == pytest.approx([32768 / 65535] * 3)


def test_mask_nonzero_is_one_and_resized_to_image(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    small = np.zeros((4, 4), dtype=np.uint8)
    small[:, :2] = 1  # left half, value 1 rather than 255
    _png(base / "ground_truth" / "crack" / "0_mask.png", small)
    item = next(
        it for it in _setup(tmp_path).test_dataset if it[IMAGE_PATH].endswith("crack/0.png")
    )
    expected = torch.zeros(1, 8, 8)
    expected[..., :4] = 1
    assert torch.equal(item[GT_MASK], expected)


def test_anomalous_image_with_empty_mask_stays_anomalous(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    _png(base / "ground_truth" / "crack" / "1_mask.png", np.zeros((8, 8), dtype=np.uint8))
    item = next(
        it for it in _setup(tmp_path).test_dataset if it[IMAGE_PATH].endswith("crack/1.png")
    )
    assert item[GT_LABEL] == 1 and item[HAS_MASK] and item[GT_MASK].sum() == 0


def test_make_dataset_from_paths(tmp_path: Path) -> None:
    dm = MVTecLayoutDataModule(str(tmp_path), "widget", image_size=6)
    new = tmp_path / "new"
    _png(new / "a.png")
    _png(new / "sub" / "b.jpg")
    (new / "c.txt").write_text("skip")
    dataset = dm.make_dataset_from_paths(new)
    assert [Path(s.image_path).name for s in dataset.samples] == ["a.png", "b.jpg"]
    item = dataset[1]
    assert item[IMAGE].shape == (3, 6, 6) and item[GT_LABEL] == -1 and not item[HAS_MASK]
    assert item[GT_MASK].sum() == 0
    assert len(dm.make_dataset_from_paths([new / "a.png", str(new / "a.png")])) == 2
    with pytest.raises(DatasetError, match="absent.png does not exist"):
        dm.make_dataset_from_paths([new / "absent.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No images found"):
        dm.make_dataset_from_paths(tmp_path / "empty")


def test_magnetic_tile_real_data() -> None:
    root = SHARED_DATA / "magnetic_tile_256"
    if not (root / "magnetic_tile").is_dir():
        pytest.skip(f"{root} not available")
    dm = MVTecLayoutDataModule(str(root), "magnetic_tile", name="magnetic_tile", image_size=64)
    dm.setup()
    labels = dm.test_dataset.labels
    assert len(dm.train_dataset) == 762 and labels.count(0) == 190 and labels.count(1) == 392
    assert dm.category_type == "object"
    item = dm.test_dataset[len(labels) - 1]
    assert item[IMAGE].shape == (3, 64, 64) and item[GT_LABEL] == 1
