"""Small convolutional classifier (normal vs anomalous) with a class activation map.

Seed: github.com/Pchaewon/Anormaly-detection-AI-models @ 9da4683 ``model/CNN.py``: conv3x3
3->32 (no padding), ReLU, maxpool 4, conv3x3 32->64, ReLU, maxpool 4, flatten (64 x 15 x 15 at
256 px), Linear -> 256, ReLU, Linear -> 2. Changes: an adaptive average pool to ``pool_size``
before the flatten (an identity at 256 px with the defaults, so the seed network is unchanged
there, and any other input size works), widths as parameters, and a class activation map.
"""

from __future__ import annotations

from typing import NamedTuple

from einops import rearrange
from torch import Tensor, nn


class CNNOutput(NamedTuple):
    """Attributes: ``logits (B, 2)`` (class 1 = anomalous), ``cam (B, 1, h, w)`` (pooled grid)."""

    logits: Tensor
    cam: Tensor


class CNNClassifier(nn.Module):
    """Seed CNN classifier with adaptive pooling and an anomaly-class activation map.

    The head ``Linear -> ReLU -> Linear`` is piecewise linear in the pooled features ``f``, so
    the anomaly logit margin decomposes exactly over the pooled grid:
    ``l_1 - l_0 = sum_{c, y, x} g_{c,y,x} f_{c,y,x} + const`` with
    ``g = W_1^T (1[z > 0] * (w_{2,1} - w_{2,0}))`` (gradient x activation, computed in closed form,
    so no autograd is needed at test time). The CAM is that sum over channels, per cell.

    Args:
        in_channels: Image channels.
        widths: Channels of the conv stages (seed: 32, 64).
        kernel_size: Conv kernel size, no padding (seed: 3).
        pool: Max-pool size after each conv (seed: 4).
        pool_size: Side of the adaptive average pool before the flatten (seed: 15 at 256 px).
        hidden: Width of the hidden Linear layer (seed: 256).
        num_classes: Output classes (2: normal, anomalous).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] = (32, 64),
        kernel_size: int = 3,
        pool: int = 4,
        pool_size: int = 15,
        hidden: int = 256,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        chans = (in_channels, *widths)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(pool),
            ]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool_size))
        self.fc1 = nn.Linear(widths[-1] * pool_size**2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> CNNOutput:
        """``(B, C, H, W)`` in [0, 1] -> :class:`CNNOutput` (normalised to [-1, 1] inside)."""
        f = self.features(x * 2 - 1)
        z = self.fc1(rearrange(f, "b c h w -> b (c h w)"))
        logits = self.fc2(z.relu())
        direction = self.fc2.weight[1] - self.fc2.weight[0]  # (hidden,)
        g = ((z > 0) * direction) @ self.fc1.weight  # d(l_1 - l_0) / d f, (B, C * h * w)
        g = rearrange(g, "b (c h w) -> b c h w", c=f.shape[1], h=f.shape[2])
        return CNNOutput(logits, (g * f).sum(dim=1, keepdim=True))
