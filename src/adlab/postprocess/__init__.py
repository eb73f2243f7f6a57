"""Post-processing of anomaly maps.

- :mod:`~adlab.postprocess.maps`: smoothing, resizing, masking, image score (used by every method).
- :mod:`~adlab.postprocess.foreground`: object masks estimated from normal images or read from disk.
- :mod:`~adlab.postprocess.registration`: aligning images to a reference normal image (kornia).
- :mod:`~adlab.postprocess.techniques`: the techniques ``evaluate.py`` compares.
"""

from adlab.postprocess.maps import gaussian_smooth, mask_map, max_score, resize_map

__all__ = ["gaussian_smooth", "mask_map", "max_score", "resize_map"]
