"""DMAD-PPDM losses and the feature-discrepancy map (official ``Train_mvtec.py``, ``test.py``).

L = L_rd + L_offset + vq_weight * L_vq (official vq_weight 1), with
- L_rd: per level, 1 - cosine between the whole flattened teacher and student maps (per sample,
  batch mean), summed over levels (RD4AD);
- L_offset: mean |A1| + mean |A2| + S(A1) + S(A2) + S(B1) + S(B2) + gamma MSE(x_back, x), with
  x_back = warp(warp(x2, B2), B1) and S the official smoothness filter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from adlab.models.dmad.deformation import field_magnitude
from adlab.models.dmad.torch_model import DMADOutput


def reverse_distillation_loss(teacher: Sequence[Tensor], student: Sequence[Tensor]) -> Tensor:
    """``sum_k mean_b (1 - cos(flatten(E_k), flatten(D_k))``; maps ``(B, C_k, H_k, W_k)``."""
    if len(teacher) != len(student):
        raise ValueError(f"{len(teacher)} teacher maps vs {len(student)} student maps")
    return sum(
        (1 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).mean()
        for e, d in zip(teacher, student, strict=True)
    )


def smoothness(field: Tensor) -> Tensor:
    """Official ``Smooth_Loss`` (ks 3): mean |conv(field, K)|, zero padding.

    K has centre 1 and -1/8 elsewhere and is applied to both channels summed into one output
    (the official filter mixes x and y before the absolute value).

    Args:
        field: ``(B, 2, H, W)``.

    Returns:
        Scalar.
    """
    kernel = torch.full((1, 2, 3, 3), -1.0 / 8, dtype=field.dtype, device=field.device)
    kernel[:, :, 1, 1] = 1.0
    return F.conv2d(field, kernel, padding=1).abs().mean()


def offset_loss(out: DMADOutput, gamma: float = 1.0) -> Tensor:
    """L_offset of the official OffsetNet (fields at full resolution, normalised units)."""
    d = out.deformation
    magnitude = field_magnitude(d.forward_coarse).mean() + field_magnitude(d.forward_fine).mean()
    smooth = sum(
        smoothness(f) for f in (d.forward_coarse, d.forward_fine, d.inverse_coarse, d.inverse_fine)
    )
    x_back = d.inverse_warp(d.warped)
    return magnitude + smooth + gamma * F.mse_loss(x_back, out.inputs)


def dmad_losses(out: DMADOutput, gamma: float = 1.0, vq_weight: float = 1.0) -> dict[str, Tensor]:
    """All terms: ``rd``, ``offset``, ``vq`` and their weighted sum ``loss`` (scalars)."""
    terms = {
        "rd": reverse_distillation_loss(out.teacher, out.student),
        "offset": offset_loss(out, gamma),
        "vq": out.vq_loss,
    }
    terms["loss"] = terms["rd"] + terms["offset"] + vq_weight * terms["vq"]
    return terms


def feature_discrepancy(
    teacher: Sequence[Tensor], student: Sequence[Tensor], size: tuple[int, int]
) -> Tensor:
    """Map M = sum_k upsample(1 - cos_channel(E_k, D_k)) (bilinear, align_corners=True).

    Args:
        teacher: Maps ``(B, C_k, H_k, W_k)``, shallow first.
        student: Same shapes.
        size: Output ``(H, W)``.

    Returns:
        ``(B, 1, H, W)`` in [0, 2 K].
    """
    maps = [
        F.interpolate(
            (1 - F.cosine_similarity(e, d, dim=1)).unsqueeze(1),
            size=size,
            mode="bilinear",
            align_corners=True,
        )
        for e, d in zip(teacher, student, strict=True)
    ]
    return torch.stack(maps).sum(dim=0)
