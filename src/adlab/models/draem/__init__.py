"""DRAEM: discriminatively trained reconstruction anomaly embedding (Zavrtanik et al. 2021)."""

from adlab.models.draem.lightning_model import DraemModule
from adlab.models.draem.torch_model import (
    DiscriminativeSubNetwork,
    DraemModel,
    ReconstructiveSubNetwork,
)

__all__ = ["DiscriminativeSubNetwork", "DraemModel", "DraemModule", "ReconstructiveSubNetwork"]
