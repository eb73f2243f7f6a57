"""Dataset and DataModule for the MVTec AD folder layout (MVTec AD, VisA, custom folders).

Layout::

    <root>/<category>/train/good/*.png              normal training images
    <root>/<category>/test/good/*.png               normal test images
    <root>/<category>/test/<defect_type>/*.png      anomalous test images
    <root>/<category>/ground_truth/<defect_type>/<stem>_mask.png
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from adlab.data.io import IMAGE_EXTENSIONS, list_images, read_image, read_mask, verify_image
from adlab.data.memory import InMemoryDataset, collate_batched, memory_mb
from adlab.postprocess.tiler import Tiler, Tiling
from adlab.types import DEFECT_TYPE, GT_LABEL, GT_MASK, HAS_MASK, IMAGE, IMAGE_PATH

NORMAL = "good"
UNLABELLED = "unknown"
MVTEC_TEXTURES = frozenset({"carpet", "grid", "leather", "tile", "wood"})
CATEGORY_TYPES = ("texture", "object")
VAL_SPLITS = ("none", "from_train", "from_test", "same_as_test")
IN_MEMORY = (True, False, "auto")
_MAX_LISTED = 5


class DatasetError(ValueError):
    """A dataset folder, file or option does not match what the data layer expects."""


@dataclass(frozen=True)
class Sample:
    """One image on disk.

    Attributes:
        image_path: the image file.
        label: 0 normal, 1 anomalous, -1 unknown (prediction on new images).
        defect_type: ``"good"`` for normal images, the test sub-folder name otherwise.
        mask_path: the mask file of an anomalous image, if any.
    """

    image_path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None

    @property
    def has_mask(self) -> bool:
        """Whether ``gt_mask`` is a true pixel label (all zeros is true for normal images)."""
        return self.label == 0 or self.mask_path is not None


class MVTecLayoutDataset(Dataset):
    """Loads samples as batch dicts following :mod:`adlab.types`.

    Args:
        samples: images to serve, in order.
        image_size: ``(H, W)`` to resize to (image bilinear with antialias, mask nearest).
        center_crop: optional square crop size applied after the resize.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: tuple[int, int],
        center_crop: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.center_crop = center_crop

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Image labels in order (0 normal, 1 anomalous, -1 unknown)."""
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        """One item: ``image`` float32 ``(3, H, W)`` in [0, 1], ``gt_mask`` float32 ``(1, H, W)``
        in {0, 1}, ``gt_label`` int64 scalar, ``has_mask`` bool scalar, ``image_path`` and
        ``defect_type`` strings."""
        sample = self.samples[index]
        try:
            image = read_image(sample.image_path)
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"Cannot decode image file {sample.image_path}: {err}") from err
        image = resize_image(image, self.image_size)
        if sample.mask_path is None:
            mask = torch.zeros(1, *self.image_size)
        else:
            try:
                mask = read_mask(sample.mask_path)
            except (OSError, SyntaxError, ValueError) as err:
                raise DatasetError(f"Cannot decode mask file {sample.mask_path}: {err}") from err
            # Resizing straight to the output size also aligns masks whose size differs.
            mask = F.interpolate(mask[None], size=self.image_size, mode="nearest-exact")[0]
        if self.center_crop is not None:
            image = _center_crop(image, self.center_crop)
            mask = _center_crop(mask, self.center_crop)
        return {
            IMAGE: image,
            GT_MASK: mask,
            GT_LABEL: torch.tensor(sample.label, dtype=torch.int64),
            HAS_MASK: torch.tensor(sample.has_mask),
            IMAGE_PATH: str(sample.image_path),
            DEFECT_TYPE: sample.defect_type,
        }


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(3, H0, W0)`` in [0, 1] -> ``(3, *size)``: bilinear with antialias, clamped to [0, 1]."""
    return F.interpolate(
        image[None], size=size, mode="bilinear", antialias=True, align_corners=False
    )[0].clamp_(0.0, 1.0)


def prepare_image(
    image: torch.Tensor, size: tuple[int, int], center_crop: int | None
) -> torch.Tensor:
    """A decoded image ``(3, H0, W0)`` as the datasets serve it: resized, then center-cropped."""
    image = resize_image(image, size)
    return image if center_crop is None else _center_crop(image, center_crop)


class EpochSeededSampler(Sampler[int]):
    """Random order that depends only on ``seed`` and the epoch (Lightning calls ``set_epoch``).

    A run resumed from a checkpoint therefore sees the same batches as an uninterrupted one.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed((self.seed + 1_000_003 * self.epoch) % 2**63)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``(C, size, size)`` window of a ``(C, H, W)`` tensor."""
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from an int or a 2-sequence (Hydra passes lists), validated positive."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise DatasetError(f"image_size={image_size!r}: expected a positive int or (H, W)")
    return int(size[0]), int(size[1])


def _extensions() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def _verify_files(paths: Sequence[Path]) -> None:
    """Cheap header/container check of every file; raises naming the first bad one."""
    for path in paths:
        try:
            verify_image(path)
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"Cannot read image file {path}: {err}") from err


def _shorten(paths: Sequence[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    return shown + (f" (and {len(paths) - _MAX_LISTED} more)" if len(paths) > _MAX_LISTED else "")


def _split_off(
    samples: Sequence[Sample], fraction: float, generator: torch.Generator
) -> tuple[list[Sample], list[Sample]]:
    """Random ``(kept, held_out)`` split holding out ``round(fraction * n)`` samples, clamped to
    ``[1, n - 1]`` when ``n >= 2`` so both parts stay non-empty."""
    n = len(samples)
    k = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
    order = torch.randperm(n, generator=generator).tolist()
    held = sorted(order[:k])
    kept = sorted(order[k:])
    return [samples[i] for i in kept], [samples[i] for i in held]


def _stratified_split_off(
    samples: Sequence[Sample], fraction: float, generator: torch.Generator
) -> tuple[list[Sample], list[Sample]]:
    """:func:`_split_off` applied per defect type (``good`` included)."""
    kept, held = [], []
    for defect_type in sorted({s.defect_type for s in samples}):
        group = [s for s in samples if s.defect_type == defect_type]
        k, h = _split_off(group, fraction, generator)
        kept += k
        held += h
    return kept, held


class MVTecLayoutDataModule(LightningDataModule):
    """One category of a dataset stored in the MVTec AD layout.

    ``setup()`` scans and checks the folders (raising :class:`DatasetError` on bad input), then
    builds ``train_dataset`` (normal only), ``test_dataset`` and ``val_dataset`` (or None).

    Args:
        root: folder holding one sub-folder per category.
        category: category sub-folder name.
        name: dataset name used in results.
        image_size: resize target, an int or ``(H, W)``.
        center_crop: optional square crop after the resize.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        val_split: ``none``; ``from_train`` (a held-out fraction of train/good, normal only);
            ``from_test`` (a stratified, seeded fraction of the test set moved to validation);
            ``same_as_test``.
        val_fraction: fraction used by ``from_train``/``from_test``, in (0, 1).
        allow_missing_masks: keep anomalous test images without a mask (``has_mask`` False).
        category_type: ``texture`` or ``object``; default: MVTec's textures are ``texture``.
        seed: seed of the validation split.
        drop_last: drop the last partial training batch (DDAD's official loaders; a 2-image
            remainder would otherwise update BatchNorm statistics on its own).
        in_memory: keep the decoded, resized images of the train/val/test splits in memory on
            the training device (:class:`~adlab.data.memory.InMemoryDataset`: each file is
            decoded once per run, loaders run in the main process); ``auto``: only when they
            take at most ``in_memory_limit_mb``, else stream from disk; ``false``: stream.
        in_memory_limit_mb: size limit of ``in_memory=auto`` in MiB (float32 image + mask).
        tiling: train and test on tiles of the ``image_size`` images (``dataset.tiling``,
            :mod:`adlab.postprocess.tiler`): training batches are cut into tiles after the
            transfer to the device, and ``setup`` gives the module its :class:`Tiler`.
    """

    def __init__(
        self,
        root: str,
        category: str,
        name: str = "mvtec",
        image_size: int | tuple[int, int] = 256,
        center_crop: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_split: str = "none",
        val_fraction: float = 0.2,
        allow_missing_masks: bool = False,
        category_type: str | None = None,
        seed: int = 0,
        drop_last: bool = False,
        in_memory: bool | str = "auto",
        in_memory_limit_mb: float = 4096,
        tiling: Tiling | None = None,
    ) -> None:
        super().__init__()
        self.tiling = tiling
        self.drop_last = drop_last
        if in_memory not in IN_MEMORY or in_memory_limit_mb <= 0:
            raise DatasetError(
                f"in_memory={in_memory!r}, in_memory_limit_mb={in_memory_limit_mb}: expected "
                "in_memory true, false or auto and a limit > 0 (MiB)"
            )
        self.in_memory, self.in_memory_limit_mb = in_memory, in_memory_limit_mb
        self.root = Path(os.path.expanduser(str(root)))
        self.category = category
        self.name = name
        self.image_size = _as_size(image_size)
        if center_crop is not None and not 0 < center_crop <= min(self.image_size):
            raise DatasetError(
                f"center_crop={center_crop}: expected a size in [1, {min(self.image_size)}] "
                f"(image_size={self.image_size}) or null"
            )
        self.center_crop = center_crop
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        if val_split not in VAL_SPLITS:
            raise DatasetError(f"val_split={val_split!r}: expected one of {', '.join(VAL_SPLITS)}")
        if not 0.0 < val_fraction < 1.0:
            raise DatasetError(f"val_fraction={val_fraction}: expected a value in (0, 1)")
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.allow_missing_masks = allow_missing_masks
        if category_type is not None and category_type not in CATEGORY_TYPES:
            raise DatasetError(
                f"category_type={category_type!r}: expected one of {', '.join(CATEGORY_TYPES)}"
            )
        self._category_type = category_type
        self.seed = seed
        self.train_dataset: MVTecLayoutDataset | InMemoryDataset | None = None
        self.val_dataset: MVTecLayoutDataset | InMemoryDataset | None = None
        self.test_dataset: MVTecLayoutDataset | InMemoryDataset | None = None
        self._first_train: torch.Tensor | None = None

    @property
    def category_type(self) -> str:
        """``texture`` or ``object``."""
        if self._category_type is not None:
            return self._category_type
        return "texture" if self.category in MVTEC_TEXTURES else "object"

    @property
    def category_dir(self) -> Path:
        return self.root / self.category

    def setup(self, stage: str | None = None) -> None:
        """Scan and check the category folder, then build the datasets (once)."""
        if self.tiling is not None and self.trainer is not None:
            self.trainer.lightning_module.tiler = Tiler(self.tiling)
        if self.test_dataset is not None:
            return
        train = self._scan_train()
        test = self._scan_test()
        _verify_files(
            [s.image_path for s in train + test] + [s.mask_path for s in test if s.mask_path]
        )
        val: list[Sample] | None = None
        generator = torch.Generator().manual_seed(self.seed)
        if self.val_split == "from_train":
            train, val = _split_off(train, self.val_fraction, generator)
        elif self.val_split == "from_test":
            test, val = _stratified_split_off(test, self.val_fraction, generator)
        if val == []:
            raise DatasetError(
                f"val_split={self.val_split!r} left no validation images: each split group needs "
                "at least 2 images (from_test splits every defect type separately)"
            )
        self.train_dataset = self._dataset(train)
        self.test_dataset = self._dataset(test)
        if val is not None:
            self.val_dataset = self._dataset(val)
        if self._keep_in_memory():
            device = self._device()
            self.train_dataset = InMemoryDataset(self.train_dataset, device)
            self.test_dataset = InMemoryDataset(self.test_dataset, device)
            if self.val_dataset is not None:
                self.val_dataset = InMemoryDataset(self.val_dataset, device)
        if self.val_split == "same_as_test":
            self.val_dataset = self.test_dataset

    def _keep_in_memory(self) -> bool:
        """``in_memory`` resolved: ``auto`` compares the splits' size with the limit."""
        if self.in_memory != "auto":
            return bool(self.in_memory)
        splits = [self.train_dataset, self.test_dataset, self.val_dataset]
        return sum(memory_mb(d) for d in splits if d is not None) <= self.in_memory_limit_mb

    def _device(self) -> torch.device:
        """The training device (the trainer's root device; CPU without a trainer)."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def first_train_images(self, limit: int) -> torch.Tensor:
        """The first ``limit`` normal training images ``(N, 3, H, W)`` in sorted file order
        (deterministic, no shuffling, no augmentation); :meth:`setup` must have run."""
        if self.train_dataset is None:
            raise RuntimeError("first_train_images needs setup() to have run first")
        dataset, count = self.train_dataset, min(limit, len(self.train_dataset))
        if isinstance(dataset, InMemoryDataset):
            return dataset.__getitems__(range(count))[IMAGE]
        if self._first_train is None or len(self._first_train) != count:
            # decoded once: DMAD calibrates on these images every validation epoch
            self._first_train = torch.stack([dataset[i][IMAGE] for i in range(count)])
        return self._first_train

    def _dataset(self, samples: Sequence[Sample]) -> MVTecLayoutDataset:
        return MVTecLayoutDataset(samples, self.image_size, self.center_crop)

    def _scan_train(self) -> list[Sample]:
        """Check root, category and ``train/good``; return the normal training samples."""
        if not self.root.is_dir():
            raise DatasetError(
                f"Dataset root {self.root} does not exist: expected a folder holding "
                "<category>/train/good and <category>/test/<defect_type>"
            )
        if not self.category_dir.is_dir():
            available = sorted(
                p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
            raise DatasetError(
                f"Category {self.category!r} not found under {self.root}; available categories: "
                f"{', '.join(available) or '(none)'}"
            )
        good_dir = self.category_dir / "train" / NORMAL
        images = list_images(good_dir) if good_dir.is_dir() else []
        if not images:
            problem = "is empty" if good_dir.is_dir() else "does not exist"
            raise DatasetError(
                f"Training folder {good_dir} {problem}: expected normal images with extensions "
                f"{_extensions()}"
            )
        return [Sample(p, 0, NORMAL) for p in images]

    def _scan_test(self) -> list[Sample]:
        """Check ``test/`` and the masks in ``ground_truth/``; return the test samples."""
        test_dir = self.category_dir / "test"
        if not test_dir.is_dir():
            raise DatasetError(
                f"Missing test folder {test_dir}: expected test/good and test/<defect_type> folders"
            )
        samples: list[Sample] = []
        missing: list[Path] = []
        type_dirs = sorted(
            p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        for type_dir in type_dirs:
            defect_type = type_dir.name
            if defect_type == NORMAL:
                samples += [Sample(p, 0, NORMAL) for p in list_images(type_dir)]
                continue
            gt_dir = self.category_dir / "ground_truth" / defect_type
            masks = {p.stem: p for p in list_images(gt_dir)} if gt_dir.is_dir() else {}
            for path in list_images(type_dir):
                mask_path = masks.get(f"{path.stem}_mask")
                if mask_path is None:
                    missing.append(path)
                samples.append(Sample(path, 1, defect_type, mask_path))
        if not samples:
            raise DatasetError(
                f"No test images in {test_dir}/<defect_type>/; accepted extensions: {_extensions()}"
            )
        if missing and not self.allow_missing_masks:
            raise DatasetError(
                f"{len(missing)} anomalous test image(s) have no mask at "
                f"{self.category_dir}/ground_truth/<defect_type>/<stem>_mask.png: "
                f"{_shorten(missing)}. Add the masks, or set allow_missing_masks=true to keep "
                "them without pixel labels."
            )
        return samples

    def make_dataset_from_paths(
        self, paths: str | Path | Sequence[str | Path]
    ) -> MVTecLayoutDataset:
        """An unlabelled dataset for prediction on new images, with this module's transforms.

        Items have ``gt_label`` -1, an all-zero ``gt_mask`` and ``has_mask`` False.

        Args:
            paths: an image file, a folder (scanned recursively) or a list of image files.
        """
        entries = [paths] if isinstance(paths, (str, Path)) else list(paths)
        files: list[Path] = []
        for entry in map(Path, entries):
            if entry.is_dir():
                files += list_images(entry, recursive=True)
            elif entry.is_file():
                files.append(entry)
            else:
                raise DatasetError(f"Prediction input {entry} does not exist")
        if not files:
            raise DatasetError(
                f"No images found in {', '.join(map(str, entries))}; accepted extensions: "
                f"{_extensions()}"
            )
        _verify_files(files)
        return self._dataset([Sample(p, -1, UNLABELLED) for p in files])

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False
    ) -> DataLoader:
        # Evaluation under DDP: each image on exactly one rank. Lightning's default sampler pads
        # the ranks with repeated images, which would count them twice in the gathered metrics.
        sampler = None
        if not shuffle and dist.is_available() and dist.is_initialized():
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            **self._loader_kwargs(dataset),
        )

    def _loader_kwargs(self, dataset: Dataset) -> dict:
        """In-memory datasets: batches come indexed and on the device, in the main process.
        Streaming: ``num_workers`` workers, pinned host memory when training on a GPU."""
        if isinstance(dataset, InMemoryDataset):
            return {"num_workers": 0, "collate_fn": collate_batched}
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": self._device().type == "cuda",
        }

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, the order a function of the run's seed and the epoch.

        Single process: :class:`EpochSeededSampler` on ``torch.initial_seed()`` (set by
        ``seed_everything``), so a resumed run repeats the uninterrupted run's batches. Under
        DDP, Lightning's ``DistributedSampler`` (seeded, ``set_epoch``) does the same.
        ``drop_last`` drops the last partial batch (DDAD's official loaders).
        """
        if dist.is_available() and dist.is_initialized():
            return self._loader(self.train_dataset, self.batch_size, True, self.drop_last)
        sampler = EpochSeededSampler(len(self.train_dataset), torch.initial_seed())
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=self.drop_last,
            **self._loader_kwargs(self.train_dataset),
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """With ``tiling``, a training batch becomes tiles of its images (seeded by the run's
        seed and the step, so a resumed run cuts the same tiles)."""
        trainer = self.trainer
        if self.tiling is None or trainer is None or not trainer.training:
            return batch
        seed = hash((torch.initial_seed(), trainer.current_epoch, trainer.global_step))
        return self.tiling.train_batch(batch, torch.Generator().manual_seed(seed % 2**63))

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader, or an empty list (no validation) when ``val_split=none``."""
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)
