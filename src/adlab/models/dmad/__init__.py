"""DMAD: diversity-measurable anomaly detection, PPDM variant (Liu et al., CVPR 2023)."""

from adlab.models.dmad.deformation import Deformation, OffsetNet, warp
from adlab.models.dmad.lightning_model import DMADModule
from adlab.models.dmad.torch_model import DMADModel, VectorQuantizer

__all__ = ["DMADModel", "DMADModule", "Deformation", "OffsetNet", "VectorQuantizer", "warp"]
