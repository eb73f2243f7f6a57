"""Device-resident datasets: each image is decoded and resized once per run, then kept in memory.

The small datasets of this field (MVTec AD categories hold 60-400 training images) fit in host or
GPU memory many times over, so an epoch need not touch the disk, decode a PNG or start a worker.
:class:`InMemoryDataset` wraps a streaming :class:`~adlab.data.folder.MVTecLayoutDataset`: item
``i`` is decoded by the wrapped dataset on its first access and copied into preallocated
tensors on the training device; a batch is then one index into those tensors
(``__getitems__``), so the loader's batches are exactly the streaming loader's batches (same
sampler, same values), already on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from adlab.types import DEFECT_TYPE, GT_LABEL, GT_MASK, HAS_MASK, IMAGE, IMAGE_PATH

if TYPE_CHECKING:
    from adlab.data.folder import MVTecLayoutDataset, Sample

_BYTES_PER_MB = 2**20


def served_size(dataset: MVTecLayoutDataset) -> tuple[int, int]:
    """``(H, W)`` of the items ``dataset`` serves (after its resize and optional crop)."""
    if dataset.center_crop is not None:
        return dataset.center_crop, dataset.center_crop
    return dataset.image_size


def memory_mb(dataset: MVTecLayoutDataset) -> float:
    """MiB an :class:`InMemoryDataset` of ``dataset`` takes: float32 image ``(3, H, W)`` and
    mask ``(1, H, W)`` per item."""
    height, width = served_size(dataset)
    return len(dataset) * 4 * height * width * 4 / _BYTES_PER_MB


class InMemoryDataset(Dataset):
    """Decode-once, device-resident view of a :class:`MVTecLayoutDataset`.

    Items and batches hold the same keys, dtypes and values as the wrapped dataset's items and
    their default collation, on ``device``. Decoding stays lazy (first access), so a file that
    cannot be decoded still raises the wrapped dataset's error, naming the file.

    Args:
        source: the streaming dataset (decoding, resizing, cropping, masks).
        device: where the tensors live (the training device).
    """

    def __init__(self, source: MVTecLayoutDataset, device: torch.device | str = "cpu") -> None:
        self.source = source
        self.device = torch.device(device)
        n, (height, width) = len(source), served_size(source)
        self.images = torch.empty(n, 3, height, width, device=self.device)
        self.masks = torch.empty(n, 1, height, width, device=self.device)
        self.gt_labels = torch.tensor(source.labels, dtype=torch.int64, device=self.device)
        self.has_masks = torch.tensor(
            [s.has_mask for s in source.samples], dtype=torch.bool, device=self.device
        )
        self._loaded = [False] * n

    @property
    def samples(self) -> list[Sample]:
        """The wrapped dataset's samples, in order."""
        return self.source.samples

    @property
    def labels(self) -> list[int]:
        """Image labels in order (0 normal, 1 anomalous, -1 unknown)."""
        return self.source.labels

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, indices: Sequence[int]) -> None:
        """Decode the items of ``indices`` not decoded yet into the device tensors."""
        for i in indices:
            if not self._loaded[i]:
                item = self.source[i]
                self.images[i].copy_(item[IMAGE])
                self.masks[i].copy_(item[GT_MASK])
                self._loaded[i] = True

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One item, as :meth:`MVTecLayoutDataset.__getitem__` (tensors on ``device``)."""
        self._load([index])
        sample = self.samples[index]
        return {
            IMAGE: self.images[index],
            GT_MASK: self.masks[index],
            GT_LABEL: self.gt_labels[index],
            HAS_MASK: self.has_masks[index],
            IMAGE_PATH: str(sample.image_path),
            DEFECT_TYPE: sample.defect_type,
        }

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor | list[str]]:
        """A collated batch of ``indices`` (what ``default_collate`` makes of their items):
        ``image (B, 3, H, W)``, ``gt_mask (B, 1, H, W)``, ``gt_label (B,)``, ``has_mask (B,)``,
        ``image_path`` and ``defect_type`` lists; DataLoaders pass it on with
        :func:`collate_batched`."""
        indices = list(indices)
        self._load(indices)
        index = torch.tensor(indices, dtype=torch.long, device=self.device)
        return {
            IMAGE: self.images[index],
            GT_MASK: self.masks[index],
            GT_LABEL: self.gt_labels[index],
            HAS_MASK: self.has_masks[index],
            IMAGE_PATH: [str(self.samples[i].image_path) for i in indices],
            DEFECT_TYPE: [self.samples[i].defect_type for i in indices],
        }


def collate_batched(batch: dict[str, Tensor | list[str]]) -> dict[str, Tensor | list[str]]:
    """DataLoader ``collate_fn`` for :meth:`InMemoryDataset.__getitems__`: already a batch."""
    return batch
