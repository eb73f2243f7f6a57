"""The one post-processor: resize -> smooth -> (mask) -> score -> threshold.

Every method's ``predict_anomaly`` returns its *raw* map (any resolution, unsmoothed); the base
class (:meth:`adlab.models.base.AnomalyModule.evaluate_images`), ``evaluate.py``'s techniques
and the tiler run it through the method's :class:`PostProcessor` (``postprocess:`` block of
``configs/model/<m>.yaml``), so a map and its image score always come from the same steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kornia.filters import box_blur
from torch import Tensor

from adlab.postprocess.maps import center_crop, gaussian_smooth, mask_map, resize_map
from adlab.types import AnomalyOutput

SCORE_RULES = ("max", "mean", "mean_filtered_max", "topk_mean", "method")
"""Image-score rules: a function of the post-processed map, or ``method`` (the method's own)."""


@dataclass(frozen=True)
class PostProcessor:
    """resize -> Gaussian smoothing -> optional mask -> image score -> thresholds.

    Args:
        sigma: Gaussian smoothing of the resized map in output pixels (0 = none).
        score: image-score rule, one of :data:`SCORE_RULES`: ``max`` of the map, ``mean``,
            ``mean_filtered_max`` (max of the ``kernel_size`` box-filtered map, zero padding:
            DRAEM eq. 5), ``topk_mean`` (mean of the ``top_k`` fraction of largest pixels) or
            ``method`` (the ``pred_score`` the method returned, for scores that are not a
            function of the map: a classifier's logit, AnoGAN's mapping loss, DMAD's combined
            calibrated maxima).
        kernel_size: box size of ``mean_filtered_max`` (odd, >= 1).
        top_k: fraction of the map's pixels averaged by ``topk_mean``, in ``(0, 1]``.
        eval_crop: score (and pixel metrics) inside the central ``eval_crop`` square of the map
            only (DDAD's official protocol); None: the whole map. The map keeps its full size.
    """

    sigma: float = 0.0
    score: str = "max"
    kernel_size: int = 21
    top_k: float = 0.01
    eval_crop: int | None = None

    def __post_init__(self) -> None:
        if self.score not in SCORE_RULES:
            raise ValueError(
                f"postprocess.score={self.score!r}: expected one of {', '.join(SCORE_RULES)}"
            )
        if self.sigma < 0:
            raise ValueError(f"postprocess.sigma={self.sigma}: expected a value >= 0 (0 = none)")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"postprocess.kernel_size={self.kernel_size}: expected an odd size >= 1"
            )
        if not 0 < self.top_k <= 1:
            raise ValueError(f"postprocess.top_k={self.top_k}: expected a fraction in (0, 1]")
        if self.eval_crop is not None and self.eval_crop < 1:
            raise ValueError(
                f"postprocess.eval_crop={self.eval_crop}: expected a positive size or null"
            )

    def replace(self, **changes: Any) -> PostProcessor:
        """A copy with some fields changed (e.g. ``sigma`` for a smoothing sweep)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the steps
    def smooth(self, anomaly_map: Tensor) -> Tensor:
        """Gaussian smoothing with ``sigma``: ``(B, 1, H, W) -> (B, 1, H, W)``."""
        return gaussian_smooth(anomaly_map, self.sigma)

    def crop(self, x: Tensor) -> Tensor:
        """The ``eval_crop`` window of a map or mask ``(B, C, H, W)`` (identity without one)."""
        return center_crop(x, self.eval_crop) if self.eval_crop else x

    def score_map(self, anomaly_map: Tensor) -> Tensor:
        """The named rule on a post-processed map: ``(B, 1, H, W) -> (B,)``.

        Raises:
            ValueError: for ``score="method"``, which is not a function of the map.
        """
        region = self.crop(anomaly_map)
        if self.score == "max":
            return region.flatten(1).amax(dim=1)
        if self.score == "mean":
            return region.flatten(1).mean(dim=1)
        if self.score == "mean_filtered_max":
            box = box_blur(region, self.kernel_size, border_type="constant", separable=True)
            return box.flatten(1).amax(dim=1)
        if self.score == "topk_mean":
            pixels = region.flatten(1)
            k = max(1, round(self.top_k * pixels.shape[1]))
            return pixels.topk(k, dim=1).values.mean(dim=1)
        raise ValueError("postprocess.score=method: the score comes from the method, not the map")

    def __call__(
        self, raw: AnomalyOutput, size: tuple[int, int], mask: Tensor | None = None
    ) -> AnomalyOutput:
        """Post-process a method's raw output at the output ``size``.

        Args:
            raw: ``anomaly_map`` ``(B, 1, h, w)`` float, unsmoothed, any resolution (a method's
                ``predict_anomaly``, or tiles stitched into one map); ``pred_score`` ``(B,)`` is
                needed for ``score="method"`` only and ignored by the map rules;
                ``reconstruction`` ``(B, 3, H, W)`` or None is passed through.
            size: output ``(H, W)``.
            mask: optional ``(1 or B, 1, H, W)`` region (nonzero = kept) applied after smoothing,
                before scoring (:func:`~adlab.postprocess.maps.mask_map`).

        Returns:
            ``anomaly_map`` ``(B, 1, H, W)`` float32 and ``pred_score`` ``(B,)`` float32 (and
            the reconstruction).
        """
        anomaly_map = self.smooth(resize_map(raw.anomaly_map.float(), tuple(size)))
        if mask is not None:
            anomaly_map = mask_map(anomaly_map, mask)
        if self.score == "method":
            if raw.pred_score is None:
                raise ValueError(
                    "postprocess.score=method needs the method's pred_score, got None: "
                    "pick a map rule or return a score from predict_anomaly"
                )
            pred_score = raw.pred_score.float()
        else:
            pred_score = self.score_map(anomaly_map)
        return AnomalyOutput(anomaly_map, pred_score, raw.reconstruction)

    @staticmethod
    def decide(
        out: AnomalyOutput, image_threshold: float, pixel_threshold: float
    ) -> tuple[Tensor, Tensor]:
        """Thresholds: ``pred_label (B,)`` = score >= image threshold, ``pred_mask (B, 1, H,
        W)`` = map >= pixel threshold (both False against an unset NaN threshold)."""
        return out.pred_score >= image_threshold, out.anomaly_map >= pixel_threshold


def legacy_postprocess(model_cfg: dict[str, Any], default: PostProcessor) -> dict[str, Any]:
    """A stored model config from before the ``postprocess`` block, rewritten to have one.

    Old keys: ``map_sigma`` (the method's smoothing) and ``smoothing_sigma`` (the base's, on top;
    two Gaussians compose to ``sqrt(s1^2 + s2^2)``; the old score ignored it, the bug this
    fixes), ``score`` (AnoGAN ``anogan`` = ``method``; AnoDDPM ``max``/``mean``),
    ``score_kernel`` (DRAEM) and ``eval_crop`` (DDAD). Other keys pass unchanged.

    Args:
        model_cfg: the resolved model config stored in a checkpoint.
        default: the module class's :attr:`default_postprocess`.

    Returns:
        ``model_cfg`` itself if it has a ``postprocess`` entry, else an upgraded copy.
    """
    if "postprocess" in model_cfg:
        return model_cfg
    cfg = dict(model_cfg)
    fields = dataclasses.asdict(default)
    sigma = cfg.pop("map_sigma", fields["sigma"]) ** 2 + cfg.pop("smoothing_sigma", 0.0) ** 2
    fields["sigma"] = float(sigma**0.5)
    if "score" in cfg:
        fields["score"] = {"anogan": "method"}.get(cfg["score"], cfg["score"])
        cfg.pop("score")
    if "score_kernel" in cfg:
        fields["kernel_size"] = cfg.pop("score_kernel")
    if "eval_crop" in cfg:
        fields["eval_crop"] = cfg.pop("eval_crop")
    cfg["postprocess"] = {"_target_": f"{__name__}.PostProcessor", **fields}
    return cfg
