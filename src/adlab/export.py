"""Export a trained model for deployment: ONNX graph + JSON, checked against the module.

The ONNX graph is ``images (B, 3, H, W) float32 in [0, 1] -> (anomaly_map (B, 1, H, W),
score (B,))``: the method's normalisation, network, map post-processing (smoothing, resize) and
score rule, i.e. :meth:`AnomalyModule.evaluate_images` traced. The JSON beside it
(:class:`adlab.deploy.DeployInfo`) holds the resize / crop before the graph and the thresholds
after it. Every export is run once in onnxruntime against the module on the same images and
refused if the maps or scores differ by more than ``atol``.

Methods whose scoring is not a pure function of the images cannot be traced; they are refused
with what blocks them (:func:`export_blocker`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adlab.checkpoint import Restored, config_digest
from adlab.deploy import DeployInfo
from adlab.diffusion import DiffusionScheduler
from adlab.models.base import AnomalyModule

log = logging.getLogger(__name__)
OPSET = 17
PARITY_ATOL = 1e-4
DIFFUSION_BLOCKER = (
    "its score comes from a stochastic diffusion sampling loop: the noise is drawn inside "
    "adlab.diffusion.reconstruct from a seeded torch.Generator, which ONNX cannot reproduce, and "
    "the loop does not take its noise as an input yet, so an exported graph could not match "
    "the Lightning model"
)


class ExportError(RuntimeError):
    """The model cannot be exported, or the export disagrees with the module."""


def export_blocker(model: AnomalyModule) -> str | None:
    """Why ``model`` cannot be exported to ONNX, or None if it can.

    A method states it with the class attribute ``export_blocker``; modules that hold a
    :class:`~adlab.diffusion.DiffusionScheduler` sample with seeded noise and are refused.
    """
    if type(model).export_blocker:
        return type(model).export_blocker
    if any(isinstance(m, DiffusionScheduler) for m in model.modules()):
        return DIFFUSION_BLOCKER
    return None


class ExportWrapper(nn.Module):
    """``images -> (anomaly_map, score)`` of a module, as traced into the graph.

    Args:
        model: the trained module (eval mode).
    """

    def __init__(self, model: AnomalyModule) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 1, H, W)`` map and ``(B,)`` score."""
        out = self.model.evaluate_images(images)
        return out.anomaly_map, out.pred_score


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime CPU session (deterministic: one thread, no graph rewrites that reorder)."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError(
            "ONNX inference needs onnxruntime (pip install onnxruntime, or adlab[dev])"
        ) from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, images: Tensor) -> tuple[Tensor, Tensor]:
    """Map ``(B, 1, H, W)`` and score ``(B,)`` of images ``(B, 3, H, W)`` in [0, 1]."""
    anomaly_map, score = session.run(None, {"images": images.float().cpu().numpy()})
    return torch.from_numpy(anomaly_map), torch.from_numpy(score)


@torch.no_grad()
def parity(model: AnomalyModule, session: Any, images: Tensor) -> dict[str, float]:
    """Max absolute differences between the module and the ONNX graph on ``images``."""
    out = model.evaluate_images(images)
    onnx_map, onnx_score = run_onnx(session, images)
    return {
        "max_abs_map_diff": float((out.anomaly_map.cpu() - onnx_map).abs().max()),
        "max_abs_score_diff": float((out.pred_score.cpu() - onnx_score).abs().max()),
    }


def probe_images(info: DeployInfo, batch: int, seed: int = 0) -> Tensor:
    """``(batch, 3, H, W)`` seeded uniform images at the network's input size."""
    size = (info.center_crop,) * 2 if info.center_crop else info.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=generator)


def _trace(model: AnomalyModule, example: Tensor, path: Path, opset: int) -> tuple[str, int]:
    """Write the graph with the TorchScript exporter, or ``torch.export`` where it lacks an op.

    The TorchScript exporter folds constant branches (e.g. DMAD's "calibrated?" checks) that
    ``torch.export`` refuses as data-dependent; ``torch.export`` decomposes ops the former does
    not support (e.g. an adaptive pool to a size that does not divide the input, CNN at 32 px).

    Returns:
        The exporter that wrote ``path`` (``"torchscript"`` or ``"dynamo"``) and its opset.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model).eval()  # the exporter restores the wrapper's mode afterwards
    names = {"input_names": ["images"], "output_names": ["anomaly_map", "score"]}
    axes = {"images": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on constant branches, deprecations
        try:
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                **names,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
            return "torchscript", opset
        except torch.onnx.errors.OnnxExporterError as err:
            log.info("TorchScript exporter failed (%s); trying torch.export", err)
        finally:
            model.eval()
        batch = {"images": {0: torch.export.Dim("batch")}}
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            **names,
            dynamic_shapes=batch,
            opset_version=max(opset, 18),
            dynamo=True,
        )
        model.eval()
        return "dynamo", max(opset, 18)


def export_onnx(
    restored: Restored,
    path: str | Path,
    ckpt_path: str | Path = "",
    opset: int = OPSET,
    atol: float = PARITY_ATOL,
) -> dict[str, Any]:
    """Write ``path`` (.onnx) and ``path.with_suffix('.json')``; return the JSON's content.

    Raises:
        ExportError: the method cannot be exported, or onnxruntime disagrees with the module by
            more than ``atol`` on probe images (batch sizes 2 and 3: the batch axis is dynamic).
    """
    model, meta = restored.model.eval().cpu(), restored.meta
    blocker = export_blocker(model)
    if blocker:
        raise ExportError(f"{meta['model_name']} cannot be exported to ONNX: {blocker}")
    info = DeployInfo.from_module(model, meta, ckpt_path)
    path = Path(path)
    exporter, opset = _trace(model, probe_images(info, 2), path, opset)
    session = onnx_session(path)
    diffs = [parity(model, session, probe_images(info, n, seed=n)) for n in (2, 3)]
    worst = {k: max(d[k] for d in diffs) for k in diffs[0]}
    if max(worst.values()) > atol or not np.isfinite(list(worst.values())).all():
        raise ExportError(
            f"{path}: onnxruntime disagrees with the Lightning model ({worst}, allowed {atol})"
        )
    extra = {
        "onnx": path.name,
        "inputs": {"images": "float32 (B, 3, H, W) in [0, 1], after resize and center_crop"},
        "outputs": {"anomaly_map": "float32 (B, 1, H, W)", "score": "float32 (B,)"},
        "opset": opset,
        "exporter": exporter,
        "ckpt_path": str(ckpt_path),
        "config_sha1": meta.get("config_sha1") or config_digest(meta),
        "parity": worst,
    }
    info.to_json(path.with_suffix(".json"), **extra)
    log.info("exported %s (parity %s)", path, worst)
    return extra
