"""AnoGAN: DCGAN of normal images, test-time latent search (Schlegl et al. 2017)."""

from adlab.models.anogan.lightning_model import AnoGANModule
from adlab.models.anogan.torch_model import Discriminator, Generator, LatentMapping, latent_search

__all__ = ["AnoGANModule", "Discriminator", "Generator", "LatentMapping", "latent_search"]
