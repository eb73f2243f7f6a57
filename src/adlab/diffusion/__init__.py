"""Shared diffusion stack: beta schedules, scheduler, UNet and partial-diffusion sampling."""

from adlab.diffusion.sampling import (
    SAMPLERS,
    ConditionFn,
    EpsModel,
    check_sampler,
    ddad_condition,
    reconstruct,
)
from adlab.diffusion.scheduler import DiffusionScheduler
from adlab.diffusion.schedules import (
    BETA_SCHEDULES,
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
)
from adlab.diffusion.unet import UNET_PRESETS, UNet, timestep_embedding

__all__ = [
    "BETA_SCHEDULES",
    "SAMPLERS",
    "UNET_PRESETS",
    "ConditionFn",
    "DiffusionScheduler",
    "EpsModel",
    "UNet",
    "check_sampler",
    "cosine_beta_schedule",
    "ddad_condition",
    "get_beta_schedule",
    "linear_beta_schedule",
    "reconstruct",
    "timestep_embedding",
]
