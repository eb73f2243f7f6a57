"""Image registration: align test images to a reference normal image with kornia.

Built on :class:`kornia.geometry.transform.ImageRegistrator`: Adam on a symmetric photometric loss
(forward and inverse warp) over a Gaussian pyramid, coarse to fine. kornia's models hold one
transform; the subclasses below only give their parameters a batch dimension, so a whole batch is
registered at once. kornia's loss is one masked mean over the batch and its tolerance stops the
whole batch together, so an image's transform can differ slightly (~1e-4) with the images that
share its batch; evaluate.py registers in a fixed order and caches each image's transform.
Transforms are homographies in kornia's normalised ``[-1, 1]`` coordinates mapping *reference*
(destination) coordinates to *image* (source) coordinates: the ``src_homo_dst`` of kornia's
``homography_warp``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.geometry.conversions import denormalize_homography
from kornia.geometry.transform import HomographyWarper, ImageRegistrator, homography_warp
from kornia.geometry.transform.image_registrator import BaseModel, Homography, Similarity
from torch import nn

# model_type -> which Similarity parameters are optimised (rotation, scale, shift)
_SIMILARITY_FREE = {
    "similarity": (True, True, True),
    "translation": (False, False, True),
    "rotation": (True, False, False),
    "scale": (False, True, False),
}
MODEL_TYPES = (*_SIMILARITY_FREE, "homography")


class BatchSimilarity(Similarity):
    """kornia's :class:`Similarity` with one transform per image: ``rot (B,)`` in degrees,
    ``scale (B, 1, 1)``, ``shift (B, 2, 1)`` normalised; ``forward() -> (B, 3, 3)``."""

    def __init__(self, batch_size: int, rotation: bool, scale: bool, shift: bool) -> None:
        super().__init__(rotation, scale, shift)
        shapes = {"rot": (batch_size,), "scale": (batch_size, 1, 1), "shift": (batch_size, 2, 1)}
        for (name, shape), free in zip(shapes.items(), (rotation, scale, shift), strict=True):
            delattr(self, name)
            value = torch.zeros(shape)
            if free:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.reset_model()


class BatchHomography(Homography):
    """kornia's :class:`Homography`, one ``(3, 3)`` matrix per image; ``forward() -> (B, 3, 3)``."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.model = nn.Parameter(torch.eye(3).repeat(batch_size, 1, 1))

    def reset_model(self) -> None:
        with torch.no_grad():
            self.model.copy_(torch.eye(3).expand_as(self.model))

    def forward(self) -> torch.Tensor:
        return self.model / self.model[:, 2:3, 2:3]

    def forward_inverse(self) -> torch.Tensor:
        return torch.linalg.inv(self.forward())


def _batch_model(model_type: str, batch_size: int) -> BaseModel:
    if model_type == "homography":
        return BatchHomography(batch_size)
    return BatchSimilarity(batch_size, *_SIMILARITY_FREE[model_type])


def auto_pyramid_levels(size: tuple[int, int], coarsest: int = 16) -> int:
    """Pyramid levels so that the coarsest level is about ``coarsest`` pixels on its short side."""
    return max(1, int(math.log2(max(min(size) / coarsest, 1.0))) + 1)


class Registrator:
    """Estimate and apply the transforms that align images to one reference image.

    Args:
        model_type: ``similarity`` (rotation, isotropic scale, shift), ``translation``,
            ``rotation``, ``scale`` or ``homography``.
        num_iterations: optimiser steps per pyramid level.
        lr: Adam learning rate (rotation is in degrees, shift in normalised units).
        pyramid_levels: Gaussian pyramid levels; None picks a coarsest level of ~16 px.
        tolerance: stop a level early when the batch loss changes by less than this (0 = never).
    """

    def __init__(
        self,
        model_type: str = "similarity",
        num_iterations: int = 100,
        lr: float = 3e-2,
        pyramid_levels: int | None = None,
        tolerance: float = 0.0,
    ) -> None:
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"registration model_type={model_type!r}: expected one of {MODEL_TYPES}"
            )
        self.model_type = model_type
        self.num_iterations = num_iterations
        self.lr = lr
        self.pyramid_levels = pyramid_levels
        self.tolerance = tolerance

    def estimate(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Transforms aligning each image to the reference.

        Args:
            images: ``(B, C, H, W)`` images to align.
            reference: ``(1, C, H, W)`` or ``(C, H, W)`` reference image.

        Returns:
            ``(B, 3, 3)`` normalised ``src_homo_dst`` homographies (reference -> image coordinates).
        """
        reference = reference.reshape(1, *images.shape[1:]).to(images)
        registrator = ImageRegistrator(
            _batch_model(self.model_type, len(images)),
            loss_fn=F.mse_loss,
            lr=self.lr,
            num_iterations=self.num_iterations,
            pyramid_levels=self.pyramid_levels or auto_pyramid_levels(tuple(images.shape[-2:])),
            tolerance=self.tolerance,
            warper=HomographyWarper,
        ).to(images.device)
        with torch.inference_mode(False), torch.enable_grad():
            src = images.detach().clone()
            dst = reference.detach().expand_as(src).clone()
            return registrator.register(src, dst).detach()


def warp(
    images: torch.Tensor, src_homo_dst: torch.Tensor, padding_mode: str = "border"
) -> torch.Tensor:
    """Resample images with normalised homographies: ``out(p) = images(src_homo_dst @ p)``.

    Args:
        images: ``(B, C, H, W)``.
        src_homo_dst: ``(B, 3, 3)`` from :meth:`Registrator.estimate` (aligns images to the
            reference); pass ``torch.linalg.inv`` of it to map aligned results back.
        padding_mode: ``zeros``, ``border`` or ``reflection`` for pixels sampled off the image.

    Returns:
        ``(B, C, H, W)`` warped images.
    """
    return homography_warp(
        images, src_homo_dst.to(images), tuple(images.shape[-2:]), padding_mode=padding_mode
    )


def to_pixel_homography(src_homo_dst: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Normalised ``src_homo_dst`` -> pixel homography mapping reference pixels to image pixels.

    Args:
        src_homo_dst: ``(B, 3, 3)`` normalised homographies.
        size: ``(H, W)`` of the images.

    Returns:
        ``(B, 3, 3)`` homographies in pixel coordinates (pixel centres at integers).
    """
    return denormalize_homography(src_homo_dst, size, size, align_corners=False)
