"""AnoGAN's networks and test-time latent search (Schlegl et al., IPMI 2017).

DCGAN generator / discriminator (Radford et al., ICLR 2016) built from per-layer kernel, stride
and padding lists, so one class gives both the DCGAN-64/32 layout (4x4 kernels, stride 2) and
the seed's 256 px layout. Seed: github.com/Pchaewon/Anormaly-detection-AI-models @ 9da4683
(``model/anogan.py``, no license file); the topology was re-implemented, not copied. Changes: the
discriminator returns logits (no Sigmoid; trained with BCE-with-logits) and exposes the features
of its last hidden block for the discrimination loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _check_layers(name: str, n: int, *lists: Sequence[int]) -> None:
    if any(len(values) != n for values in lists):
        raise ValueError(
            f"{name}: kernel_sizes, strides and paddings need {n} entries (one per conv), got "
            f"{[len(v) for v in lists]}"
        )


class Generator(nn.Module):
    """DCGAN generator ``G: z -> image``: transposed convs, BatchNorm + ReLU between, Tanh out.

    Args:
        latent_dim: size of z (paper: 100).
        widths: channels after each hidden transposed conv.
        kernel_sizes: one per transposed conv (``len(widths) + 1``; the last one outputs images).
        strides: one per transposed conv.
        paddings: one per transposed conv.
        out_channels: image channels.
        image_size: output side; must equal the size the layers produce from ``1 x 1``.
    """

    def __init__(
        self,
        latent_dim: int = 100,
        widths: Sequence[int] = (512, 256, 128, 64),
        kernel_sizes: Sequence[int] = (4, 4, 4, 4, 4),
        strides: Sequence[int] = (1, 2, 2, 2, 2),
        paddings: Sequence[int] = (0, 1, 1, 1, 1),
        out_channels: int = 3,
        image_size: int = 64,
    ) -> None:
        super().__init__()
        _check_layers("Generator", len(widths) + 1, kernel_sizes, strides, paddings)
        self.latent_dim, self.out_channels, self.image_size = latent_dim, out_channels, image_size
        chans = (latent_dim, *widths, out_channels)
        layers: list[nn.Module] = []
        size = 1
        for i, (k, s, p) in enumerate(zip(kernel_sizes, strides, paddings, strict=True)):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], k, s, p, bias=False))
            layers += [nn.BatchNorm2d(chans[i + 1]), nn.ReLU(True)] if i < len(widths) else []
            size = (size - 1) * s - 2 * p + k
        if size != image_size:
            raise ValueError(f"Generator layers produce {size} px images, image_size={image_size}")
        self.net = nn.Sequential(*layers, nn.Tanh())
        self.apply(dcgan_init)

    def forward(self, z: Tensor) -> Tensor:
        """Map ``z`` ``(B, latent_dim)`` to images ``(B, out_channels, S, S)`` in [-1, 1]."""
        return self.net(rearrange(z, "b d -> b d 1 1"))


class Discriminator(nn.Module):
    """DCGAN discriminator: strided convs with LeakyReLU 0.2 (BatchNorm after the first), a final
    conv to a ``1 x 1`` logit.

    Args:
        in_channels: image channels.
        widths: channels of each hidden conv block.
        kernel_sizes: one per conv (``len(widths) + 1``; the last one outputs the logit).
        strides: one per conv.
        paddings: one per conv.
        image_size: input side; the layers must reduce it to ``1 x 1``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        kernel_sizes: Sequence[int] = (4, 4, 4, 4, 4),
        strides: Sequence[int] = (2, 2, 2, 2, 1),
        paddings: Sequence[int] = (1, 1, 1, 1, 0),
        image_size: int = 64,
    ) -> None:
        super().__init__()
        _check_layers("Discriminator", len(widths) + 1, kernel_sizes, strides, paddings)
        self.in_channels, self.image_size = in_channels, image_size
        chans = (in_channels, *widths)
        blocks: list[nn.Module] = []
        size = image_size
        hidden = zip(kernel_sizes[:-1], strides[:-1], paddings[:-1], strict=True)
        for i, (k, s, p) in enumerate(hidden):
            blocks.append(nn.Conv2d(chans[i], chans[i + 1], k, s, p, bias=False))
            blocks += [nn.BatchNorm2d(chans[i + 1])] if i > 0 else []
            blocks.append(nn.LeakyReLU(0.2))
            size = (size + 2 * p - k) // s + 1
        self.body = nn.Sequential(*blocks)
        k, s, p = kernel_sizes[-1], strides[-1], paddings[-1]
        self.head = nn.Conv2d(widths[-1], 1, k, s, p, bias=False)
        if (size + 2 * p - k) // s + 1 != 1:
            raise ValueError(f"Discriminator layers do not reduce {image_size} px to 1x1")
        self.apply(dcgan_init)

    def features(self, x: Tensor) -> Tensor:
        """Last hidden block's activations f(x), flattened: ``(B, C, S, S) -> (B, F)``."""
        return rearrange(self.body(x), "b c h w -> b (c h w)")

    def forward(self, x: Tensor) -> Tensor:
        """Real/fake logits: ``(B, C, S, S) -> (B,)``."""
        return rearrange(self.head(self.body(x)), "b 1 1 1 -> b")


class LatentMapping(NamedTuple):
    """Result of :func:`latent_search`.

    Attributes:
        z: ``(B, latent_dim)`` final latent codes.
        x_hat: ``(B, C, S, S)`` G(z) in [-1, 1].
        residual: ``(B,)`` R(x) = mean |x - G(z)|.
        discrimination: ``(B,)`` D(x) = mean |f(x) - f(G(z))|.
        losses: ``(steps + 1, B)`` mapping loss before each update and at the end.
    """

    z: Tensor
    x_hat: Tensor
    residual: Tensor
    discrimination: Tensor
    losses: Tensor


def _mapping_loss(
    generator: Generator,
    discriminator: Discriminator,
    x: Tensor,
    f_x: Tensor,
    z: Tensor,
    lam: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_hat = generator(z)
    residual = (x - x_hat).abs().flatten(1).mean(1)
    discrimination = (f_x - discriminator.features(x_hat)).abs().mean(1)
    return (1 - lam) * residual + lam * discrimination, residual, discrimination, x_hat


def latent_search(
    generator: Generator,
    discriminator: Discriminator,
    x: Tensor,
    z: Tensor,
    steps: int,
    lr: float,
    lam: float = 0.1,
) -> LatentMapping:
    """Find ``z`` with G(z) close to ``x`` (Schlegl et al. 2017, sec. 2.2), batched over images.

    Minimises ``L(z) = (1 - lam) L_R(z) + lam L_D(z)`` (eq. 3) with Adam on ``z`` only, where
    ``L_R = |x - G(z)|`` (eq. 1) and ``L_D = |f(x) - f(G(z))|`` (eq. 2, feature matching on the
    discriminator's last hidden block); means instead of the paper's sums, so the weights do not
    depend on image size. Each image's loss depends on its own ``z`` only. The networks are not
    updated (gradients are taken w.r.t. ``z`` alone); call them in eval mode and with grad enabled.

    Args:
        generator: trained G.
        discriminator: trained D (its features).
        x: ``(B, C, S, S)`` query images in [-1, 1].
        z: ``(B, latent_dim)`` initial codes (e.g. N(0, I) samples).
        steps: Gamma, the number of Adam updates (paper: 500).
        lr: Adam learning rate.
        lam: lambda, the weight of the discrimination loss (paper: 0.1).

    Returns:
        :class:`LatentMapping`; its final loss is the anomaly score A(x) (eq. 4).
    """
    f_x = discriminator.features(x).detach()
    z = z.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    losses = []
    for _ in range(steps):
        loss = _mapping_loss(generator, discriminator, x, f_x, z, lam)[0]
        (z.grad,) = torch.autograd.grad(loss.sum(), z)
        optimizer.step()
        losses.append(loss.detach())
    with torch.no_grad():
        loss, residual, discrimination, x_hat = _mapping_loss(
            generator, discriminator, x, f_x, z, lam
        )
    return LatentMapping(z.detach(), x_hat, residual, discrimination, torch.stack([*losses, loss]))
