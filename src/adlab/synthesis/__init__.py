"""Noise and synthetic-anomaly generators (the only home for Perlin/simplex noise)."""

from adlab.synthesis.anomalies import (
    CODE_SOURCE_OPS,
    PAPER_SOURCE_OPS,
    SOURCE_OPS,
    DraemAnomalySynthesizer,
    augment_sources,
    labelled_cutout,
    list_images,
    perlin_textures,
)
from adlab.synthesis.noise import (
    NoiseFn,
    SimplexNoise,
    fractal_perlin_noise_2d,
    gaussian_noise,
    perlin_mask,
    perlin_noise_2d,
    random_perlin_resolutions,
    simplex_noise_3d,
)

__all__ = [
    "CODE_SOURCE_OPS",
    "PAPER_SOURCE_OPS",
    "SOURCE_OPS",
    "DraemAnomalySynthesizer",
    "NoiseFn",
    "SimplexNoise",
    "augment_sources",
    "fractal_perlin_noise_2d",
    "gaussian_noise",
    "labelled_cutout",
    "list_images",
    "perlin_mask",
    "perlin_noise_2d",
    "perlin_textures",
    "random_perlin_resolutions",
    "simplex_noise_3d",
]
