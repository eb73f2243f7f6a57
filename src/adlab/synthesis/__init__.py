"""Noise and synthetic-anomaly generators (the only home for Perlin/simplex noise)."""

from adlab.synthesis.noise import NoiseFn, SimplexNoise, gaussian_noise, simplex_noise_3d

__all__ = ["NoiseFn", "SimplexNoise", "gaussian_noise", "simplex_noise_3d"]
