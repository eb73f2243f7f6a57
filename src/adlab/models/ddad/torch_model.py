"""DDAD building blocks (Mousakhan, Brox, Tayyub, arXiv 2305.15956): plain torch, no Lightning.

Reimplemented from the paper and the official code (github.com/arimousa/DDAD @ 4323a15,
``reconstruction.py``, ``anomaly_map.py``, ``feature_extractor.py``; read, not copied). The
sampler and the conditioning hook are shared (:func:`adlab.diffusion.reconstruct`,
:func:`adlab.diffusion.ddad_condition`); DDAD adds the map and the domain-adaptation loss here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from adlab.synthesis.noise import NoiseFn, gaussian_noise


class RepeatedNoise:
    """A ``NoiseFn`` that draws noise for one image and repeats it over the batch.

    Used for the test-time sampler: with a seeded generator every image gets the same noise, so
    its reconstruction, map and score never depend on its position in the batch, the batch size
    or the other images (the official code draws i.i.d. noise per batch).

    Args:
        base: Noise for a single image (default: Gaussian).
    """

    def __init__(self, base: NoiseFn = gaussian_noise) -> None:
        self.base = base

    def __call__(
        self, like: Tensor, t: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Noise ``(B, C, H, W)`` with every sample equal to one draw ``(1, C, H, W)``."""
        one = self.base(like[:1], None if t is None else t[:1], generator)
        return one.expand_as(like).clone()


def pixel_distance(x: Tensor, x0: Tensor) -> Tensor:
    """D_p = channel mean of ``|x0 - x|`` (paper eq. 10).

    Args:
        x: ``(B, C, H, W)`` input in [-1, 1].
        x0: ``(B, C, H, W)`` reconstruction in [-1, 1].

    Returns:
        ``(B, 1, H, W)``.
    """
    return (x0 - x).abs().mean(dim=1, keepdim=True)


def feature_distance(
    feats_x: Sequence[Tensor], feats_x0: Sequence[Tensor], size: tuple[int, int]
) -> Tensor:
    """D_f = sum over layers of ``1 - cos(phi_j(x), phi_j(x0))`` along channels (paper eq. 11).

    Every feature is first averaged over its 3x3 neighbourhood (stride 1, zero padding, as the
    official ``AvgPool2d(3, 1, 1)``); each layer's map is upsampled bilinearly
    (``align_corners=True``) to ``size`` before the sum.

    Args:
        feats_x: Per layer ``(B, C_j, h_j, w_j)`` features of the input.
        feats_x0: The same layers for the reconstruction.
        size: Output ``(H, W)``.

    Returns:
        ``(B, 1, H, W)``.
    """
    total = 0
    for f_x, f_x0 in zip(feats_x, feats_x0, strict=True):
        f_x, f_x0 = (F.avg_pool2d(f, 3, stride=1, padding=1) for f in (f_x, f_x0))
        distance = 1 - F.cosine_similarity(f_x, f_x0, dim=1).unsqueeze(1)
        total = total + F.interpolate(distance, size=size, mode="bilinear", align_corners=True)
    return total


def combine_distances(
    d_f: Tensor, d_p: Tensor, v: float, ratio: Tensor | float | None = None, eps: float = 1e-8
) -> Tensor:
    """Anomaly map ``A = D_f + v (max D_f / max D_p) D_p`` (paper eq. 12).

    The official code takes both maxima over the whole test batch, which makes a score depend on
    the other images in its batch. Here the ratio is given (calibrated on normal training
    images), or, if None, taken per image; a per-image ratio scales the pixel term to the
    image's own D_f, so the image score then carries little of D_p's level.

    Args:
        d_f: ``(B, 1, H, W)`` feature distance.
        d_p: ``(B, 1, H, W)`` pixel distance.
        v: Weight of the pixel term.
        ratio: Fixed ``max D_f / max D_p``, or None for per-image maxima.
        eps: Guards against an exact reconstruction (``max D_p = 0``).

    Returns:
        ``(B, 1, H, W)``.
    """
    if ratio is not None:
        return d_f + v * ratio * d_p
    max_f = d_f.flatten(1).amax(dim=1)
    max_p = d_p.flatten(1).amax(dim=1).clamp(min=eps)
    ratio = rearrange(max_f / max_p, "b -> b 1 1 1")
    return d_f + v * ratio * d_p


def flat_cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos`` between whole feature maps flattened per sample: ``(B, ...) -> (B,)``."""
    return 1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


def domain_adaptation_loss(
    phi_x0: Sequence[Tensor],
    phi_y: Sequence[Tensor],
    phibar_x0: Sequence[Tensor],
    phibar_y: Sequence[Tensor],
    lam: float,
) -> Tensor:
    """Feature-extractor fine-tuning loss (paper eq. 13-14, official ``feature_extractor.py``).

    ``L = sum_j [(1 - cos(phi_j(x0), phi_j(y))) + lam (1 - cos(phi_j(y), phibar_j(y)))
    + lam (1 - cos(phi_j(x0), phibar_j(x0)))]``, each cosine between whole flattened maps of one
    sample, averaged over the batch. ``phi`` is trained, ``phibar`` the frozen original.

    Args:
        phi_x0: Per layer ``(B, C_j, h_j, w_j)`` adapted features of the reconstructions x0.
        phi_y: Adapted features of the targets y.
        phibar_x0: Frozen features of x0.
        phibar_y: Frozen features of y.
        lam: Weight of the two terms keeping phi close to phibar (paper: 0.1 MVTec, 0.01 VisA).

    Returns:
        Scalar loss.
    """
    total = 0
    for a_x0, a_y, b_x0, b_y in zip(phi_x0, phi_y, phibar_x0, phibar_y, strict=True):
        layer = (
            flat_cosine_distance(a_x0, a_y)
            + lam * flat_cosine_distance(a_y, b_y)
            + lam * flat_cosine_distance(a_x0, b_x0)
        )
        total = total + layer.mean()
    return total
