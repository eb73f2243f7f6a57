"""``run(cfg)``: score new images with a trained model (``python predict.py``).

``backend=lightning`` restores the module from ``ckpt_path`` alone
(:func:`adlab.checkpoint.restore`); ``backend=onnx`` runs the exported graph in onnxruntime
(``onnx_path``, default: ``ckpt_path`` with ``.onnx``) with the JSON (and, for diffusion
methods, the recorded sampling noise) beside it, without Lightning or the model code. Both write
the same outputs (:class:`adlab.deploy.OutputWriter`): per image ``masks/<name>.png`` and
``overlays/<name>.png`` at the original image size, ``<name>`` being the image's path relative
to ``input``, ``predictions.csv`` with the thresholds used, and ``index.html``: the predictions
page (thumbnails, a live threshold slider, a score histogram; :mod:`adlab.predictions_page`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from adlab.deploy import DeployInfo, OutputWriter, load_batch, output_names, resolve_inputs

if TYPE_CHECKING:
    from adlab.checkpoint import Restored

log = logging.getLogger(__name__)
Scorer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``images (B, 3, H, W) in [0, 1] -> (anomaly_map (B, 1, H, W), score (B,))``."""


def _device(name: str) -> torch.device:
    if name in ("auto", "gpu"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def restore_model(ckpt_path: str | Path, trust: bool = False) -> Restored:
    """:func:`adlab.checkpoint.restore` under its earlier name, which scripts outside the
    package import from here (e.g. ``../shared/findings/dmad_field_probe.py``).

    Returns:
        ``(model, ckpt)``: the module in eval mode on CPU and the checkpoint dict.
    """
    from adlab.checkpoint import restore

    return restore(ckpt_path, trust)


def lightning_scorer(cfg: DictConfig) -> tuple[Scorer, DeployInfo]:
    """The restored module's :meth:`evaluate_images` and its :class:`DeployInfo`."""
    from adlab.checkpoint import restore

    restored = restore(cfg.ckpt_path, bool(cfg.get("trust_checkpoint", False)))
    info = DeployInfo.from_module(restored.model, restored.meta, cfg.ckpt_path)
    device = _device(cfg.accelerator)
    model = restored.model.to(device)

    @torch.no_grad()
    def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model.evaluate_images(images.to(device))
        return out.anomaly_map.cpu(), out.pred_score.cpu()

    return score, info


def onnx_scorer(cfg: DictConfig) -> tuple[Scorer, DeployInfo]:
    """An onnxruntime session of the exported graph and the JSON written beside it."""
    from adlab.export import onnx_session, run_onnx

    path = Path(cfg.get("onnx_path") or Path(cfg.ckpt_path).with_suffix(".onnx"))
    sidecar = path.with_suffix(".json")
    for needed in (path, sidecar):
        if not needed.is_file():
            raise FileNotFoundError(
                f"backend=onnx needs {needed}; write it with python export.py "
                f"ckpt_path={cfg.get('ckpt_path')} format=onnx (or set onnx_path=FILE.onnx)"
            )
    session = onnx_session(path)
    noise_file = json.loads(sidecar.read_text()).get("noise")  # diffusion methods' draws
    noise = None if noise_file is None else np.load(path.parent / noise_file)
    return (lambda images: run_onnx(session, images, noise)), DeployInfo.from_json(sidecar)


BACKENDS = {"lightning": lightning_scorer, "onnx": onnx_scorer}


def run(cfg: DictConfig) -> pd.DataFrame:
    """Predict every image of ``cfg.input``; write and return the predictions table."""
    if cfg.backend not in BACKENDS:
        raise ValueError(f"backend={cfg.backend!r}: expected one of {', '.join(BACKENDS)}")
    score, info = BACKENDS[cfg.backend](cfg)
    pairs = resolve_inputs(cfg.input)
    names = output_names([name for _, name in pairs])
    writer = OutputWriter(cfg.output_dir, info, title=f"{info.model_name} on {cfg.input}")
    for start in range(0, len(pairs), cfg.batch_size):
        chunk = range(start, min(start + cfg.batch_size, len(pairs)))
        images, originals = load_batch([pairs[i][0] for i in chunk], info)
        maps, scores = score(images)
        for j, i in enumerate(chunk):
            writer.write(pairs[i][0], names[i], originals[j], maps[j], float(scores[j]))
    table = writer.finish()
    log.info("%d predictions written to %s", len(table), writer.output_dir)
    return table
