"""Convolutional autoencoder baseline (reconstruction-error anomaly detection).

Seed: github.com/Pchaewon/Anormaly-detection-AI-models @ 9da4683 ``model/autoencoder.py``. The
seed's 69.6 M-parameter dense bottleneck only fits 256 px; this version is fully convolutional (any
size divisible by ``2 ** len(widths)``) with a narrow spatial bottleneck. See the method README.
"""

from __future__ import annotations

from torch import Tensor, nn

PADDING_MODES = ("zeros", "reflect", "replicate")


def _down(c_in: int, c_out: int, padding_mode: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False, padding_mode=padding_mode),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class AutoEncoder(nn.Module):
    """Strided-conv encoder, ``latent_channels`` bottleneck, transposed-conv decoder.

    Args:
        in_channels: image channels.
        widths: encoder widths, one stride-2 stage each (decoder mirrors them).
        latent_channels: channels of the ``(H / 2**len(widths))``-sized bottleneck.
        padding_mode: padding of the convolutions (``zeros``, ``reflect``, ``replicate``); the
            transposed convolutions always pad with zeros. ``reflect`` keeps the image border
            from reconstructing worse than its interior, a false-positive source for the map max.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 128),
        latent_channels: int = 32,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("AutoEncoder needs at least one width, got widths=()")
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"AutoEncoder padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}"
            )
        widths = tuple(widths)
        chans = (in_channels, *widths)
        self.encoder = nn.Sequential(
            *(_down(a, b, padding_mode) for a, b in zip(chans[:-1], chans[1:], strict=True)),
            nn.Conv2d(widths[-1], latent_channels, 3, padding=1, padding_mode=padding_mode),
        )
        rev = widths[::-1]
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, rev[0], 3, padding=1, padding_mode=padding_mode),
            nn.ReLU(inplace=True),
            *(_up(a, b) for a, b in zip(rev, (*rev[1:], rev[-1]), strict=True)),
            nn.Conv2d(rev[-1], in_channels, 3, padding=1, padding_mode=padding_mode),
            nn.Sigmoid(),
        )
        self.stride = 2 ** len(widths)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x``: ``(B, C, H, W)`` in ``[0, 1]`` -> same shape in ``[0, 1]``."""
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"AutoEncoder input size {h}x{w} must be divisible by {self.stride} "
                f"(2 ** number of widths); set dataset.image_size accordingly."
            )
        return self.decoder(self.encoder(x))
