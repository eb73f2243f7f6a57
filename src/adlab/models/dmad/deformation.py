"""DMAD pyramid deformation module (PDM): CoordConv offset net, four heads, ``grid_sample`` warps.

Liu et al., "Diversity-Measurable Anomaly Detection", CVPR 2023, PPDM variant. Written from the
official code (github.com/FlappyPeggy/DMAD @ b3fefbb, ``DMAD-PPDM/resnet.py``: ``AddCoords2d``,
``CoordConv2d``, ``OffsetNet``; read, not copied). Fields are displacements in normalised
``grid_sample`` coordinates, channel 0 = x, channel 1 = y.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


# ---------------------------------------------------------------------------------- warping
def identity_grid(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """``grid_sample`` identity grid ``(1, H, W, 2)``: (x, y) in [-1, 1], ``align_corners=True``."""
    ys = torch.linspace(-1.0, 1.0, height, device=device)
    xs = torch.linspace(-1.0, 1.0, width, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)


@lru_cache(maxsize=16)
def _cached_identity_grid(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """:func:`identity_grid` built once per (size, device, dtype) and reused (read-only)."""
    return identity_grid(height, width, device).to(dtype)


def upsample_field(field: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize a field ``(B, C, h, w) -> (B, C, *size)`` (align_corners=True)."""
    if tuple(field.shape[-2:]) == tuple(size):
        return field
    return F.interpolate(field, size=size, mode="bilinear", align_corners=True)


def warp(x: Tensor, field: Tensor) -> Tensor:
    """Sample ``x`` at ``p + field(p)`` (bilinear, zero padding, align_corners=True).

    Args:
        x: ``(B, C, H, W)`` image, feature or anomaly map.
        field: ``(B, 2, h, w)`` displacement in normalised coordinates (channel 0 = x, 1 = y;
            one pixel = ``2 / (W - 1)``); upsampled to ``(H, W)`` if needed. The sampling grid is
            clamped to [-1, 1] as in the official code.

    Returns:
        ``(B, C, H, W)`` warped ``x``.
    """
    if field.ndim != 4 or field.shape[1] != 2 or field.shape[0] != x.shape[0]:
        raise ValueError(
            f"field must be (B, 2, h, w) with B = {x.shape[0]}, got {tuple(field.shape)}"
        )
    height, width = x.shape[-2:]
    field = upsample_field(field, (height, width)).to(x.dtype)
    grid = _cached_identity_grid(height, width, x.device, x.dtype) + rearrange(
        field, "b c h w -> b h w c"
    )
    return F.grid_sample(
        x, grid.clamp(-1.0, 1.0), mode="bilinear", padding_mode="zeros", align_corners=True
    )


def field_magnitude(field: Tensor) -> Tensor:
    """Per-pixel Euclidean norm of a displacement field: ``(B, 2, H, W) -> (B, 1, H, W)``.

    ``vector_norm`` has a zero (sub)gradient at a zero vector; ``sqrt(sum(f ** 2))`` as in the
    official code gives NaN gradients there (zero-initialised heads, zero offset limits).
    """
    return torch.linalg.vector_norm(field, dim=1, keepdim=True)


# ---------------------------------------------------------------------------------- offset net
def _axis_coords(n: int, cell: int) -> tuple[Tensor, Tensor]:
    """Fine and coarse coordinate ramps ``(n,)`` of one axis (official ``AddCoords2d``)."""
    if n % cell or n // cell < 2:
        raise ValueError(f"CoordConv needs a side divisible by {cell} and >= {2 * cell}, got {n}")
    coarse = torch.div(torch.arange(n), cell, rounding_mode="floor") / (n // cell - 1)
    fine = torch.arange(n) / (n - 1) - coarse
    return 2 * fine - 1, 2 * coarse - 1


def coord_channels(height: int, width: int, cell: int = 4) -> Tensor:
    """CoordConv channels ``(1, 4, H, W)``: (fine, coarse) row ramps, then (fine, coarse) columns.

    The coarse ramp is the ``cell``-pixel cell index scaled to [-1, 1]; the fine one is the global
    ramp minus the coarse one, mapped by ``2 t - 1`` (position inside the cell).
    """
    rows = torch.stack(_axis_coords(height, cell))  # (2, H)
    cols = torch.stack(_axis_coords(width, cell))  # (2, W)
    rows = rows[:, :, None].expand(2, height, width)
    cols = cols[:, None, :].expand(2, height, width)
    return torch.cat((rows, cols)).unsqueeze(0)


class CoordConv(nn.Module):
    """Convolution (no bias, 'same' padding) over the input plus :func:`coord_channels`.

    The channels are a non-persistent buffer ``coords`` ``(1, 4, H, W)``, rebuilt only when the
    input's size, dtype or device changes, so a forward pass copies nothing from the host.
    """

    coords: Tensor

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, cell: int = 4):
        super().__init__()
        self.cell = cell
        self.conv = nn.Conv2d(
            in_channels + 4, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.register_buffer("coords", torch.empty(1, 4, 0, 0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H, W)``."""
        coords = self.coords
        if (
            coords.shape[-2:] != x.shape[-2:]
            or coords.dtype != x.dtype
            or coords.device != x.device
        ):
            coords = self.coords = coord_channels(*x.shape[-2:], self.cell).to(x)
        return self.conv(torch.cat((x, coords.expand(x.shape[0], -1, -1, -1)), dim=1))


class _ResBlock(nn.Module):
    """``x + conv1x1(ReLU(BN(conv3x3(ReLU(x)))))`` (official OffsetNet ResBlock with BN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.convs(x)


def _offset_head(in_channels: int, width: int, levels: int) -> nn.Sequential:
    """``levels`` stride-2 conv3x3+BN+ReLU, then conv3x3 to 2 channels and tanh."""
    layers: list[nn.Module] = []
    for i in range(levels):
        layers += [
            nn.Conv2d(in_channels if i == 0 else width, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.Conv2d(width if levels else in_channels, 2, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


class Deformation(NamedTuple):
    """Output of :class:`OffsetNet`. Fields are ``(B, 2, H, W)`` normalised displacements.

    Attributes:
        warped: ``(B, C, H, W)`` x2 = warp(warp(x, A1), A2), the pre-deformed input.
        forward_coarse: A1. forward_fine: A2. inverse_coarse: B1. inverse_fine: B2.
    """

    warped: Tensor
    forward_coarse: Tensor
    forward_fine: Tensor
    inverse_coarse: Tensor
    inverse_fine: Tensor

    def inverse_warp(self, x: Tensor) -> Tensor:
        """Map ``x`` ``(B, C, H', W')`` in warped coordinates back: warp(warp(x, B2), B1)."""
        return warp(warp(x, self.inverse_fine), self.inverse_coarse)

    def inverse_magnitude(self) -> Tensor:
        """Deformation cue O = warp(|B2|, B1) + |B1|, ``(B, 1, H, W)`` (normalised units)."""
        return warp(field_magnitude(self.inverse_fine), self.inverse_coarse) + field_magnitude(
            self.inverse_coarse
        )


class OffsetNet(nn.Module):
    """Pyramid deformation module (PDM) of DMAD-PPDM: four offset heads on CoordConv features.

    Args:
        in_channels: Image channels.
        width: Feature width (official: 64); the shared features F have ``2 * width`` channels.
        coarse_levels: Stride-2 convs of the coarse heads (official: 3, fields at 1/8).
        fine_levels: Stride-2 convs of the fine heads (official: 1, fields at 1/2).
        coarse_fraction: Largest coarse displacement as a fraction of the image side (official:
            8/256, i.e. 2 * 8/256 in ``grid_sample`` units whatever the input size).
        fine_fraction: Largest fine displacement as a fraction of the side (official: 3/256).
        coord_cell: Cell size of the coarse coordinate channels (official: 4).
        zero_init: Zero the last conv of each head, so training starts from identity warps
            (official: False, default PyTorch init).
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        coarse_levels: int = 3,
        fine_levels: int = 1,
        coarse_fraction: float = 8 / 256,
        fine_fraction: float = 3 / 256,
        coord_cell: int = 4,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        for key, value in (("coarse_fraction", coarse_fraction), ("fine_fraction", fine_fraction)):
            if not 0 <= value <= 1:
                raise ValueError(f"OffsetNet {key} must be in [0, 1] (of the side), got {value}")
        self.coarse_fraction, self.fine_fraction = coarse_fraction, fine_fraction
        self.stem = nn.Sequential(
            CoordConv(in_channels, width, 3, coord_cell),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            CoordConv(width, width, 3, coord_cell),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.res = nn.Sequential(_ResBlock(width), nn.BatchNorm2d(width))
        self.forward_coarse = _offset_head(2 * width, width, coarse_levels)
        self.forward_fine = _offset_head(2 * width, width, fine_levels)
        self.inverse_coarse = _offset_head(2 * width, width, coarse_levels)
        self.inverse_fine = _offset_head(2 * width, width, fine_levels)
        if zero_init:
            for head in (
                self.forward_coarse,
                self.forward_fine,
                self.inverse_coarse,
                self.inverse_fine,
            ):
                nn.init.zeros_(head[-2].weight)
                nn.init.zeros_(head[-2].bias)

    def _field(self, head: nn.Module, features: Tensor, fraction: float, size: tuple) -> Tensor:
        """tanh head output scaled to ``fraction`` of the side (s = 2 fraction in normalised
        coordinates, the official constant), at full resolution."""
        return upsample_field(head(features) * (2 * fraction), size)

    def forward(self, x: Tensor) -> Deformation:
        """Estimate the four fields from ``x`` ``(B, C, H, W)`` and warp it coarse then fine."""
        size = tuple(x.shape[-2:])
        stem = self.stem(x)
        features = torch.cat((self.res(stem), stem), dim=1)
        a1 = self._field(self.forward_coarse, features, self.coarse_fraction, size)
        a2 = self._field(self.forward_fine, features, self.fine_fraction, size)
        b1 = self._field(self.inverse_coarse, features, self.coarse_fraction, size)
        b2 = self._field(self.inverse_fine, features, self.fine_fraction, size)
        return Deformation(warp(warp(x, a1), a2), a1, a2, b1, b2)
