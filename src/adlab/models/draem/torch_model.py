"""DRAEM networks (Zavrtanik et al., ICCV 2021, sec. 3.1-3.2).

Ported from github.com/VitjanZ/DRAEM @ 2dbf673 ``model_unet.py`` (MIT License): same layers,
widths and order, so the official checkpoints map one to one (modulo key names). Changes: widths
are constructor parameters, the weight init of ``train_DRAEM.py`` is applied in the constructors,
and ``DraemModel.forward`` returns one type (:class:`DraemOutput`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _block(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers."""
    return nn.Sequential(*_conv_bn_relu(c_in, c_mid), *_conv_bn_relu(c_mid, c_out))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Bilinear x2 upsampling (align_corners=True) then conv + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        *_conv_bn_relu(c_in, c_out),
    )


def init_weights(module: nn.Module) -> None:
    """Official init (``train_DRAEM.py``): conv N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _check_size(x: Tensor, stride: int, name: str) -> None:
    h, w = x.shape[-2:]
    if h % stride or w % stride:
        raise ValueError(
            f"{name} input size {h}x{w} must be divisible by {stride}; "
            "set dataset.image_size accordingly."
        )


class ReconstructiveSubNetwork(nn.Module):
    """Encoder-decoder without skip connections: ``I_a -> I_r`` (sec. 3.1).

    Encoder: 5 double-conv blocks (widths b, 2b, 4b, 8b, 8b) with 4 max-pools; decoder: 4
    upsampling stages back to width b, then a linear 3x3 conv. 69.0 M parameters at b = 128.

    Args:
        in_channels: Input image channels.
        out_channels: Reconstruction channels.
        base_width: b (paper: 128).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, base_width: int = 128) -> None:
        super().__init__()
        b = base_width
        self.encoder = nn.Sequential(
            _block(in_channels, b, b),
            nn.MaxPool2d(2),
            _block(b, 2 * b, 2 * b),
            nn.MaxPool2d(2),
            _block(2 * b, 4 * b, 4 * b),
            nn.MaxPool2d(2),
            _block(4 * b, 8 * b, 8 * b),
            nn.MaxPool2d(2),
            _block(8 * b, 8 * b, 8 * b),
        )
        self.decoder = nn.Sequential(
            _up(8 * b, 8 * b),
            _block(8 * b, 8 * b, 4 * b),
            _up(4 * b, 4 * b),
            _block(4 * b, 4 * b, 2 * b),
            _up(2 * b, 2 * b),
            _block(2 * b, 2 * b, b),
            _up(b, b),
            _block(b, b, b),
            nn.Conv2d(b, out_channels, 3, padding=1),
        )
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [0, 1], H and W multiples of 16 -> ``(B, C_out, H, W)`` (linear)."""
        _check_size(x, 16, "ReconstructiveSubNetwork")
        return self.decoder(self.encoder(x))


class DiscriminativeSubNetwork(nn.Module):
    """U-Net segmenting anomalies from ``concat(I_r, I_a)`` (sec. 3.2).

    Encoder: 6 double-conv blocks (widths c, 2c, 4c, 8c, 8c, 8c) with 5 max-pools; decoder: 5
    upsampling stages, each concatenated with the encoder block of its resolution. 28.4 M
    parameters at c = 64.

    Args:
        in_channels: Input channels (paper: 6 = reconstruction + input).
        out_channels: Classes (paper: 2, channel 1 = anomalous).
        base_width: c (paper: 64).
    """

    def __init__(self, in_channels: int = 6, out_channels: int = 2, base_width: int = 64) -> None:
        super().__init__()
        c = base_width
        enc = [(in_channels, c), (c, 2 * c), (2 * c, 4 * c), (4 * c, 8 * c), (8 * c, 8 * c)]
        enc.append((8 * c, 8 * c))
        self.encoder = nn.ModuleList(_block(a, b, b) for a, b in enc)
        self.pool = nn.MaxPool2d(2)
        # (upsampling in -> out, skip channels) from the bottleneck up to full resolution
        dec = [(8 * c, 8 * c, 8 * c), (8 * c, 4 * c, 8 * c), (4 * c, 2 * c, 4 * c)]
        dec += [(2 * c, c, 2 * c), (c, c, c)]
        self.ups = nn.ModuleList(_up(a, b) for a, b, _ in dec)
        self.blocks = nn.ModuleList(_block(b + s, b, b) for _, b, s in dec)
        self.head = nn.Conv2d(c, out_channels, 3, padding=1)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)``, H and W multiples of 32 -> logits ``(B, C_out, H, W)``."""
        _check_size(x, 32, "DiscriminativeSubNetwork")
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class DraemOutput(NamedTuple):
    """Attributes: ``reconstruction (B, 3, H, W)`` (linear output), ``logits (B, 2, H, W)``."""

    reconstruction: Tensor
    logits: Tensor


class DraemModel(nn.Module):
    """Reconstructive then discriminative subnetwork: ``I -> (I_r, Disc(concat(I_r, I)))``.

    Args:
        reconstructive: ``I_a -> I_r``.
        discriminative: ``concat(I_r, I_a) -> 2-class logits``.
    """

    def __init__(
        self, reconstructive: ReconstructiveSubNetwork, discriminative: DiscriminativeSubNetwork
    ) -> None:
        super().__init__()
        self.reconstructive = reconstructive
        self.discriminative = discriminative

    def forward(self, x: Tensor) -> DraemOutput:
        """``(B, 3, H, W)`` in [0, 1] (H, W multiples of 32) -> :class:`DraemOutput`.

        The reconstruction is not detached: the focal loss also trains the reconstructive net,
        as in the official code.
        """
        reconstruction = self.reconstructive(x)
        logits = self.discriminative(torch.cat([reconstruction, x], dim=1))
        return DraemOutput(reconstruction, logits)
