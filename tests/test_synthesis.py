"""Seeded Perlin noise, Perlin masks and the DRAEM / cutout anomaly generators (CPU, small maps)."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from adlab.synthesis import (
    CODE_SOURCE_OPS,
    DraemAnomalySynthesizer,
    augment_sources,
    fractal_perlin_noise_2d,
    labelled_cutout,
    perlin_mask,
    perlin_noise_2d,
    perlin_textures,
    random_perlin_resolutions,
)

RED = (1.0, 0.0, 0.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hf_energy(noise: torch.Tensor) -> float:
    """Mean squared difference of horizontal neighbours (energy of the highest frequencies)."""
    return (noise[..., 1:] - noise[..., :-1]).pow(2).mean().item()


@pytest.fixture(scope="module")
def red_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DTD-like folder (``images/<class>/``) holding one pure red texture."""
    root = tmp_path_factory.mktemp("dtd")
    (root / "images" / "red").mkdir(parents=True)
    Image.new("RGB", (12, 12), tuple(int(255 * c) for c in RED)).save(
        root / "images" / "red" / "red_0001.png"
    )
    return root


def test_perlin_seeded_shaped_and_in_range() -> None:
    res = random_perlin_resolutions(6, (0, 6), _gen(0))
    assert res.shape == (6, 2) and set(res.unique().tolist()) <= {1, 2, 4, 8, 16, 32}
    noise = perlin_noise_2d((37, 50), res, _gen(1))  # sizes not divisible by the lattice
    assert noise.shape == (6, 37, 50) and noise.dtype == torch.float32
    assert noise.abs().max() <= 1.0 + 1e-5 and noise.std() > 0.1
    assert torch.equal(noise, perlin_noise_2d((37, 50), res, _gen(1)))
    assert not torch.allclose(noise, perlin_noise_2d((37, 50), res, _gen(2)))


def test_perlin_is_zero_on_the_lattice() -> None:
    noise = perlin_noise_2d((16, 16), torch.tensor([[4.0, 2.0]]), _gen(0))
    assert noise[0, ::4, ::8].abs().max() < 1e-6  # gradient noise vanishes at lattice points


def test_more_octaves_add_high_frequencies() -> None:
    res = torch.full((8, 2), 2.0)
    energies = [
        _hf_energy(fractal_perlin_noise_2d((64, 64), res, octaves, generator=_gen(0)))
        for octaves in (1, 2, 4)
    ]
    assert energies[0] < energies[1] < energies[2]


def test_perlin_mask_binary_seeded_and_thresholded() -> None:
    mask = perlin_mask(8, (40, 24), generator=_gen(0))
    assert mask.shape == (8, 1, 40, 24) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask, perlin_mask(8, (40, 24), generator=_gen(0)))
    low = perlin_mask(8, (40, 24), threshold=0.2, rotation=None, generator=_gen(0))
    high = perlin_mask(8, (40, 24), threshold=0.6, rotation=None, generator=_gen(0))
    assert bool((high <= low).all()) and high.sum() < low.sum()
    ranged = perlin_mask(8, (40, 24), threshold=(0.3, 0.7), generator=_gen(0))
    assert set(ranged.unique().tolist()) <= {0.0, 1.0}


def test_textures_and_augmentations_stay_in_range() -> None:
    textures = perlin_textures(3, (20, 30), generator=_gen(0))
    assert textures.shape == (3, 3, 20, 30)
    assert textures.min() >= 0 and textures.max() <= 1
    out = augment_sources(textures, CODE_SOURCE_OPS, 3, _gen(1))
    assert out.shape == textures.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, augment_sources(textures, CODE_SOURCE_OPS, 3, _gen(1)))
    with pytest.raises(ValueError, match="source ops"):
        augment_sources(textures, ["no_such_op"], 1)


def test_synthesizer_mask_is_exactly_where_the_image_changed() -> None:
    synth = DraemAnomalySynthesizer(p_normal=0.25, source_ops=CODE_SOURCE_OPS, cut=0.5)
    images = torch.rand(12, 3, 32, 32)
    augmented, mask = synth(images, _gen(0))
    assert augmented.shape == images.shape and mask.shape == (12, 1, 32, 32)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
    assert torch.equal((augmented != images).any(dim=1, keepdim=True).float(), mask)
    assert augmented.min() >= 0 and augmented.max() <= 1
    again = synth(images, _gen(0))
    assert torch.equal(augmented, again[0]) and torch.equal(mask, again[1])


def test_synthesizer_respects_opacity(red_source: Path) -> None:
    """With a pure red source and no augmentation, ``I_a = beta I + (1 - beta) A`` in the mask."""
    red = torch.tensor(RED).view(1, 3, 1, 1)
    images = torch.rand(6, 3, 32, 32) * 0.5 + 0.25
    fixed = DraemAnomalySynthesizer(red_source, 0.0, (0.3, 0.3), [], 0, threshold=0.0)
    augmented, mask = fixed(images, _gen(0))
    inside = mask.expand_as(images) > 0
    expected = 0.3 * images + 0.7 * red
    assert inside.any() and torch.allclose(augmented[inside], expected.expand_as(images)[inside])
    ranged = DraemAnomalySynthesizer(red_source, 0.0, (0.2, 0.6), [], 0, threshold=0.0)
    augmented, mask = ranged(images, _gen(1))
    beta = (augmented - red) / (images - red)  # per pixel; exact where the mask is set
    beta = beta[:, 1:2][mask > 0]
    assert beta.min() >= 0.2 - 1e-4 and beta.max() <= 0.6 + 1e-4


@pytest.mark.parametrize("p_normal", [0.0, 0.5, 1.0])
def test_synthesizer_honours_normal_probability(p_normal: float) -> None:
    synth = DraemAnomalySynthesizer(
        p_normal=p_normal, threshold=-2.0, source_ops=[], n_source_ops=0
    )
    images = torch.rand(400, 3, 8, 8)
    augmented, mask = synth(images, _gen(0))
    anomalous = mask.flatten(1).amax(dim=1) > 0
    assert anomalous.float().mean().item() == pytest.approx(1 - p_normal, abs=0.08)
    assert torch.equal(augmented[~anomalous], images[~anomalous])


def test_cutout_changes_only_the_cut_region() -> None:
    images = torch.rand(16, 3, 40, 40)
    augmented, region = labelled_cutout(images, (0.1, 0.3), 3, _gen(0))
    outside = region.expand_as(images) == 0
    assert torch.equal(augmented[outside], images[outside])
    assert (region.flatten(1).sum(dim=1) >= 4).all()  # every image got at least one rectangle
    assert region.flatten(1).mean(dim=1).max() <= 3 * 0.3**2 + 1e-6
    synth = DraemAnomalySynthesizer(p_normal=0.0, cut=1.0, cut_size=(0.1, 0.3))
    augmented, mask = synth(images, _gen(0))
    changed = (augmented != images).any(dim=1, keepdim=True).float()
    assert torch.equal(changed, mask) and mask.sum() > 0


def test_missing_anomaly_source_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no_dtd_here"
    with pytest.raises(FileNotFoundError, match="no_dtd_here"):
        DraemAnomalySynthesizer(anomaly_source=missing)
    with pytest.raises(FileNotFoundError, match="holds no image"):
        DraemAnomalySynthesizer(anomaly_source=tmp_path)
