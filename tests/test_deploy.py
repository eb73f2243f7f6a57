"""Prediction inputs and outputs: file / folder / glob inputs, unique output names, maps back at
the original size (center crop included), overlays on one scale."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from adlab.deploy import DeployInfo, map_to_original, output_names, overlay_image, resolve_inputs

INFO = DeployInfo("m", (32, 32), None, 0.5, 0.6, 0.0, 1.0, "test")


def _image(path: Path, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def test_inputs_from_a_file_a_folder_and_a_glob(tmp_path: Path) -> None:
    a, b = _image(tmp_path / "in" / "a" / "000.png"), _image(tmp_path / "in" / "b" / "000.png")
    _image(tmp_path / "in" / "b" / "001.jpg")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert resolve_inputs(a) == [(a, Path("000.png"))]
    names = [str(n) for _, n in resolve_inputs(tmp_path / "in")]
    assert names == ["a/000.png", "b/000.png", "b/001.jpg"]
    globbed = resolve_inputs(f"{tmp_path}/in/**/000.png")
    assert globbed == [(a, Path("a/000.png")), (b, Path("b/000.png"))]
    with pytest.raises(FileNotFoundError, match="no such image file, folder or glob"):
        resolve_inputs(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        resolve_inputs(f"{tmp_path}/in/*.txt")


def test_output_names_are_unique() -> None:
    names = output_names([Path("a/000.png"), Path("b/000.png"), Path("c/1.png"), Path("c/1.jpg")])
    assert names == [Path("a/000.png"), Path("b/000.png"), Path("c/1.png.png"), Path("c/1.jpg.png")]


def test_maps_go_back_to_the_original_size_and_crop() -> None:
    amap = torch.rand(1, 32, 32)
    assert map_to_original(amap, (48, 64), INFO).shape == (1, 48, 64)
    cropped = DeployInfo("m", (40, 40), 32, 0.5, 0.6, 0.0, 1.0, "test")
    full = map_to_original(amap, (80, 80), cropped)
    assert full.shape == (1, 80, 80)
    assert torch.isnan(full[0, :8]).all() and torch.isnan(full[0, :, -8:]).all()
    assert torch.isfinite(full[0, 8:72, 8:72]).all()


def test_overlays_share_one_scale_and_mark_the_threshold() -> None:
    image = torch.zeros(3, 16, 16)
    quiet = torch.full((1, 16, 16), 0.05)
    quiet[0, 8, 8] = 0.1  # per-image min-max would paint this pixel as hot as a defect
    rgb = overlay_image(image, quiet, INFO)
    assert rgb[..., 0].max() < 60  # jet near its cold end: little red anywhere
    hot = torch.zeros(1, 16, 16)
    hot[0, 4:12, 4:12] = 0.9
    marked = overlay_image(image, hot, INFO)
    assert (marked[4, 4:12] == 255).all() and (marked[8, 8] != 255).any()  # white contour
    assert INFO.overlay_range() == (0.0, 1.0)
    legacy = DeployInfo("m", (32, 32), None, 0.5, 0.6, math.nan, math.nan, "test")
    assert legacy.overlay_range() == (0.0, 1.2)  # no stored range: twice the pixel threshold
