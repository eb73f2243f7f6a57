"""The data contract shared by datasets, methods, metrics and callbacks.

Batches are plain dicts whose keys follow anomalib's names:

- ``image``: float32 ``(B, 3, H, W)`` in ``[0, 1]``, not normalised (methods normalise internally).
- ``gt_mask``: float32 ``(B, 1, H, W)`` in ``{0, 1}`` (all zeros for normal images).
- ``gt_label``: int64 ``(B,)``, 0 = normal, 1 = anomalous.
- ``has_mask``: bool ``(B,)``, False for an anomalous image whose mask file is missing (only when
  the datamodule allows it); pixel metrics skip such images.
- ``image_path``: list of ``B`` strings.
- ``defect_type``: list of ``B`` strings (``"good"`` for normal images).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

IMAGE = "image"
GT_MASK = "gt_mask"
GT_LABEL = "gt_label"
HAS_MASK = "has_mask"
IMAGE_PATH = "image_path"
DEFECT_TYPE = "defect_type"

Batch = dict[str, "torch.Tensor | list[str]"]


class AnomalyOutput(NamedTuple):
    """A method's output; higher means more anomalous.

    Raw (``predict_anomaly``) and post-processed (``evaluate_images``, see
    :class:`adlab.postprocess.PostProcessor`) outputs share this type.

    Attributes:
        anomaly_map: ``(B, 1, h, w)`` float: raw, any resolution, unsmoothed; post-processed,
            ``(B, 1, H, W)`` at the input resolution.
        pred_score: ``(B,)`` float image-level score: raw, only for ``score: method`` (else
            None, or ignored); post-processed, always set.
        reconstruction: optional ``(B, 3, H, W)`` in ``[0, 1]`` for methods that reconstruct.
    """

    anomaly_map: torch.Tensor
    pred_score: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
