"""Deployment-side processing shared by ``predict.py`` (Lightning and ONNX backends) and export.

- :class:`DeployInfo`: what a trained model needs around its network (input size, crop,
  thresholds, the overlay scale); built from a module, written as JSON beside an ONNX file.
- :func:`resolve_inputs`: a file, a folder (recursive) or a glob -> images and their names
  relative to the input, so ``a/000.png`` and ``b/000.png`` never share an output.
- :func:`map_to_original`: a model-resolution map back onto the original image's pixels.
- :class:`OutputWriter`: mask and overlay PNGs at the original size, thumbnails,
  ``predictions.csv`` and the predictions page ``index.html`` (:mod:`adlab.predictions_page`).
- :func:`write_test_page`: the same outputs for a labelled test set (``evaluate.py``).
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from adlab import types as T
from adlab.data.folder import prepare_image
from adlab.data.io import IMAGE_EXTENSIONS, is_image_file, list_images, read_image
from adlab.metrics.threshold import f1_max
from adlab.models.base import AnomalyModule
from adlab.postprocess import resize_map
from adlab.predictions_page import PageInfo, write_page, write_thumbnails
from adlab.results import atomic_write_csv, atomic_write_text
from adlab.viz import heatmap_overlay

_GLOB_CHARS = frozenset("*?[")
COLUMNS = (
    "path",
    "name",
    "score",
    "is_anomalous",
    "image_threshold",
    "pixel_threshold",
    "anomalous_pixel_fraction",
    "width",
    "height",
    "mask",
    "overlay",
)


@dataclass(frozen=True)
class DeployInfo:
    """Everything around the network that turns an image file into a decision.

    Attributes:
        model_name: the method (config name).
        image_size: ``(H, W)`` the image is resized to (bilinear, antialias) before the network.
        center_crop: square crop after the resize, or None; the map covers the crop.
        image_threshold: anomalous when ``score >= image_threshold``.
        pixel_threshold: a pixel is anomalous when ``map >= pixel_threshold`` (NaN: none).
        map_min: map value drawn as the coldest colour in overlays (all images share it).
        map_max: map value drawn as the hottest colour.
        threshold_source: ``test`` or ``validation`` (stored in the checkpoint), or
            ``evaluation`` (F1-optimal on the images of an ``evaluate.py`` page).
    """

    model_name: str
    image_size: tuple[int, int]
    center_crop: int | None
    image_threshold: float
    pixel_threshold: float
    map_min: float
    map_max: float
    threshold_source: str

    @classmethod
    def from_module(
        cls, model: AnomalyModule, meta: dict[str, Any], ckpt_path: str | Path = ""
    ) -> DeployInfo:
        """From a restored module and its checkpoint metadata; refuses missing thresholds."""
        if math.isnan(model.image_threshold):
            raise ValueError(
                f"{ckpt_path or 'the checkpoint'} holds no image threshold: it was saved before "
                "a test run. Evaluate it first (python train.py train=false ckpt_path=...) and "
                "use that run's checkpoints/model.ckpt"
            )
        size = meta["dataset_cfg"].get("image_size", 256)
        size = (size, size) if isinstance(size, int) else tuple(size)
        low, high = (float(v) for v in model.map_range)
        return cls(
            model_name=meta["model_name"],
            image_size=(int(size[0]), int(size[1])),
            center_crop=meta["dataset_cfg"].get("center_crop"),
            image_threshold=model.image_threshold,
            pixel_threshold=model.pixel_threshold,
            map_min=low,
            map_max=high,
            threshold_source=model.threshold_source,
        )

    def to_json(self, path: Path, **extra: Any) -> None:
        """Write the fields (NaN as null) and ``extra`` entries to ``path``."""
        data = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }
        atomic_write_text(json.dumps(data | extra, indent=2) + "\n", path)

    @classmethod
    def from_json(cls, path: Path) -> DeployInfo:
        """Read what :meth:`to_json` wrote (unknown keys ignored)."""
        data = json.loads(Path(path).read_text())
        fields = {k: data[k] for k in cls.__dataclass_fields__}
        for key in ("image_threshold", "pixel_threshold", "map_min", "map_max"):
            fields[key] = math.nan if fields[key] is None else float(fields[key])
        fields["image_size"] = tuple(fields["image_size"])
        return cls(**fields)

    def overlay_range(self) -> tuple[float, float]:
        """``(vmin, vmax)`` of every overlay: the map range of the evaluation that set the
        thresholds, widened to include the pixel threshold."""
        low, high = self.map_min, self.map_max
        if math.isnan(low) or math.isnan(high):  # checkpoint from before map_range existed
            t = self.pixel_threshold
            return (0.0, 2 * t) if math.isfinite(t) and t > 0 else (0.0, 1.0)
        if math.isfinite(self.pixel_threshold):
            low, high = min(low, self.pixel_threshold), max(high, self.pixel_threshold)
        return low, high


def _glob_root(pattern: str) -> Path:
    """The folder part of ``pattern`` before its first wildcard."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if set(p) & _GLOB_CHARS)]]
    return Path(*fixed) if fixed else Path(".")


def resolve_inputs(spec: str | Path) -> list[tuple[Path, Path]]:
    """Image files of a prediction input and their names relative to it.

    Args:
        spec: an image file (name: its file name), a folder (every image below it, recursively;
            names relative to the folder) or a glob (``**`` recursive; names relative to the
            folder before the first wildcard).

    Returns:
        ``(file, relative name)`` pairs, sorted by name.
    """
    text = str(spec)
    if set(text) & _GLOB_CHARS:
        root = _glob_root(text)
        files = [Path(p) for p in glob.glob(text, recursive=True) if is_image_file(Path(p))]
        pairs = [(f, f.relative_to(root)) for f in files]
    elif Path(text).is_dir():
        pairs = [(f, f.relative_to(text)) for f in list_images(Path(text), recursive=True)]
    elif Path(text).is_file():
        pairs = [(Path(text), Path(Path(text).name))]
    else:
        raise FileNotFoundError(f"input={text}: no such image file, folder or glob match")
    if not pairs:
        raise FileNotFoundError(
            f"input={text} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return sorted(pairs, key=lambda pair: str(pair[1]))


def output_names(names: list[Path]) -> list[Path]:
    """One unique ``.png`` name per input name: ``sub/000.png``; ``sub/000.jpg.png`` when two
    inputs differ only by extension."""
    stems = [n.with_suffix(".png") for n in names]
    clash = {s for s in stems if stems.count(s) > 1}
    return [Path(f"{n}.png") if s in clash else s for n, s in zip(names, stems, strict=True)]


def load_batch(files: list[Path], info: DeployInfo) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Network input ``(B, 3, H, W)`` in [0, 1] and the decoded originals ``(3, H0, W0)``."""
    originals = [read_image(f) for f in files]
    images = torch.stack([prepare_image(x, info.image_size, info.center_crop) for x in originals])
    return images, originals


def map_to_original(
    anomaly_map: torch.Tensor, original: tuple[int, int], info: DeployInfo
) -> torch.Tensor:
    """A model-resolution map ``(1, h, w)`` -> ``(1, H0, W0)`` on the original image.

    Bilinear resize; with a center crop the map covers the crop's footprint and the rest is NaN
    (never anomalous, drawn as the coldest colour).
    """
    height, width = original
    if info.center_crop is None:
        return resize_map(anomaly_map[None].float(), (height, width))[0]
    (h, w), crop = info.image_size, info.center_crop
    sy, sx = height / h, width / w
    y0, x0 = round((h - crop) // 2 * sy), round((w - crop) // 2 * sx)
    y1, x1 = y0 + max(round(crop * sy), 1), x0 + max(round(crop * sx), 1)
    out = torch.full((1, height, width), math.nan)
    out[:, y0:y1, x0:x1] = resize_map(anomaly_map[None].float(), (y1 - y0, x1 - x0))[0]
    return out


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (H, W) bool with a 4-neighbour outside it."""
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay_image(image: torch.Tensor, anomaly_map: torch.Tensor, info: DeployInfo) -> np.ndarray:
    """``(H0, W0, 3)`` uint8: the map on the common scale, the pixel-threshold contour white."""
    vmin, vmax = info.overlay_range()
    amap = torch.nan_to_num(anomaly_map.float(), nan=vmin)
    rgb = heatmap_overlay(image, amap, vmin, vmax)
    if math.isfinite(info.pixel_threshold):
        rgb[_boundary((anomaly_map[0] >= info.pixel_threshold).numpy())] = 1.0
    return (rgb * 255).round().astype(np.uint8)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    """``(H, W)`` bool (a mask, saved 0/255) or ``(H, W, 3)`` uint8 as a PNG, parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8) * 255 if pixels.dtype == bool else pixels).save(path)


class OutputWriter:
    """Writes ``masks/<name>.png``, ``overlays/<name>.png``, ``thumbnails/``,
    ``predictions.csv`` and ``index.html``.

    Args:
        output_dir: where to write.
        info: thresholds, sizes and the overlay scale.
        title: heading of the predictions page.
    """

    def __init__(self, output_dir: str | Path, info: DeployInfo, title: str = "") -> None:
        self.output_dir = Path(output_dir)
        self.info = info
        self.title = title or f"{info.model_name} predictions"
        self.rows: list[dict[str, Any]] = []

    def write(
        self,
        file: Path,
        name: Path,
        original: torch.Tensor,
        anomaly_map: torch.Tensor,
        score: float,
        gt_mask: torch.Tensor | None = None,
        **labels: Any,
    ) -> dict[str, Any]:
        """One image: ``original`` ``(3, H0, W0)``, its model map ``(1, h, w)`` and score.

        A ground-truth ``gt_mask`` ``(1, h, w)`` at model resolution is written at the original
        size as ``gt_masks/<name>.png``; ``labels`` (``gt_label``, ``defect_type``) become
        columns of the row.
        """
        size = tuple(original.shape[-2:])
        full = map_to_original(anomaly_map.cpu(), size, self.info)
        mask = (full[0] >= self.info.pixel_threshold).numpy()
        files = {"mask": Path("masks") / name, "overlay": Path("overlays") / name}
        _save_png(mask, self.output_dir / files["mask"])
        overlay = overlay_image(original, full, self.info)
        _save_png(overlay, self.output_dir / files["overlay"])
        pixels = (original.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        write_thumbnails(self.output_dir, name, pixels, overlay)
        if gt_mask is not None:
            files["gt_mask"] = Path("gt_masks") / name
            truth = map_to_original(gt_mask.float().cpu(), size, self.info)[0] >= 0.5
            _save_png(truth.numpy(), self.output_dir / files["gt_mask"])
        row = (
            labels
            | {
                "path": str(file),
                "name": str(name),
                "score": score,
                "is_anomalous": bool(score >= self.info.image_threshold),
                "image_threshold": self.info.image_threshold,
                "pixel_threshold": self.info.pixel_threshold,
                "anomalous_pixel_fraction": float(mask.mean()),
                "width": int(original.shape[-1]),
                "height": int(original.shape[-2]),
            }
            | {k: str(v) for k, v in files.items()}
        )
        self.rows.append(row)
        return row

    def finish(self) -> pd.DataFrame:
        """Write ``predictions.csv`` (one row per image: :data:`COLUMNS`, then ``gt_label``,
        ``defect_type`` and ``gt_mask`` where given) and ``index.html``; return the table."""
        table = pd.DataFrame(self.rows)
        extra = [c for c in table.columns if c not in COLUMNS]
        table = table.reindex(columns=[*COLUMNS, *extra])
        atomic_write_csv(table, self.output_dir / "predictions.csv")
        info = self.info
        note = (
            "F1-optimal on these images"
            if info.threshold_source == "evaluation"
            else f"stored in the checkpoint ({info.threshold_source})"
        )
        summary = (
            f"{len(table)} images; image threshold {info.image_threshold:.4g} {note}, "
            f"pixel threshold {info.pixel_threshold:.4g}"
        )
        page = PageInfo(self.title, summary, info.image_threshold, note)
        write_page(self.output_dir, table, page)
        return table


def evaluation_info(
    model: AnomalyModule, model_name: str, cache: dict[str, Any], datamodule: Any
) -> DeployInfo:
    """:class:`DeployInfo` of a checkpoint scored on a test set (``evaluate.py``).

    The checkpoint's thresholds and map range where it stores them; otherwise (a checkpoint
    saved before any test run) the F1-optimal image threshold and the map range of ``cache``
    (``pred_score (N,)``, ``gt_label (N,)``, ``anomaly_map (N, 1, H, W)``), no pixel threshold.
    """
    image_t, pixel_t, source = model.image_threshold, model.pixel_threshold, model.threshold_source
    if math.isnan(image_t):
        image_t = f1_max(cache["pred_score"], cache[T.GT_LABEL])[1]
        pixel_t, source = math.nan, "evaluation"
    low, high = (float(v) for v in model.map_range)
    if math.isnan(low) or math.isnan(high):
        low, high = float(cache["anomaly_map"].min()), float(cache["anomaly_map"].max())
    return DeployInfo(
        model_name=model_name,
        image_size=tuple(datamodule.image_size),
        center_crop=datamodule.center_crop,
        image_threshold=image_t,
        pixel_threshold=pixel_t,
        map_min=low,
        map_max=high,
        threshold_source=source,
    )


def write_test_page(
    info: DeployInfo, cache: dict[str, Any], category_dir: Path, output_dir: Path, title: str
) -> pd.DataFrame:
    """Masks, overlays, ground-truth masks, ``predictions.csv`` and ``index.html`` of a scored
    test set, every image named by its path below ``category_dir`` (``test/crack/000.png``).

    Args:
        info: from :func:`evaluation_info`.
        cache: ``evaluate.py``'s outputs: ``pred_score (N,)``, ``anomaly_map (N, 1, H, W)``,
            ``gt_label (N,)``, ``gt_mask (N, 1, H, W)``, ``has_mask (N,)``, ``image_path``.
        category_dir: the dataset's ``<root>/<category>``.
        output_dir: where to write.
        title: heading of the page.
    """
    files = [Path(p) for p in cache[T.IMAGE_PATH]]
    names = output_names(
        [f.relative_to(category_dir) if f.is_relative_to(category_dir) else f for f in files]
    )
    writer = OutputWriter(output_dir, info, title)
    for i, (file, name) in enumerate(zip(files, names, strict=True)):
        label = int(cache[T.GT_LABEL][i])
        writer.write(
            file,
            name,
            read_image(file),
            cache["anomaly_map"][i],
            float(cache["pred_score"][i]),
            gt_mask=cache[T.GT_MASK][i] if bool(cache[T.HAS_MASK][i]) and label else None,
            gt_label=label,
            defect_type=file.parent.name,
        )
    return writer.finish()
