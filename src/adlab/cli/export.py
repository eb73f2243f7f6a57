"""``run(cfg)``: export a checkpoint (``python export.py ckpt_path=... format=onnx``).

Writes ``<output>`` (default: the checkpoint with ``.onnx``) and the JSON beside it; see
:mod:`adlab.export`. Run the result with ``python predict.py backend=onnx``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from adlab.checkpoint import restore
from adlab.export import export_onnx

log = logging.getLogger(__name__)
FORMATS = ("onnx",)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` in ``cfg.format``; return what the JSON beside it records."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r}: expected one of {', '.join(FORMATS)}")
    restored = restore(cfg.ckpt_path, bool(cfg.get("trust_checkpoint", False)))
    output = Path(cfg.get("output") or Path(cfg.ckpt_path).with_suffix(".onnx"))
    info = export_onnx(restored, output, cfg.ckpt_path, cfg.opset, cfg.atol)
    log.info("wrote %s and %s", output, output.with_suffix(".json"))
    return info
