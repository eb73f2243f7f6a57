"""DMAD-PPDM networks (Liu et al., "Diversity-Measurable Anomaly Detection", CVPR 2023).

Information compression (vector quantisation, straight-through estimator), the fusion bottleneck
and the reverse-distillation student decoder behind a frozen teacher, all wired to the pyramid
deformation module (``deformation.py``) in :class:`DMADModel`. Written from the official code
(github.com/FlappyPeggy/DMAD @ b3fefbb, ``DMAD-PPDM/resnet.py`` ``VectorQuantizer`` / ``BN_layer``,
``de_resnet.py``; read, not copied). Widths and depths are parameters derived from the teacher's
channels; with WRN-50-2 the defaults give the official sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from adlab.backbones import FeatureExtractor
from adlab.models.dmad.deformation import Deformation, OffsetNet


class Quantized(NamedTuple):
    """Output of :class:`VectorQuantizer`.

    Attributes:
        quantized: ``(B, D, H, W)`` nearest codes, straight-through (gradient passes to z).
        loss: Scalar ``beta ||sg(q) - z||^2 + ||q - sg(z)||^2`` (MSE means).
        indices: ``(B, H, W)`` int64 code indices.
    """

    quantized: Tensor
    loss: Tensor
    indices: Tensor


class VectorQuantizer(nn.Module):
    """Information compression module: nearest of ``num_codes`` learned prototypes (L2).

    Args:
        num_codes: K (official: 200).
        dim: D, the channels of the quantised features (official: 1024, WRN layer3).
        beta: Commitment weight (official: 0.25).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.codebook = nn.Parameter(
            torch.empty(num_codes, dim).uniform_(-1 / num_codes, 1 / num_codes)
        )

    def forward(self, z: Tensor) -> Quantized:
        """Quantise ``z`` ``(B, D, H, W)``; see :class:`Quantized`."""
        if z.ndim != 4 or z.shape[1] != self.codebook.shape[1]:
            raise ValueError(f"expected (B, {self.codebook.shape[1]}, H, W), got {tuple(z.shape)}")
        flat = rearrange(z, "b d h w -> (b h w) d")
        dist = (
            flat.pow(2).sum(1, keepdim=True)
            + self.codebook.pow(2).sum(1)
            - 2 * flat @ self.codebook.t()
        )
        indices = dist.argmin(dim=1)
        q = rearrange(self.codebook[indices], "(b h w) d -> b d h w", b=z.shape[0], h=z.shape[2])
        loss = self.beta * F.mse_loss(q.detach(), z) + F.mse_loss(q, z.detach())
        quantized = z + (q - z).detach()
        return Quantized(
            quantized, loss, rearrange(indices, "(b h w) -> b h w", b=z.shape[0], h=z.shape[2])
        )


# ---------------------------------------------------------------------------------- RD blocks
def kaiming_init_(module: nn.Module) -> nn.Module:
    """Official RD / DMAD init (``BN_layer``, ``de_resnet.ResNet``): every ``nn.Conv2d``
    kaiming-normal with ``mode="fan_out", nonlinearity="relu"``, BatchNorm / GroupNorm weight 1 and
    bias 0. ``nn.ConvTranspose2d`` is not an ``nn.Conv2d`` and keeps PyTorch's default, as there."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return module


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Bottleneck(nn.Module):
    """ResNet bottleneck ``in -> width -> out`` (stride on the 3x3, projection when needed)."""

    def __init__(self, in_channels: int, width: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class DeBottleneck(nn.Module):
    """RD decoder bottleneck: the 3x3 becomes a 2x2 stride-2 transposed conv when upsampling."""

    def __init__(self, in_channels: int, width: int, out_channels: int, upsample: bool) -> None:
        super().__init__()
        middle = (
            nn.ConvTranspose2d(width, width, 2, 2, bias=False)
            if upsample
            else nn.Conv2d(width, width, 3, 1, 1, bias=False)
        )
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            middle,
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if upsample:
            project: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, 2, bias=False)
        elif in_channels != out_channels:
            project = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut = (
            nn.Sequential(project, nn.BatchNorm2d(out_channels))
            if upsample or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


# ---------------------------------------------------------------------------------- bottleneck
def _halvings(ratio: int, what: str) -> int:
    """log2 of a stride ratio that must be a power of two."""
    steps = int(round(math.log2(ratio))) if ratio >= 1 else -1
    if steps < 0 or 2**steps != ratio:
        raise ValueError(f"{what}: stride ratio must be a power of two >= 1, got {ratio}")
    return steps


class Compressed(NamedTuple):
    """Output of :class:`CompressionBottleneck`.

    Attributes:
        embedding: ``(B, C_out, h, w)`` one-scale embedding for the student (stride 2 s_last).
        vq_loss: Scalar VQ loss (zero without VQ).
        indices: ``(B, H_last, W_last)`` code indices, or None without VQ.
    """

    embedding: Tensor
    vq_loss: Tensor
    indices: Tensor | None


class CompressionBottleneck(nn.Module):
    """Multi-scale fusion with the information compression module (official ``BN_layer``).

    Each teacher level is reduced (conv3x3+BN+ReLU to ``reduce_channels``) and brought to the last
    level's size with stride-2 conv3x3+BN+ReLU steps; the concatenation
    ``[l1', ..., lK', VQ(lK)]`` goes through ``num_blocks`` wide bottlenecks, the first with
    stride 2. Without VQ (``use_vq=False``) the raw last level replaces ``VQ(lK)``.

    Args:
        channels: Teacher channels, shallow first (WRN-50: 256, 512, 1024).
        strides: Teacher strides, shallow first (4, 8, 16).
        reduce_channels: Width of each reduced level (official: 64).
        num_codes: VQ codebook size K (official: 200).
        vq_beta: Commitment weight (official: 0.25).
        use_vq: Quantise the last level (official "sp" mode) or not ("px" mode).
        vq_detach: Quantise a detached copy of the last level (official: False): the VQ loss
            and the straight-through code then train the codebook only, not the offset net
            in front of the frozen teacher (see :class:`DMADModel`).
        num_blocks: Bottleneck blocks (official: 3).
        width: Inner width of the blocks (default: the last level's channels, 1024 for WRN-50).
        out_channels: Embedding channels (default: twice the last level's, 2048).
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        reduce_channels: int = 64,
        num_codes: int = 200,
        vq_beta: float = 0.25,
        use_vq: bool = True,
        num_blocks: int = 3,
        width: int | None = None,
        out_channels: int | None = None,
        vq_detach: bool = False,
    ) -> None:
        super().__init__()
        self.vq_detach = vq_detach
        last = channels[-1]
        self.reduce = nn.ModuleList(_conv_bn_relu(c, reduce_channels) for c in channels)
        self.down = nn.ModuleList(
            nn.Sequential(
                *(
                    _conv_bn_relu(reduce_channels, reduce_channels, 2)
                    for _ in range(_halvings(strides[-1] // s, f"teacher stride {s}"))
                )
            )
            for s in strides
        )
        self.vq = VectorQuantizer(num_codes, last, vq_beta) if use_vq else None
        width = width or last
        self.out_channels = out_channels or 2 * last
        cat = reduce_channels * len(channels) + last
        self.blocks = nn.Sequential(
            Bottleneck(cat, width, self.out_channels, stride=2),
            *(
                Bottleneck(self.out_channels, width, self.out_channels)
                for _ in range(num_blocks - 1)
            ),
        )

    def forward(self, features: Sequence[Tensor]) -> Compressed:
        """Fuse teacher maps (shallow first, ``(B, C_k, H_k, W_k)``) into one embedding."""
        reduced = [
            down(red(f)) for f, red, down in zip(features, self.reduce, self.down, strict=True)
        ]
        last = features[-1]
        if self.vq is None:
            code, vq_loss, indices = last, last.new_zeros(()), None
        else:
            code, vq_loss, indices = self.vq(last.detach() if self.vq_detach else last)
        return Compressed(self.blocks(torch.cat([*reduced, code], dim=1)), vq_loss, indices)


class StudentDecoder(nn.Module):
    """Reverse-distillation student: mirrors the teacher from the embedding back to each level.

    Stage k (deepest first) upsamples with 2x2 stride-2 transposed convs in its first blocks
    (one per halving of the stride) and outputs the teacher's channels at that level.

    Args:
        channels: Teacher channels, shallow first.
        strides: Teacher strides, shallow first.
        in_channels: Embedding channels (at stride ``2 * strides[-1]``).
        blocks: Blocks per stage, deepest first (official WRN-50: 3, 4, 6).
        width_ratio: Inner width / output channels of a block (wide ResNet: 0.5).
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        in_channels: int,
        blocks: Sequence[int] = (3, 4, 6),
        width_ratio: float = 0.5,
    ) -> None:
        super().__init__()
        if len(blocks) != len(channels):
            raise ValueError(f"decoder blocks {list(blocks)} must give one count per teacher level")
        source = [2 * strides[-1], *reversed(strides)]
        self.stages = nn.ModuleList()
        for k, (out, n) in enumerate(zip(reversed(channels), blocks, strict=True)):
            ups = _halvings(source[k] // source[k + 1], f"decoder stage {k}")
            if n < ups:
                raise ValueError(f"decoder stage {k} needs >= {ups} blocks, got {n}")
            width = max(1, int(out * width_ratio))
            self.stages.append(
                nn.Sequential(
                    *(
                        DeBottleneck(in_channels if i == 0 else out, width, out, i < ups)
                        for i in range(n)
                    )
                )
            )
            in_channels = out

    def forward(self, embedding: Tensor) -> list[Tensor]:
        """``(B, C_in, h, w)`` -> one ``(B, C_k, H_k, W_k)`` map per level, shallow first."""
        outputs, x = [], embedding
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]


# ---------------------------------------------------------------------------------- full model
class DMADOutput(NamedTuple):
    """Output of :class:`DMADModel`.

    Attributes:
        deformation: Fields and the pre-deformed input (ImageNet-normalised).
        inputs: ``(B, 3, H, W)`` the ImageNet-normalised input x.
        teacher: Teacher maps of the pre-deformed input, shallow first.
        student: Student maps, same shapes.
        vq_loss: Scalar VQ loss.
    """

    deformation: Deformation
    inputs: Tensor
    teacher: list[Tensor]
    student: list[Tensor]
    vq_loss: Tensor


class DMADModel(nn.Module):
    """DMAD-PPDM: pre-deformation -> frozen teacher -> compression -> student decoder.

    Args:
        teacher: Frozen feature extractor (official: WRN-50-2 layer1-3); it stays in eval mode.
        offset_net: Pyramid deformation module.
        reduce_channels, num_codes, vq_beta, use_vq, bottleneck_blocks, bottleneck_width:
            :class:`CompressionBottleneck` (``num_blocks`` = ``bottleneck_blocks``).
        decoder_blocks, decoder_width_ratio: :class:`StudentDecoder`.
        official_init: Re-initialise the bottleneck and decoder with :func:`kaiming_init_` (the
            official code); False keeps PyTorch's default init.
        vq_detach: Keep the VQ loss out of the offset net (official: False). The teacher's last
            level is a function of the pre-deformed input, so the commitment term
            ``||sg(q) - z||^2`` also trains the deformation to warp the image toward the codes;
            on magnetic tile its gradient on the forward heads is ~30x that of L_rd and L_offset
            and drives the fields to a few pixels everywhere, which ruins the pixel maps. The
            official pixel results come from a model without VQ ("px" mode), whose offset net
            sees only L_rd and L_offset; ``vq_detach=True`` gives one model that does both.
    """

    def __init__(
        self,
        teacher: FeatureExtractor,
        offset_net: OffsetNet,
        reduce_channels: int = 64,
        num_codes: int = 200,
        vq_beta: float = 0.25,
        use_vq: bool = True,
        bottleneck_blocks: int = 3,
        bottleneck_width: int | None = None,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        decoder_width_ratio: float = 0.5,
        official_init: bool = True,
        vq_detach: bool = False,
    ) -> None:
        super().__init__()
        self.teacher = teacher.set_trainable(False)
        self.offset_net = offset_net
        channels, strides = teacher.channels, teacher.strides
        self.bottleneck = CompressionBottleneck(
            channels,
            strides,
            reduce_channels,
            num_codes,
            vq_beta,
            use_vq,
            bottleneck_blocks,
            bottleneck_width,
            vq_detach=vq_detach,
        )
        self.decoder = StudentDecoder(
            channels,
            strides,
            self.bottleneck.out_channels,
            tuple(decoder_blocks),
            decoder_width_ratio,
        )
        if official_init:
            kaiming_init_(self.bottleneck)
            kaiming_init_(self.decoder)

    def normalize(self, images: Tensor) -> Tensor:
        """ImageNet-normalise ``(B, 3, H, W)`` images in [0, 1] (the teacher's statistics)."""
        return (images - self.teacher.mean) / self.teacher.std

    def forward(self, images: Tensor) -> DMADOutput:
        """Run the whole model on ``(B, 3, H, W)`` images in [0, 1] (H, W divisible by 4).

        The deformation acts on the normalised image (zero padding = the mean colour, as in the
        official code); gradients flow through the frozen teacher into the offset net.
        """
        x = self.normalize(images)
        deformation = self.offset_net(x)
        teacher = self.teacher(deformation.warped * self.teacher.std + self.teacher.mean)
        compressed = self.bottleneck(teacher)
        student = self.decoder(compressed.embedding)
        return DMADOutput(deformation, x, list(teacher), student, compressed.vq_loss)
