"""Training-free reconstruction with OpenAI's pretrained guided-diffusion DDPM."""

from adlab.models.pretrained_ddpm.lightning_model import PretrainedDDPMModule
from adlab.models.pretrained_ddpm.loader import (
    CHECKPOINT_URL,
    check_state_dict,
    load_pretrained_unet,
)

__all__ = [
    "CHECKPOINT_URL",
    "PretrainedDDPMModule",
    "check_state_dict",
    "load_pretrained_unet",
]
