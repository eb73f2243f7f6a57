"""Convolutional autoencoder baseline."""

from adlab.models.autoencoder.lightning_model import AutoEncoderModule
from adlab.models.autoencoder.torch_model import AutoEncoder

__all__ = ["AutoEncoder", "AutoEncoderModule"]
