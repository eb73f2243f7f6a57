"""Write predictions batch by batch: masks, overlays, and ``predictions.csv`` at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from adlab import types as T
from adlab.results import atomic_write_csv
from adlab.viz import heatmap_overlay


class PredictionWriter(BasePredictionWriter):
    """Per image: ``masks/<stem>_mask.png`` and ``overlays/<stem>.png``; then the CSV table.

    Args:
        output_dir: where to write.
    """

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.rows: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []
        for sub in ("masks", "overlays"):
            (self.output_dir / sub).mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for i, path in enumerate(prediction[T.IMAGE_PATH]):
            stem = Path(path).stem
            mask = prediction["pred_mask"][i, 0].to("cpu").byte().mul(255).numpy()
            Image.fromarray(mask).save(self.output_dir / "masks" / f"{stem}_mask.png")
            amap = prediction["anomaly_map"][i].cpu()
            overlay = heatmap_overlay(batch[T.IMAGE][i], amap, float(amap.min()), float(amap.max()))
            Image.fromarray((overlay * 255).round().astype("uint8")).save(
                self.output_dir / "overlays" / f"{stem}.png"
            )
            self.rows.append(
                {
                    "path": path,
                    "score": float(prediction["pred_score"][i]),
                    "is_anomalous": bool(prediction["pred_label"][i]),
                }
            )

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        table = pd.DataFrame(self.rows, columns=["path", "score", "is_anomalous"])
        atomic_write_csv(table, self.output_dir / "predictions.csv")
