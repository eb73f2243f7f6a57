"""Post-processing techniques compared by ``evaluate.py``, built from ``configs/evaluate.yaml``.

Two kinds:

- :class:`MapTechnique` works on the cached anomaly maps of a checkpoint (no new inference):
  :class:`NoPostprocessing`, :class:`GaussianSmoothing`, :class:`ForegroundMasking`. The image
  score of a modified map is its maximum; ``none`` keeps the model's own score, so its numbers
  match the test run.
- :class:`InferenceTechnique` changes the model's input, so it runs the model again:
  :class:`Registration` aligns each test image to a reference normal image, scores the aligned
  image with the model's own score, and maps the anomaly map back to the original frame so the
  ground-truth masks still apply.

``fit(train_images)`` is called once per dataset category with its normal training images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from adlab.postprocess.foreground import estimate_foreground_mask, load_mask
from adlab.postprocess.maps import gaussian_smooth, mask_map, max_score
from adlab.postprocess.registration import Registrator, warp
from adlab.types import AnomalyOutput

if TYPE_CHECKING:
    from adlab.models.base import AnomalyModule


@dataclass(frozen=True)
class DataGeometry:
    """How a data module turns a file into a tensor: resize to ``image_size``, then crop."""

    image_size: tuple[int, int]
    center_crop: int | None = None


class Technique:
    """A named post-processing technique.

    Attributes:
        name: labels its rows and curve files.
        category_types: the category types (``texture``, ``object``) it applies to; others skip it.
    """

    name: str = "technique"
    category_types: tuple[str, ...] = ("texture", "object")

    def fit(self, train_images: torch.Tensor, geometry: DataGeometry | None = None) -> None:
        """Learn what the technique needs from normal images ``(N, 3, H, W)`` in ``[0, 1]``.

        ``geometry`` is how the data module resized and cropped them, for inputs given in the
        original image frame (a mask image); None means ``(H, W)`` without crop. Does nothing by
        default.
        """


class MapTechnique(Technique, ABC):
    """Transforms cached ``(anomaly_map (N, 1, H, W), pred_score (N,))`` pairs."""

    @abstractmethod
    def apply(
        self, anomaly_map: torch.Tensor, pred_score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the processed ``(anomaly_map (N, 1, H, W), pred_score (N,))``."""


class InferenceTechnique(Technique, ABC):
    """Runs the model itself on transformed inputs."""

    @abstractmethod
    def infer(self, model: AnomalyModule, images: torch.Tensor, keys: list[str]) -> AnomalyOutput:
        """Score ``images (B, 3, H, W)``; ``keys`` (image paths) identify images across calls.

        Returns:
            maps ``(B, 1, H, W)`` in the frame of ``images`` and scores ``(B,)``.
        """


class NoPostprocessing(MapTechnique):
    """The model's maps and scores as they are (the test run's numbers)."""

    name = "none"

    def apply(
        self, anomaly_map: torch.Tensor, pred_score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return anomaly_map, pred_score


class GaussianSmoothing(MapTechnique):
    """Gaussian smoothing of the map with ``sigma`` pixels; image score = max of the result."""

    def __init__(self, sigma: float) -> None:
        if sigma <= 0:
            raise ValueError(f"GaussianSmoothing sigma={sigma}: expected a positive value")
        self.sigma = float(sigma)
        self.name = f"gaussian_{self.sigma:g}"

    def apply(
        self, anomaly_map: torch.Tensor, pred_score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        smooth = gaussian_smooth(anomaly_map, self.sigma)
        return smooth, max_score(smooth)


def gaussian_smoothing(sigmas: list[float]) -> list[GaussianSmoothing]:
    """One :class:`GaussianSmoothing` per sigma (the config's ``sigmas`` list)."""
    if not sigmas:
        raise ValueError("gaussian smoothing needs a non-empty list of sigmas, e.g. [2, 4]")
    return [GaussianSmoothing(s) for s in sigmas]


class ForegroundMasking(MapTechnique):
    """Restrict the map to the object; image score = max of the masked map.

    Args:
        mask_path: a mask image (nonzero = object), resized to the maps; None estimates the
            mask from the training images with
            :func:`~adlab.postprocess.foreground.estimate_foreground_mask` (object categories
            only, unless ``textures`` is True).
        border, threshold, min_fraction, cleanup_radius, margin: estimation options, see there.
        textures: also estimate masks for texture categories (normally the whole image).
    """

    name = "foreground"

    def __init__(
        self,
        mask_path: str | None = None,
        border: int = 2,
        threshold: float | None = None,
        min_fraction: float = 0.5,
        cleanup_radius: int = 2,
        margin: int = 2,
        textures: bool = False,
    ) -> None:
        self.mask_path = Path(mask_path) if mask_path else None
        if self.mask_path is None and not textures:
            self.category_types = ("object",)
        self.options = {
            "border": border,
            "threshold": threshold,
            "min_fraction": min_fraction,
            "cleanup_radius": cleanup_radius,
            "margin": margin,
        }
        self.mask: torch.Tensor | None = None

    def fit(self, train_images: torch.Tensor, geometry: DataGeometry | None = None) -> None:
        if self.mask_path is not None:
            geometry = geometry or DataGeometry(tuple(train_images.shape[-2:]))
            self.mask = load_mask(self.mask_path, geometry.image_size, geometry.center_crop)
        else:
            self.mask = estimate_foreground_mask(train_images, **self.options)

    def apply(
        self, anomaly_map: torch.Tensor, pred_score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask is None:
            raise RuntimeError("ForegroundMasking.fit(train_images) must run before apply")
        masked = mask_map(anomaly_map, self.mask)
        return masked, max_score(masked)


class Registration(InferenceTechnique):
    """Align each test image to a reference normal image, then score it with the model.

    The transforms depend on the images only, so they are estimated once per image and reused
    for every checkpoint. The aligned image is resampled with reflection padding; its map is
    warped back (border padding) so metrics use the original ground truth.

    Objects only by default: a texture has no pose to align.

    Args:
        reference_index: which training image (in sorted order) is the reference.
        model_type, num_iterations, lr, pyramid_levels, tolerance: see
            :class:`~adlab.postprocess.registration.Registrator`.
        textures: also register texture categories.
    """

    name = "registration"

    def __init__(
        self,
        reference_index: int = 0,
        model_type: str = "similarity",
        num_iterations: int = 100,
        lr: float = 3e-2,
        pyramid_levels: int | None = None,
        tolerance: float = 0.0,
        textures: bool = False,
    ) -> None:
        self.category_types = ("texture", "object") if textures else ("object",)
        self.reference_index = reference_index
        self.registrator = Registrator(model_type, num_iterations, lr, pyramid_levels, tolerance)
        self.reference: torch.Tensor | None = None
        self._transforms: dict[str, torch.Tensor] = {}

    def fit(self, train_images: torch.Tensor, geometry: DataGeometry | None = None) -> None:
        if not -len(train_images) <= self.reference_index < len(train_images):
            raise ValueError(
                f"registration reference_index={self.reference_index}: expected an index into "
                f"the {len(train_images)} training images"
            )
        self.reference = train_images[self.reference_index][None]
        self._transforms = {}

    def transforms(self, images: torch.Tensor, keys: list[str]) -> torch.Tensor:
        """``(B, 3, 3)`` normalised transforms aligning ``images`` to the reference (cached)."""
        if self.reference is None:
            raise RuntimeError("Registration.fit(train_images) must run before infer")
        todo = [i for i, key in enumerate(keys) if key not in self._transforms]
        if todo:
            estimated = self.registrator.estimate(images[todo], self.reference)
            self._transforms |= {keys[i]: h for i, h in zip(todo, estimated, strict=True)}
        return torch.stack([self._transforms[key] for key in keys])

    def infer(self, model: AnomalyModule, images: torch.Tensor, keys: list[str]) -> AnomalyOutput:
        src_homo_dst = self.transforms(images, keys).to(images.device)
        aligned = warp(images, src_homo_dst, padding_mode="reflection")
        out = model.evaluate_images(aligned)
        anomaly_map = warp(out.anomaly_map, torch.linalg.inv(src_homo_dst), padding_mode="border")
        return AnomalyOutput(anomaly_map, out.pred_score, out.reconstruction)
