"""DRAEM losses (eqs. 1-3): the official code's SSIM and focal loss, and kornia's.

Official: VitjanZ/DRAEM @ 2dbf673 (MIT), ``loss.py`` (``SSIM``, ``FocalLoss``; the focal loss is
itself from Hsuxu/Loss_ToolBox-PyTorch). Re-expressed with torch ops, not copied. Measured against
``fixtures/official/draem_nets_tiny.pt`` (``tests/test_fidelity_official.py``). The two
differences from kornia's functions (fixture README, findings 1-2):

- SSIM: the official window is zero-padded (kornia reflects) and the dynamic range L comes from
  the *first* argument (the reconstruction): ``max = 255 if max(x) > 128 else 1``,
  ``min = -1 if min(x) < -0.5 else 0``, ``L = max - min``. The reconstruction head is linear, so
  during training L switches to 2 whenever it dips below -0.5.
- Focal loss: the one-hot target is clamped to ``[smooth, 1 - smooth]`` and ``pt + smooth`` is
  logged, which caps the per-pixel loss at about ``-log(2 smooth)`` (10.8 at 1e-5).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from kornia.losses import focal_loss
from kornia.metrics import ssim
from torch import Tensor

LossVariant = Literal["official", "kornia"]


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    """``(C, 1, size, size)`` normalised Gaussian window (official ``create_window``)."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    window = torch.outer(g, g).to(device=like.device, dtype=like.dtype)
    return window.expand(channels, 1, size, size).contiguous()


def official_ssim(img1: Tensor, img2: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM as DRAEM's ``loss.ssim(img1, img2)``: zero padding, L from ``img1``.

    Args:
        img1: ``(B, C, H, W)``; its range sets the constants (the reconstruction in training).
        img2: ``(B, C, H, W)``.
        window_size: Gaussian window size (official 11; clipped to the image size as there).
        sigma: Gaussian sigma (official 1.5).

    Returns:
        Scalar mean SSIM; the loss is ``1 - official_ssim``.
    """
    max_val = 255.0 if img1.max() > 128 else 1.0
    min_val = -1.0 if img1.min() < -0.5 else 0.0
    L = max_val - min_val
    channels, (height, width) = img1.shape[1], img1.shape[-2:]
    window = _gaussian_window(min(window_size, height, width), sigma, channels, img1)
    pad = window_size // 2

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, window, padding=pad, groups=channels)

    mu1, mu2 = blur(img1), blur(img2)
    sigma1_sq = blur(img1 * img1) - mu1**2
    sigma2_sq = blur(img2 * img2) - mu2**2
    sigma12 = blur(img1 * img2) - mu1 * mu2
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    v1, v2 = 2.0 * sigma12 + c2, sigma1_sq + sigma2_sq + c2
    ssim_map = ((2 * mu1 * mu2 + c1) * v1) / ((mu1**2 + mu2**2 + c1) * v2)
    return ssim_map.mean()


def official_focal_loss(
    probs: Tensor, target: Tensor, gamma: float = 2.0, smooth: float = 1e-5
) -> Tensor:
    """DRAEM's ``FocalLoss()(probs, target)`` with ``alpha=None``: smoothed, mean over pixels.

    ``pt = <clamp(onehot, smooth / (K - 1), 1 - smooth), p> + smooth``,
    ``loss = -(1 - pt)^gamma log(pt)``.

    Args:
        probs: ``(B, K, H, W)`` class probabilities (the official code applies softmax first).
        target: ``(B, 1, H, W)`` or ``(B, H, W)`` class indices.
        gamma: Focusing parameter (paper: 2).
        smooth: Target smoothing (official 1e-5).

    Returns:
        Scalar loss.
    """
    num_classes = probs.shape[1]
    p = rearrange(probs, "b k h w -> (b h w) k")
    one_hot = F.one_hot(target.reshape(-1).long(), num_classes).to(p.dtype)
    if smooth:
        one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    pt = (one_hot * p).sum(dim=1) + smooth
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def draem_losses(
    reconstruction: Tensor,
    logits: Tensor,
    image: Tensor,
    mask: Tensor,
    ssim_window: int = 11,
    focal_gamma: float = 2.0,
    variant: LossVariant = "official",
) -> dict[str, Tensor]:
    """The three DRAEM loss terms (eqs. 1-3).

    Args:
        reconstruction: ``(B, 3, H, W)`` I_r.
        logits: ``(B, 2, H, W)`` discriminative output.
        image: ``(B, 3, H, W)`` clean target I in [0, 1].
        mask: ``(B, 1, H, W)`` simulated anomaly mask M_a in {0, 1}.
        ssim_window: Gaussian SSIM window (sigma 1.5).
        focal_gamma: Focal loss gamma (paper: 2).
        variant: ``"official"`` (the official code's SSIM and smoothed focal loss, which produced
            the paper's numbers) or ``"kornia"`` (reflect-padded SSIM with L = 1, unsmoothed focal).

    Returns:
        ``l2`` (mean squared error), ``ssim`` (1 - mean SSIM) and ``focal`` (softmax focal loss
        with alpha 1 for both classes, mean over pixels), each a scalar.
    """
    if variant == "official":
        ssim_value = official_ssim(reconstruction, image, ssim_window)
        focal = official_focal_loss(logits.softmax(dim=1), mask, focal_gamma)
    elif variant == "kornia":
        ssim_value = ssim(reconstruction, image, ssim_window, max_val=1.0).mean()
        per_pixel = focal_loss(
            logits, mask[:, 0].long(), alpha=None, gamma=focal_gamma, reduction="none"
        )
        focal = per_pixel.sum(dim=1).mean()
    else:
        raise ValueError(f"DRAEM loss variant must be 'official' or 'kornia', got {variant!r}")
    return {"l2": F.mse_loss(reconstruction, image), "ssim": 1.0 - ssim_value, "focal": focal}
