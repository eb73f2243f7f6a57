"""The high-resolution synthetic category ``weave_hires``: 1024 px, defects a few pixels wide."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adlab.data.synthetic import HIRES_SPOT_DIAMETER, NATIVE_SIZE, generate_category, render_sample


def _extent(mask: torch.Tensor) -> tuple[int, int]:
    """Height and width of the bounding box of a ``(1, S, S)`` mask."""
    ys, xs = mask[0].nonzero(as_tuple=True)
    return int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1


@pytest.mark.parametrize("size", [256, 512])
def test_defects_are_a_few_pixels_whatever_the_image_size(size: int) -> None:
    generator = torch.Generator().manual_seed(size)
    low, high = HIRES_SPOT_DIAMETER
    for _ in range(4):
        for defect in ("pinhole", "fleck"):
            _, _, mask = render_sample("weave_hires", defect, size, generator)
            assert low - 2 <= min(_extent(mask)) and max(_extent(mask)) <= high + 4, defect
        _, _, mask = render_sample("weave_hires", "hairline", size, generator)
        assert 6 <= max(_extent(mask)) <= 26 and mask.sum() <= 2 * max(_extent(mask))


def test_category_is_generated_at_1024_px_by_default(tmp_path: Path) -> None:
    assert NATIVE_SIZE["weave_hires"] == 1024 and NATIVE_SIZE["weave"] == 128
    target = generate_category(
        tmp_path, "weave_hires", n_train=1, n_test_good=1, n_test_per_defect=1
    )
    assert json.loads((target / "meta.json").read_text())["image_size"] == 1024
    assert sorted(p.name for p in (target / "test").iterdir()) == [
        "fleck",
        "good",
        "hairline",
        "pinhole",
    ]
    with Image.open(target / "test" / "pinhole" / "000.png") as image:
        assert image.size == (1024, 1024)
    with Image.open(target / "ground_truth" / "pinhole" / "000_mask.png") as mask:
        assert 8 <= (np.asarray(mask) > 0).sum() <= 150
