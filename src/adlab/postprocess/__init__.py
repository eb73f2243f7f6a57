"""Post-processing of anomaly maps.

- :mod:`~adlab.postprocess.pipeline`: :class:`PostProcessor`, the ONE post-processing path.
- :mod:`~adlab.postprocess.maps`: its building blocks (smoothing, resizing, masking, crop, max).
- :mod:`~adlab.postprocess.foreground`: object masks estimated from normal images or read from disk.
- :mod:`~adlab.postprocess.registration`: aligning images to a reference normal image (kornia).
- :mod:`~adlab.postprocess.techniques`: the techniques ``evaluate.py`` compares (they reuse the
  model's :class:`PostProcessor`).
- :mod:`~adlab.postprocess.tiler`: tiled training and inference at native resolution
  (``dataset.tiling``): raw tile maps stitched, then this post-processor
  (``module.raw_output``).

The post-processing API
-----------------------
A method's ``predict_anomaly(images)`` returns its RAW output, an
:class:`~adlab.types.AnomalyOutput` whose ``anomaly_map`` is ``(B, 1, h, w)`` at any resolution
and unsmoothed, whose ``pred_score`` ``(B,)`` is set only when the method has a score of its own
(``score: method``) and may otherwise be None. The method's post-processor
``module.postprocessor`` (a :class:`PostProcessor`, built from the ``postprocess:`` block of
``configs/model/<m>.yaml``) turns it into the final output::

    out = module.postprocessor(raw, size=(H, W), mask=None)
    # raw.anomaly_map (B, 1, h, w) -> resize to (H, W) (bilinear) -> Gaussian(sigma)
    #   -> optional mask (1 or B, 1, H, W) -> score by the named rule
    # out.anomaly_map (B, 1, H, W) float32, out.pred_score (B,) float32,
    # out.reconstruction passed through from raw
    pred_label, pred_mask = PostProcessor.decide(out, module.image_threshold,
                                                 module.pixel_threshold)

``module.evaluate_images(images)`` is exactly ``module.postprocessor(module.predict_anomaly(
images), images.shape[-2:])``. A tiler stitches the raw tile maps into one ``(B, 1, h, w)`` map
(in raw units, before any smoothing) and calls ``module.postprocessor(AnomalyOutput(stitched,
score), size)``; ``score`` is needed only when ``module.postprocessor.score == "method"`` (then
it must combine the tiles' ``pred_score`` itself, e.g. their max). ``module.postprocessor.crop``
gives the window the metrics see (DDAD's ``eval_crop``; identity otherwise).
"""

from adlab.postprocess.maps import center_crop, gaussian_smooth, mask_map, max_score, resize_map
from adlab.postprocess.pipeline import SCORE_RULES, PostProcessor

__all__ = [
    "SCORE_RULES",
    "PostProcessor",
    "center_crop",
    "gaussian_smooth",
    "mask_map",
    "max_score",
    "resize_map",
]
