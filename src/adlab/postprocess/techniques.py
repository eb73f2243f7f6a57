"""Post-processing techniques compared by ``evaluate.py``, built from ``configs/evaluate.yaml``.

Two kinds:

- :class:`MapTechnique` works on the cached raw outputs of a checkpoint (no new inference) and
  runs them through the model's own :class:`~adlab.postprocess.PostProcessor`, changed or with a
  mask: :class:`NoPostprocessing` (the post-processor as configured: the test run's numbers),
  :class:`Smoothing` (another sigma), :class:`ForegroundMasking` (a mask before scoring). So the
  score always follows the model's score rule on the map the row measures (a ``method`` score,
  which is not a function of the map, stays the method's).
- :class:`InferenceTechnique` changes the model's input, so it runs the model again:
  :class:`Registration` aligns each test image to a reference normal image, maps the raw map back
  to the original frame (so the ground-truth masks still apply) and post-processes it there.

``fit(train_images)`` is called once per dataset category with its normal training images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from adlab.postprocess.foreground import estimate_foreground_mask, load_mask
from adlab.postprocess.maps import resize_map
from adlab.postprocess.pipeline import PostProcessor
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
    """Post-processes cached raw outputs with (a variant of) the model's post-processor."""

    @abstractmethod
    def apply(
        self, raw: AnomalyOutput, postprocessor: PostProcessor, size: tuple[int, int]
    ) -> AnomalyOutput:
        """Raw ``anomaly_map (N, 1, h, w)`` (and ``pred_score (N,)`` or None) -> the final
        ``anomaly_map (N, 1, *size)`` and ``pred_score (N,)``."""


class InferenceTechnique(Technique, ABC):
    """Runs the model itself on transformed inputs."""

    @abstractmethod
    def infer(self, model: AnomalyModule, images: torch.Tensor, keys: list[str]) -> AnomalyOutput:
        """Score ``images (B, 3, H, W)``; ``keys`` (image paths) identify images across calls.

        Returns:
            maps ``(B, 1, H, W)`` in the frame of ``images`` and scores ``(B,)``.
        """


class NoPostprocessing(MapTechnique):
    """The model's post-processor as configured (the test run's numbers)."""

    name = "none"

    def apply(
        self, raw: AnomalyOutput, postprocessor: PostProcessor, size: tuple[int, int]
    ) -> AnomalyOutput:
        return postprocessor(raw, size)


class Smoothing(MapTechnique):
    """The model's post-processor with smoothing ``sigma`` (pixels) instead of its own."""

    def __init__(self, sigma: float) -> None:
        if sigma < 0:
            raise ValueError(f"techniques.smoothing sigma={sigma}: expected a value >= 0")
        self.sigma = float(sigma)
        self.name = f"sigma_{self.sigma:g}"

    def apply(
        self, raw: AnomalyOutput, postprocessor: PostProcessor, size: tuple[int, int]
    ) -> AnomalyOutput:
        return postprocessor.replace(sigma=self.sigma)(raw, size)


def smoothing(sigmas: list[float]) -> list[Smoothing]:
    """One :class:`Smoothing` per sigma (the config's ``sigmas`` list)."""
    if not sigmas:
        raise ValueError("techniques.smoothing needs a non-empty list of sigmas, e.g. [2, 4]")
    return [Smoothing(s) for s in sigmas]


class ForegroundMasking(MapTechnique):
    """Restrict the smoothed map to the object before the model's score rule.

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
        self, raw: AnomalyOutput, postprocessor: PostProcessor, size: tuple[int, int]
    ) -> AnomalyOutput:
        if self.mask is None:
            raise RuntimeError("ForegroundMasking.fit(train_images) must run before apply")
        return postprocessor(raw, size, mask=self.mask)


class Registration(InferenceTechnique):
    """Align each test image to a reference normal image, then score it with the model.

    The transforms depend on the images only, so they are estimated once per image and reused
    for every checkpoint. The aligned image is resampled with reflection padding; its raw map is
    resized to the image, warped back (border padding) so metrics use the original ground truth,
    and post-processed there by the model's post-processor.

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
        raw = model.raw_output(aligned)  # stitched tiles with dataset.tiling
        size = tuple(images.shape[-2:])
        back = warp(
            resize_map(raw.anomaly_map.float(), size),
            torch.linalg.inv(src_homo_dst),
            padding_mode="border",
        )
        return model.postprocessor(raw._replace(anomaly_map=back), size)
