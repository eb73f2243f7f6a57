"""AnoDDPM: partial diffusion with simplex noise (Wyatt et al. 2022)."""

from adlab.models.anoddpm.lightning_model import AnoDDPMModule

__all__ = ["AnoDDPMModule"]
