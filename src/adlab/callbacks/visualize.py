"""Sample visualisations of the test set: PNGs under ``<log_dir>/sample`` and TensorBoard images.

The pictures cover every defect type and the good set, and the highest- and lowest-scoring test
images, so they show what the metrics mean (not the first images in test order).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from adlab import types as T
from adlab.data.folder import NORMAL
from adlab.viz import figure_to_array, sample_figure, save_figure

Sample = dict[str, Any]
"""One kept test image: ``key`` (its path), ``defect_type``, ``image (3, H, W)``, ``gt_mask``,
``map (1, H, W)``, ``score``, ``recon`` (or None) and ``name``."""
HIGHEST, LOWEST = "highest score", "lowest score"


def pick_samples(
    groups: dict[str, list[Sample]], extremes: dict[str, Sample], num_samples: int
) -> list[tuple[str, Sample]]:
    """Choose the pictures: the extreme-scoring images, then every group in turn.

    Args:
        groups: defect type (``good`` included) -> its images in test order.
        extremes: role (``highest score``, ``lowest score``) -> that image.
        num_samples: how many to pick.

    Returns:
        ``(role, sample)`` pairs: the extremes first (role as given), then one image per group
        per round (``good`` first, then the defect types in name order; role ``""``), until
        ``num_samples`` are picked or the images run out. No image is picked twice.
    """
    picked: list[tuple[str, Sample]] = []
    for role, sample in extremes.items():
        if len(picked) < num_samples and sample["key"] not in {s["key"] for _, s in picked}:
            picked.append((role, sample))
    taken = {s["key"] for _, s in picked}
    order = sorted(groups, key=lambda g: (g != NORMAL, g))
    queues = {g: [s for s in groups[g] if s["key"] not in taken] for g in order}
    while len(picked) < num_samples and any(queues.values()):
        for group in order:
            if queues[group] and len(picked) < num_samples:
                picked.append(("", queues[group].pop(0)))
    return picked


class SampleVisualizer(Callback):
    """Draw ``num_samples`` test images that show what the numbers mean.

    The highest- and the lowest-scoring test image, then images spread over every defect type
    and the good set (:func:`pick_samples`). Memory is bounded: per defect type the first
    ``num_samples`` images are kept, plus the two extremes. Uses only the batch and the step's
    :class:`~adlab.types.AnomalyOutput`; the thresholds come from the module once the test
    epoch has ended.

    Args:
        num_samples: images to draw per test run.
        log_to_tensorboard: also add them as TensorBoard images.
    """

    def __init__(self, num_samples: int = 8, log_to_tensorboard: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(
                f"callbacks.sample_visualizer.num_samples={num_samples}: expected >= 1"
            )
        self.num_samples = num_samples
        self.log_to_tensorboard = log_to_tensorboard
        self.groups: dict[str, list[Sample]] = {}
        self.extremes: dict[str, Sample] = {}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.groups, self.extremes = {}, {}

    def _keep(self, sample: Sample) -> None:
        group = self.groups.setdefault(sample["defect_type"], [])
        if len(group) < self.num_samples:
            group.append(sample)
        for role, better in ((HIGHEST, float.__gt__), (LOWEST, float.__lt__)):
            if role not in self.extremes or better(sample["score"], self.extremes[role]["score"]):
                self.extremes[role] = sample

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        recon = outputs.get("reconstruction")
        for i, defect_type in enumerate(batch[T.DEFECT_TYPE]):
            path = batch[T.IMAGE_PATH][i]
            sample: Sample = {
                "key": path,
                "defect_type": defect_type,
                "image": batch[T.IMAGE][i].cpu(),
                "gt_mask": batch[T.GT_MASK][i].cpu(),
                "map": outputs["anomaly_map"][i].cpu(),
                "score": float(outputs["pred_score"][i]),
                "recon": None if recon is None else recon[i].cpu(),
                "name": f"{defect_type}_{Path(path).stem}",
            }
            self._keep(sample)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if self.groups:  # no local logger dir (MLflow on a database): the run dir
            self._draw(trainer, pl_module, Path(log_dir or trainer.default_root_dir))

    @rank_zero_only
    def _draw(self, trainer: Trainer, pl_module: LightningModule, log_dir: Path) -> None:
        picked = pick_samples(self.groups, self.extremes, self.num_samples)
        maps = torch.stack([s["map"] for _, s in picked])
        vmin, vmax = float(maps.min()), float(maps.max())
        pixel_t = getattr(pl_module, "pixel_threshold", math.nan)
        image_t = getattr(pl_module, "image_threshold", math.nan)
        out_dir = log_dir / "sample"
        for idx, (role, s) in enumerate(picked):
            verdict = "anomalous" if s["score"] >= image_t else "normal"
            prefix = f"{role.split()[0]}_" if role else ""
            fig = sample_figure(
                s["image"],
                s["map"],
                vmin,
                vmax,
                gt_mask=s["gt_mask"],
                pred_mask=None if math.isnan(pixel_t) else s["map"] >= pixel_t,
                reconstruction=s["recon"],
                title=f"{s['name']}  score {s['score']:.4g}  -> {verdict}"
                + (f"  ({role} of the test set)" if role else ""),
            )
            if self.log_to_tensorboard and isinstance(trainer.logger, TensorBoardLogger):
                trainer.logger.experiment.add_image(
                    f"test/sample_{idx}",
                    figure_to_array(fig),
                    trainer.global_step,
                    dataformats="HWC",
                )
            save_figure(fig, out_dir / f"{idx:02d}_{prefix}{s['name']}.png")
        plt.close("all")
