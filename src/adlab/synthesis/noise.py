"""Noise generators for diffusion and anomaly synthesis (Gaussian, multi-octave simplex).

Every generator that the diffusion scheduler uses follows ``NoiseFn``:
``noise_fn(like, t, generator) -> Tensor`` with the shape, device and dtype of ``like``. Spatial
noise for synthetic anomalies lives here too: 2D gradient (Perlin) noise ``perlin_noise_2d``, its
fractal sum ``fractal_perlin_noise_2d`` and the binary DRAEM masks ``perlin_mask``.

The simplex kernel is the 3D simplex noise of Perlin (2001) in the formulation of S. Gustavson,
"Simplex noise demystified" (2005): skew to the simplicial lattice, 4 corner contributions
``max(0, 0.6 - |d|^2)^4 <g, d>`` with 12 edge gradients, scaled by 32. AnoDDPM (Wyatt et al.
2022) uses OpenSimplex instead; both are smooth gradient noises with the same role. Everything is
vectorised over ``(B * C)`` maps with one random permutation table per map (no Python loops over
pixels), so each sample and channel gets its own noise, which the official code does not (it
repeats one map over the batch).

Matching the official statistics (``fixtures/official/anoddpm_simplex.json``, AnoDDPM @ 3052f04,
6 octaves, persistence 0.8, frequency 64, 256 px maps): OpenSimplex's kernel radius is twice
Gustavson's in lattice units (attenuation ``2 - |d|^2`` vs ``0.6 - |d|^2``), so the official
frequency f corresponds to our feature size ``2 f`` (128 px: autocorrelation within 0.013 at lags
1-32 px), and the official octave sum has std ``OFFICIAL_SIMPLEX_STD``, to which
``SimplexNoise(std=...)`` rescales.
"""

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from einops import rearrange, repeat
from kornia.geometry.transform import rotate
from torch import Tensor

_F3 = 1.0 / 3.0  # skew factor (sqrt(4) - 1) / 3
_G3 = 1.0 / 6.0  # unskew factor (1 - 1 / sqrt(4)) / 3
# Standard deviation of one octave of ``simplex_noise_3d`` at random positions, measured over
# 2**22 samples with random permutations (four seeds agree within 0.1%); normalises octave sums.
SIMPLEX_STD = 0.4255
# Standard deviation of the official AnoDDPM generator at its defaults (6 octaves, p 0.8, f 64) over
# maps and pixels: per-map std 0.503 (0.469-0.545 over 8 maps), per-map means sd 0.063.
OFFICIAL_SIMPLEX_STD = 0.507


class NoiseFn(Protocol):
    """Noise used by the forward process and ancestral sampling steps."""

    def __call__(
        self, like: Tensor, t: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw noise.

        Args:
            like: ``(B, C, H, W)`` tensor whose shape, device and dtype the noise takes.
            t: ``(B,)`` long diffusion timestep indices, or ``None`` (ignored by some noises).
            generator: Optional ``torch.Generator`` for reproducible draws.

        Returns:
            ``(B, C, H, W)`` noise with zero mean and unit variance.
        """
        ...


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """U[0, 1) float32 on ``like``'s device, drawn on the generator's device for reproducibility."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like.device)


def gaussian_noise(
    like: Tensor, t: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """White Gaussian noise eps ~ N(0, I) (Ho et al. 2020, eq. 4); a ``NoiseFn``.

    Args:
        like: Tensor of any shape; the noise copies its shape, device and dtype.
        t: Ignored (kept for the ``NoiseFn`` signature).
        generator: Optional ``torch.Generator``.

    Returns:
        Noise shaped like ``like``.
    """
    device = generator.device if generator is not None else like.device
    eps = torch.randn(like.shape, generator=generator, device=device)
    return eps.to(device=like.device, dtype=like.dtype)


def random_permutations(n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """One random permutation of 0..255 per noise map, doubled to avoid index wrapping.

    Returns:
        ``(n, 512)`` long tensor on ``like``'s device.
    """
    perm = torch.argsort(_uniform((n, 256), like, generator), dim=1)
    return torch.cat([perm, perm], dim=1)


# The 12 cube-edge-midpoint gradients of Gustavson (2005), indexed by hash % 12: 0-3
# ``(+-1, +-1, 0)``, 4-7 ``(+-1, 0, +-1)``, 8-11 ``(0, +-1, +-1)``.
_GRAD3 = (
    (1, 1, 0), (-1, 1, 0), (1, -1, 0), (-1, -1, 0),
    (1, 0, 1), (-1, 0, 1), (1, 0, -1), (-1, 0, -1),
    (0, 1, 1), (0, -1, 1), (0, 1, -1), (0, -1, -1),
)  # fmt: skip


def _gradient_tables(perm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-map gradient components ``g[perm[i] % 12]``: three ``(N, 512)`` float tables, so the
    last hash lookup of a corner yields its gradient directly."""
    grad = torch.tensor(_GRAD3, dtype=torch.float32, device=perm.device)[perm % 12]
    return grad[..., 0], grad[..., 1], grad[..., 2]


def simplex_noise_3d(x: Tensor, y: Tensor, z: Tensor, perm: Tensor) -> Tensor:
    """3D simplex noise S(x, y, z) (Gustavson 2005), one permutation table per row.

    Args:
        x: ``(N, P)`` float coordinates in lattice units (one row per noise map); ``x``, ``y``
            and ``z`` may be any shapes that broadcast to ``(N, P)``.
        y: ``(N, P)``.
        z: ``(N, P)``.
        perm: ``(N, 512)`` long permutation tables from ``random_permutations``.

    Returns:
        ``(N, P)`` noise in about [-1, 1] with std ``SIMPLEX_STD`` and feature size ~1.
    """
    x, y, z = (c.float() for c in torch.broadcast_tensors(x, y, z))
    s = (x + y + z) * _F3  # skew to the simplicial lattice
    i, j, k = torch.floor(x + s), torch.floor(y + s), torch.floor(z + s)
    t = (i + j + k) * _G3  # unskew the cell origin
    x0, y0, z0 = x - i + t, y - j + t, z - k + t
    # Rank the offsets to find which of the 6 tetrahedra holds the point.
    gx, gy, gz = x0 >= y0, y0 >= z0, z0 >= x0
    second = (gx & ~gz, gy & ~gx, gz & ~gy)
    third = (gx | ~gz, gy | ~gx, gz | ~gy)
    ii, jj, kk = (c.long() & 255 for c in (i, j, k))
    grad_x, grad_y, grad_z = _gradient_tables(perm)
    # The 4 corners: lattice steps as long (hash indices) and float (offsets).
    corners = [((0, 0, 0), (0.0, 0.0, 0.0))]
    corners += [(tuple(m.long() for m in c), tuple(m.float() for m in c)) for c in (second, third)]
    corners += [((1, 1, 1), (1.0, 1.0, 1.0))]
    noise = torch.zeros_like(x)
    for n, ((a, b, c), (fa, fb, fc)) in enumerate(corners):
        dx, dy, dz = x0 - (fa - n * _G3), y0 - (fb - n * _G3), z0 - (fc - n * _G3)
        h = perm.gather(1, kk + c)
        h = ii + a + perm.gather(1, jj + b + h)
        weight = (0.6 - dx * dx - dy * dy - dz * dz).clamp_(min=0).square_().square_()
        dot = grad_x.gather(1, h) * dx + grad_y.gather(1, h) * dy + grad_z.gather(1, h) * dz
        noise += weight * dot
    return 32.0 * noise


def simplex_octave_noise(
    perm: Tensor,
    offsets: Tensor,
    size: tuple[int, int],
    z: Tensor,
    octaves: int,
    persistence: float,
    frequency: float,
) -> Tensor:
    """Multi-octave (fractal) simplex noise over a pixel grid (AnoDDPM, Wyatt et al. 2022, sec. 3).

    ``n(x, y) = sum_{k < octaves} p^k S(x / f_k + o_k, y / f_k + o_k, z / f_k + o_k)`` with
    ``f_k = frequency / 2^k`` (the feature size of octave k in pixels) and per-map, per-octave
    random offsets ``o_k``.

    Args:
        perm: ``(N, 512)`` permutation tables, one per map.
        offsets: ``(octaves, N, 3)`` lattice offsets.
        size: ``(H, W)``.
        z: ``(N, 1)`` third coordinate (the diffusion timestep) in pixel units.
        octaves: Number of octaves.
        persistence: Amplitude ratio p between successive octaves.
        frequency: Feature size f of the first octave in pixels.

    Returns:
        ``(N, H, W)`` unnormalised noise.
    """
    H, W = size
    yy, xx = torch.meshgrid(
        torch.arange(H, device=perm.device, dtype=torch.float32),
        torch.arange(W, device=perm.device, dtype=torch.float32),
        indexing="ij",
    )
    x, y = rearrange(xx, "h w -> 1 (h w)"), rearrange(yy, "h w -> 1 (h w)")
    total = torch.zeros(perm.shape[0], H * W, device=perm.device)
    for k in range(octaves):
        f_k = frequency / 2**k
        o = offsets[k].unsqueeze(-1)  # (N, 3, 1)
        total += persistence**k * simplex_noise_3d(
            x / f_k + o[:, 0], y / f_k + o[:, 1], z / f_k + o[:, 2], perm
        )
    return rearrange(total, "n (h w) -> n h w", h=H)


class SimplexNoise:
    """Multi-octave 3D simplex noise as a ``NoiseFn`` (AnoDDPM's ``noise_fn="simplex"``).

    Each ``(sample, channel)`` map gets its own permutation table and octave offsets from
    ``generator``; the diffusion timestep ``t`` is the third coordinate, so noise for nearby
    timesteps is correlated, as in the official code.

    The defaults reproduce the official generator's statistics (module docstring): feature size
    128 px (= the official ``frequency=64`` of OpenSimplex) and std ``OFFICIAL_SIMPLEX_STD``
    (~0.5, so at lambda = 250 the signal-to-noise ratio is the official ~4.2). ``std=1.0`` gives
    unit variance like the Gaussian it replaces (a stronger corruption: 250 then acts like the
    official ~380); ``std=None`` returns the raw octave sum (std ``self.raw_std``, ~0.68).

    Args:
        octaves: Number of octaves (official 6).
        persistence: Amplitude ratio p between octaves (official 0.8).
        frequency: Feature size f of the first octave in pixels of this kernel (official 64 for
            OpenSimplex = 128 here).
        std: Standard deviation the octave sum is rescaled to, or ``None`` for the raw sum.
    """

    def __init__(
        self,
        octaves: int = 6,
        persistence: float = 0.8,
        frequency: float = 128.0,
        std: float | None = OFFICIAL_SIMPLEX_STD,
    ) -> None:
        if std is not None and std <= 0:
            raise ValueError(f"SimplexNoise std must be > 0 or None, got {std}")
        self.octaves = octaves
        self.persistence = persistence
        self.frequency = frequency
        self.std = std

    @property
    def raw_std(self) -> float:
        """Standard deviation of the raw octave sum (octaves treated as independent)."""
        return SIMPLEX_STD * sum(self.persistence ** (2 * k) for k in range(self.octaves)) ** 0.5

    def __call__(
        self, like: Tensor, t: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw one noise map per sample and channel.

        Args:
            like: ``(B, C, H, W)`` tensor whose shape, device and dtype the noise takes.
            t: ``(B,)`` diffusion timestep indices (third noise coordinate), or ``None`` for 0.
            generator: Optional ``torch.Generator``; the same seed gives the same noise.

        Returns:
            ``(B, C, H, W)`` noise, zero mean, standard deviation ``std`` (if set).
        """
        B, C, H, W = like.shape
        perm = random_permutations(B * C, like, generator)
        offsets = 256.0 * _uniform((self.octaves, B * C, 3), like, generator)
        t = torch.zeros(B, device=like.device) if t is None else t.to(like.device)
        z = repeat(t.float(), "b -> (b c) 1", c=C)
        noise = simplex_octave_noise(
            perm, offsets, (H, W), z, self.octaves, self.persistence, self.frequency
        )
        if self.std is not None:
            noise = noise * (self.std / self.raw_std)
        return rearrange(noise, "(b c) h w -> b c h w", b=B).to(like.dtype)


# ---------------------------------------------------------------------------------------- Perlin
def _fade(t: Tensor) -> Tensor:
    """Perlin's quintic fade ``6 t^5 - 15 t^4 + 10 t^3`` (Perlin 2002)."""
    return t * t * t * (t * (t * 6 - 15) + 10)


def _pair(value: float | Sequence[float]) -> tuple[float, float]:
    """``0.5 -> (0.5, 0.5)``; a 2-sequence (also a Hydra ``ListConfig``) -> a tuple."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    low, high = value
    return float(low), float(high)


def perlin_noise_2d(
    size: tuple[int, int], res: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """2D gradient (Perlin) noise, one lattice resolution per map (DRAEM's ``rand_perlin_2d``).

    Pixel ``(i, j)`` of map ``n`` sits at lattice point ``(i r_y / H, j r_x / W)``; random unit
    gradients at the integer lattice points, quintic fade, bilinear blend of the 4 corner dot
    products, times ``sqrt(2)`` (range about [-1, 1]). The lattice is not tied to the pixel grid,
    so any ``H, W`` and resolution works (the official code needs ``H`` divisible by ``r_y``).

    Args:
        size: ``(H, W)``.
        res: ``(N, 2)`` lattice resolutions (cells along y and x), one row per map; the noise
            is created on its device.
        generator: Optional ``torch.Generator``; the same seed gives the same noise.

    Returns:
        ``(N, H, W)`` float32 noise.
    """
    H, W = size
    res = res.float()
    n, gx = res.shape[0], int(res[:, 1].max().ceil()) + 1
    angles = 2 * math.pi * _uniform((n, int(res[:, 0].max().ceil()) + 1, gx), res, generator)
    grad_x, grad_y = angles.cos().flatten(1), angles.sin().flatten(1)  # (N, lattice points)
    py = torch.arange(H, device=res.device) * (res[:, :1] / H)  # (N, H)
    px = torch.arange(W, device=res.device) * (res[:, 1:] / W)  # (N, W)
    iy, ix = rearrange(py.long(), "n h -> n h 1"), rearrange(px.long(), "n w -> n 1 w")
    fy, fx = rearrange(py.frac(), "n h -> n h 1"), rearrange(px.frac(), "n w -> n 1 w")
    cell = rearrange(iy * gx + ix, "n h w -> n (h w)")  # flat index of the top-left corner

    def corner(dy: int, dx: int) -> Tensor:
        index = cell + (dy * gx + dx)
        g_x = rearrange(grad_x.gather(1, index), "n (h w) -> n h w", h=H)
        g_y = rearrange(grad_y.gather(1, index), "n (h w) -> n h w", h=H)
        return g_x * (fx - dx) + g_y * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = torch.lerp(corner(0, 0), corner(0, 1), u)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), u)
    return math.sqrt(2) * torch.lerp(top, bottom, v)


def fractal_perlin_noise_2d(
    size: tuple[int, int],
    res: Tensor,
    octaves: int = 1,
    persistence: float = 0.5,
    lacunarity: float = 2.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fractal Perlin noise ``sum_{k < octaves} p^k P(l^k res)`` (DRAEM ``rand_perlin_2d_octaves``).

    Args:
        size: ``(H, W)``.
        res: ``(N, 2)`` lattice resolutions of the first octave.
        octaves: Number of octaves; each adds detail at ``lacunarity`` times the frequency.
        persistence: Amplitude ratio p between successive octaves.
        lacunarity: Frequency ratio l between successive octaves.
        generator: Optional ``torch.Generator``.

    Returns:
        ``(N, H, W)`` unnormalised noise.
    """
    noise = perlin_noise_2d(size, res, generator)
    for k in range(1, octaves):
        noise = noise + persistence**k * perlin_noise_2d(size, res * lacunarity**k, generator)
    return noise


def random_perlin_resolutions(
    n: int,
    scale_exp_range: tuple[int, int] = (0, 6),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random lattice resolutions ``(2^i, 2^j)``, ``i, j ~ U{low, ..., high - 1}`` per axis (DRAEM).

    Returns:
        ``(n, 2)`` float resolutions on ``device``.
    """
    low, high = scale_exp_range
    exps = low + (_uniform((n, 2), torch.empty(0, device=device), generator) * (high - low)).floor()
    return 2.0**exps


def perlin_mask(
    n: int,
    size: tuple[int, int],
    scale_exp_range: tuple[int, int] = (0, 6),
    threshold: float | Sequence[float] = 0.5,
    rotation: Sequence[float] | None = (-90.0, 90.0),
    octaves: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Binary anomaly shapes: thresholded, rotated Perlin noise (DRAEM sec. 3.3, mask M_a).

    Per map: lattice resolution ``2^[low, high)`` per axis, Perlin noise rotated by an angle
    ``U(rotation)`` (kornia, zeros outside the rotated map), then ``M = noise > threshold``.

    Args:
        n: Number of masks.
        size: ``(H, W)``.
        scale_exp_range: Exponent range of the lattice resolution (official code ``(0, 6)``).
        threshold: Binarisation threshold (official code 0.5), or a ``(low, high)`` range to draw
            one per mask (the paper's random threshold).
        rotation: Angle range in degrees (official code ``(-90, 90)``); ``None`` disables it.
        octaves: Octaves of fractal noise (DRAEM: 1).
        generator: Optional ``torch.Generator``.
        device: Device of the masks.

    Returns:
        ``(n, 1, H, W)`` float32 masks in ``{0, 1}``.
    """
    like = torch.empty(0, device=device)
    res = random_perlin_resolutions(n, scale_exp_range, generator, device)
    noise = rearrange(
        fractal_perlin_noise_2d(size, res, octaves, generator=generator), "n h w -> n 1 h w"
    )
    if rotation is not None:
        low, high = _pair(rotation)
        noise = rotate(noise, low + (high - low) * _uniform((n,), like, generator))
    low, high = _pair(threshold)
    thr = low + (high - low) * _uniform((n, 1, 1, 1), like, generator)
    return (noise > thr).float()
