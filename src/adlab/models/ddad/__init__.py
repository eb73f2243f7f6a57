"""DDAD: anomaly detection with conditioned denoising diffusion (Mousakhan et al. 2023)."""

from adlab.models.ddad.lightning_model import DDADModule
from adlab.models.ddad.torch_model import RepeatedNoise, domain_adaptation_loss

__all__ = ["DDADModule", "RepeatedNoise", "domain_adaptation_loss"]
