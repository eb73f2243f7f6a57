"""Export a trained model for deployment: ONNX graph + JSON, checked against the module.

The ONNX graph is ``images (B, 3, H, W) float32 in [0, 1] -> (anomaly_map (B, 1, H, W),
score (B,))``: the method's normalisation, network, map post-processing (smoothing, resize) and
score rule, i.e. :meth:`AnomalyModule.evaluate_images` traced. The JSON beside it
(:class:`adlab.deploy.DeployInfo`) holds the resize / crop before the graph and the thresholds
after it. Every export is run once in onnxruntime against the module on the same images and
refused if the maps or scores differ by more than ``atol``.

Diffusion methods draw their sampling noise inside the loop (``scheduler.noise_fn`` with a seeded
generator). They export with the loop unrolled and the noise as a second input, ``noise (K, C, H,
W)``: the K draws one image gets, recorded from the module at batch size 1 with its ``eval_seed``
and stored beside the graph (``<stem>.noise.npy``); every image of a batch gets the same draws.
This equals the module scoring each image alone (and any batch, for batch-independent noise such
as DDAD's ``RepeatedNoise``); the parity check compares exactly that.

Methods whose scoring is not a fixed graph are refused with what blocks them
(:func:`export_blocker`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
SCHEDULERS_BLOCKER = (
    "it holds {n} diffusion schedulers; exporting the sampling noise as an input supports one"
)


class ExportError(RuntimeError):
    """The model cannot be exported, or the export disagrees with the module."""


def export_blocker(model: AnomalyModule) -> str | None:
    """Why ``model`` cannot be exported to ONNX, or None if it can.

    A method states it with the class attribute ``export_blocker``; a module with more than one
    :class:`~adlab.diffusion.DiffusionScheduler` is refused (one noise input is supported).
    """
    if type(model).export_blocker:
        return type(model).export_blocker
    count = len(_schedulers(model))
    return SCHEDULERS_BLOCKER.format(n=count) if count > 1 else None


def _schedulers(model: nn.Module) -> list[DiffusionScheduler]:
    return [m for m in model.modules() if isinstance(m, DiffusionScheduler)]


class NoiseTape:
    """A scheduler's ``noise_fn`` stand-in: records the draws, or serves given ones.

    Args:
        base: the scheduler's own noise function (used while recording).
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.recorded: list[Tensor] = []
        self.replay: Tensor | None = None
        self.used = 0

    def __call__(
        self, like: Tensor, t: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Noise shaped like ``like`` ``(B, C, H, W)``: draw ``used`` of ``replay`` for every
        image, or a fresh draw of ``base`` (its first image recorded)."""
        if self.replay is not None:
            draw = self.replay[self.used : self.used + 1].expand_as(like)
        else:
            draw = self.base(like, t, generator)
            self.recorded.append(draw[:1].detach().clone())
        self.used += 1
        return draw


@contextmanager
def noise_tape(model: AnomalyModule) -> Iterator[NoiseTape | None]:
    """Swap the module's scheduler noise for a :class:`NoiseTape` (None: no scheduler)."""
    schedulers = _schedulers(model)
    if not schedulers:
        yield None
        return
    scheduler = schedulers[0]
    tape = NoiseTape(scheduler.noise_fn)
    scheduler.noise_fn = tape
    try:
        yield tape
    finally:
        scheduler.noise_fn = tape.base


@torch.no_grad()
def record_noise(model: AnomalyModule, image: Tensor) -> Tensor | None:
    """The ``(K, C, H, W)`` draws the module makes scoring one image ``(1, 3, H, W)``."""
    with noise_tape(model) as tape:
        if tape is None:
            return None
        model.evaluate_images(image)
    return torch.cat(tape.recorded) if tape.recorded else None


class ExportWrapper(nn.Module):
    """``images [, noise] -> (anomaly_map, score)`` of a module, as traced into the graph.

    Args:
        model: the trained module (eval mode).
    """

    def __init__(self, model: AnomalyModule) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, 3, H, W)`` in [0, 1] (and the ``(K, C, H, W)`` sampling draws) -> ``(B, 1, H,
        W)`` map and ``(B,)`` score."""
        if noise is None:
            out = self.model.evaluate_images(images)
            return out.anomaly_map, out.pred_score
        with noise_tape(self.model) as tape:
            tape.replay = noise
            out = self.model.evaluate_images(images)
        if tape.used != len(noise):
            raise ExportError(f"the module drew {tape.used} noise tensors, {len(noise)} given")
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


def run_onnx(
    session: Any, images: Tensor, noise: Tensor | np.ndarray | None = None
) -> tuple[Tensor, Tensor]:
    """Map ``(B, 1, H, W)`` and score ``(B,)`` of images ``(B, 3, H, W)`` in [0, 1]."""
    feeds = {"images": images.float().cpu().numpy()}
    if noise is not None:
        feeds["noise"] = np.asarray(noise, dtype=np.float32)
    anomaly_map, score = session.run(None, feeds)
    return torch.from_numpy(anomaly_map), torch.from_numpy(score)


@torch.no_grad()
def reference(model: AnomalyModule, images: Tensor, per_image: bool) -> tuple[Tensor, Tensor]:
    """The module's maps and scores (each image scored alone when ``per_image``)."""
    outs = [model.evaluate_images(x) for x in images.split(1 if per_image else len(images))]
    return torch.cat([o.anomaly_map for o in outs]), torch.cat([o.pred_score for o in outs])


def parity(
    model: AnomalyModule, session: Any, images: Tensor, noise: Tensor | None = None
) -> dict[str, float]:
    """Max absolute differences between the module and the ONNX graph on ``images``."""
    ref_map, ref_score = reference(model, images, per_image=noise is not None)
    onnx_map, onnx_score = run_onnx(session, images, noise)
    return {
        "max_abs_map_diff": float((ref_map.cpu() - onnx_map).abs().max()),
        "max_abs_score_diff": float((ref_score.cpu() - onnx_score).abs().max()),
    }


def probe_images(info: DeployInfo, batch: int, seed: int = 0) -> Tensor:
    """``(batch, 3, H, W)`` seeded uniform images at the network's input size."""
    size = (info.center_crop,) * 2 if info.center_crop else info.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=generator)


def _trace(
    model: AnomalyModule, inputs: tuple[Tensor, ...], path: Path, opset: int
) -> tuple[str, int]:
    """Write the graph with the TorchScript exporter, or ``torch.export`` where it lacks an op.

    The TorchScript exporter folds constant branches (e.g. DMAD's "calibrated?" checks) that
    ``torch.export`` refuses as data-dependent; ``torch.export`` decomposes ops the former does
    not support (e.g. an adaptive pool to a size that does not divide the input, CNN at 32 px).

    Args:
        model: the module. inputs: ``(images,)`` or ``(images, noise)`` examples.
        path: the ``.onnx`` file. opset: ONNX opset (``torch.export`` needs at least 18).

    Returns:
        The exporter that wrote ``path`` (``"torchscript"`` or ``"dynamo"``) and its opset.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportWrapper(model).eval()  # the exporter restores the wrapper's mode afterwards
    names = ["images", "noise"][: len(inputs)]
    kwargs = {"input_names": names, "output_names": ["anomaly_map", "score"]}
    axes = {"images": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on constant branches, deprecations
        try:
            torch.onnx.export(
                wrapper, inputs, str(path), **kwargs, dynamic_axes=axes, opset_version=opset,
                dynamo=False,
            )  # fmt: skip
            return "torchscript", opset
        except torch.onnx.errors.OnnxExporterError as err:
            log.info("TorchScript exporter failed (%s); trying torch.export", err)
        finally:
            model.eval()
        shapes = ({0: torch.export.Dim("batch")}, None)[: len(inputs)]
        torch.onnx.export(
            wrapper, inputs, str(path), **kwargs, dynamic_shapes=shapes,
            opset_version=max(opset, 18), dynamo=True,
        )  # fmt: skip
        model.eval()
        return "dynamo", max(opset, 18)


def _check_parity(
    model: AnomalyModule, path: Path, info: DeployInfo, noise: Tensor | None, atol: float
) -> dict[str, float]:
    """Worst differences over probe batches of 2 and 3 images; raise beyond ``atol``."""
    session = onnx_session(path)
    diffs = [parity(model, session, probe_images(info, n, seed=n), noise) for n in (2, 3)]
    worst = {k: max(d[k] for d in diffs) for k in diffs[0]}
    if not all(np.isfinite(v) and v <= atol for v in worst.values()):
        raise ExportError(
            f"{path}: onnxruntime disagrees with the Lightning model ({worst}, allowed {atol})"
        )
    return worst


def noise_path(path: Path) -> Path:
    """Where the recorded sampling noise of ``<stem>.onnx`` lives: ``<stem>.noise.npy``."""
    return path.with_suffix(".noise.npy")


def export_onnx(
    restored: Restored,
    path: str | Path,
    ckpt_path: str | Path = "",
    opset: int = OPSET,
    atol: float = PARITY_ATOL,
) -> dict[str, Any]:
    """Write ``path`` (.onnx), ``path.with_suffix('.json')`` and, for diffusion methods, the
    noise (:func:`noise_path`); return what the JSON records beyond :class:`DeployInfo`.

    Raises:
        ExportError: the method cannot be exported, or onnxruntime disagrees with the module by
            more than ``atol`` on probe images (batch sizes 2 and 3: the batch axis is dynamic).
    """
    model, meta = restored.model.eval().cpu(), restored.meta
    blocker = export_blocker(model)
    if blocker:
        raise ExportError(f"{meta['model_name']} cannot be exported to ONNX: {blocker}")
    info, path = DeployInfo.from_module(model, meta, ckpt_path), Path(path)
    noise = record_noise(model, probe_images(info, 1))
    inputs = (probe_images(info, 2),) if noise is None else (probe_images(info, 2), noise)
    exporter, opset = _trace(model, inputs, path, opset)
    worst = _check_parity(model, path, info, noise, atol)
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
    if noise is not None:
        np.save(noise_path(path), noise.numpy())
        extra["inputs"]["noise"] = (
            f"float32 {tuple(noise.shape)}: the sampling draws of one image (eval_seed), in "
            f"{noise_path(path).name}; the same for every image of a batch"
        )
        extra["noise"] = noise_path(path).name
    info.to_json(path.with_suffix(".json"), **extra)
    log.info("exported %s (parity %s)", path, worst)
    return extra
