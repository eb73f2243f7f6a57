"""In-memory (decode-once) datasets: the same batches as the streaming loaders, the size limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adlab.data import DatasetError, MVTecLayoutDataModule
from adlab.data.memory import InMemoryDataset, memory_mb


def _datamodule(root: Path, in_memory: bool | str, **kwargs) -> MVTecLayoutDataModule:
    dm = MVTecLayoutDataModule(
        str(root), "disc", image_size=24, batch_size=5, eval_batch_size=7, in_memory=in_memory,
        center_crop=20, val_split="from_test", **kwargs,
    )  # fmt: skip
    dm.setup()
    return dm


def _batches(dm: MVTecLayoutDataModule, epochs: int = 2) -> list[dict]:
    batches = []
    for epoch in range(epochs):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        batches += list(loader)
    return batches + list(dm.val_dataloader()) + list(dm.test_dataloader())


def test_in_memory_batches_equal_streaming(synthetic_root: Path) -> None:
    torch.manual_seed(3)
    streamed = _batches(_datamodule(synthetic_root, False))
    torch.manual_seed(3)
    dm = _datamodule(synthetic_root, True)
    assert isinstance(dm.train_dataset, InMemoryDataset)
    assert isinstance(dm.test_dataset, InMemoryDataset)
    held = _batches(dm)
    assert len(held) == len(streamed) and len(held) > 4
    for a, b in zip(streamed, held, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
    first = dm.first_train_images(3)
    assert torch.equal(first, torch.stack([dm.train_dataset.source[i]["image"] for i in range(3)]))


def test_in_memory_auto_follows_the_size_limit(synthetic_root: Path) -> None:
    dm = _datamodule(synthetic_root, "auto")
    assert isinstance(dm.train_dataset, InMemoryDataset)
    size = sum(memory_mb(d.source) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset))
    assert size == pytest.approx((16 + 12) * 4 * 20 * 20 * 4 / 2**20)
    small = _datamodule(synthetic_root, "auto", in_memory_limit_mb=0.9 * size)
    assert not isinstance(small.train_dataset, InMemoryDataset)
    assert not isinstance(small.test_dataset, InMemoryDataset)
    assert isinstance(
        _datamodule(synthetic_root, "auto", in_memory_limit_mb=size).train_dataset, InMemoryDataset
    )


@pytest.mark.parametrize(
    "kwargs", [{"in_memory": "yes"}, {"in_memory": "auto", "in_memory_limit_mb": 0}]
)
def test_in_memory_invalid_options(kwargs: dict) -> None:
    with pytest.raises(DatasetError, match="in_memory"):
        MVTecLayoutDataModule("/nowhere", "x", **kwargs)
