"""DRAEM: loss terms on known inputs, the mean-filter score, shapes and parameter counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from adlab.models.draem import (
    DiscriminativeSubNetwork,
    DraemModel,
    DraemModule,
    ReconstructiveSubNetwork,
)
from adlab.models.draem.lightning_model import (
    draem_losses,
    multistep_at_fractions,
    rotate_images,
)
from adlab.postprocess import PostProcessor
from adlab.synthesis import DraemAnomalySynthesizer


def _tiny_module(**kwargs: object) -> DraemModule:
    net = DraemModel(ReconstructiveSubNetwork(base_width=4), DiscriminativeSubNetwork(base_width=4))
    return DraemModule(net, DraemAnomalySynthesizer(p_normal=0.0), **kwargs)


def _mask() -> torch.Tensor:
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:16, 4:20] = 1
    return mask


def test_identical_reconstruction_has_zero_l2_and_ssim_loss() -> None:
    image = torch.rand(2, 3, 32, 32)
    terms = draem_losses(image.clone(), torch.zeros(2, 2, 32, 32), image, _mask())
    assert terms["l2"].item() == 0.0
    assert terms["ssim"].item() == pytest.approx(0.0, abs=1e-5)
    noisy_image = (image + 0.2 * torch.randn_like(image)).clamp(0, 1)
    noisy = draem_losses(noisy_image, torch.zeros(2, 2, 32, 32), image, _mask())
    assert noisy["l2"] > 0.01 and noisy["ssim"] > 0.1


@pytest.mark.parametrize("variant", ["official", "kornia"])
def test_focal_loss_values(variant: str) -> None:
    image, mask = torch.rand(2, 3, 32, 32), _mask()

    def focal(logits: torch.Tensor) -> float:
        return draem_losses(image, logits, image, mask, variant=variant)["focal"].item()

    perfect = torch.cat([1 - mask, mask], dim=1) * 40 - 20  # +-20 logits on the right class
    assert focal(perfect) == pytest.approx(0, abs=1e-8)
    # p_t = 0.5 everywhere: (1 - 0.5)^2 * -log(0.5) per pixel (gamma 2, alpha 1); the official
    # smoothing shifts p_t by 1e-5
    rel = 1e-5 if variant == "kornia" else 1e-4
    assert focal(torch.zeros(2, 2, 32, 32)) == pytest.approx(0.25 * math.log(2.0), rel=rel)
    wrong = focal(-perfect)
    assert wrong > focal(torch.zeros(2, 2, 32, 32))
    if variant == "official":  # smoothed: capped near -log(2e-5) = 10.8 per pixel
        assert wrong == pytest.approx(-math.log(2e-5), rel=1e-3)
    else:
        assert wrong > 39  # unbounded: -log softmax of a -40 margin


def test_official_ssim_takes_its_range_from_the_first_argument() -> None:
    """Fixture finding 1: L = 2 once the reconstruction dips below -0.5 (kornia: always 1)."""
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32)
    rec = image.clone()
    rec[:, :, 0, 0] = -0.6  # one dark pixel switches the official constants
    rec = (rec + 0.3 * torch.randn_like(rec)).clamp(-1, 1)
    official = draem_losses(rec, torch.zeros(2, 2, 32, 32), image, _mask(), variant="official")
    swapped = draem_losses(image, torch.zeros(2, 2, 32, 32), rec, _mask(), variant="official")
    assert official["ssim"] < swapped["ssim"] - 1e-3  # larger C1, C2 -> higher SSIM, lower loss


def test_score_is_max_of_the_21x21_mean_filtered_map() -> None:
    amap = torch.zeros(3, 1, 40, 40)
    amap[0, 0, 20, 20] = 1.0  # a single hot pixel is diluted by 21 * 21
    amap[1, 0, 5:26, 10:31] = 1.0  # a 21 x 21 block scores 1
    amap[2, 0, :11, :11] = 1.0  # an 11 x 11 corner block: zero padding counts in the mean
    mean_filter_max = PostProcessor(score="mean_filtered_max", kernel_size=21).score_map
    score = mean_filter_max(amap)
    assert score.tolist() == pytest.approx([1 / 441, 1.0, 121 / 441], rel=1e-5)
    rand = torch.rand(2, 1, 33, 35)
    official = F.avg_pool2d(rand, 21, stride=1, padding=10).flatten(1).amax(dim=1)
    assert torch.allclose(mean_filter_max(rand), official, atol=1e-6)


def test_predict_anomaly_shapes_and_ranges() -> None:
    module = _tiny_module().eval()
    with torch.no_grad():
        out = module.evaluate_images(torch.rand(2, 3, 64, 32))
    assert out.anomaly_map.shape == (2, 1, 64, 32) and out.pred_score.shape == (2,)
    assert out.anomaly_map.min() >= 0 and out.anomaly_map.max() <= 1
    assert out.reconstruction is not None and out.reconstruction.shape == (2, 3, 64, 32)
    with pytest.raises(ValueError, match="divisible by"):
        module.predict_anomaly(torch.rand(1, 3, 48, 48))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_training_step_gives_a_finite_loss_with_gradients() -> None:
    module = _tiny_module(rotate_prob=1.0)
    loss = module.training_step({"image": torch.rand(2, 3, 32, 32)}, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert module.net.reconstructive.encoder[0][0].weight.grad is not None  # not detached


def test_paper_widths_have_the_official_parameter_counts() -> None:
    with torch.device("meta"):
        rec, dis = ReconstructiveSubNetwork(), DiscriminativeSubNetwork()
    assert sum(p.numel() for p in rec.parameters()) == 69_048_579
    assert sum(p.numel() for p in dis.parameters()) == 28_374_146


def test_lr_schedule_and_rotation_helpers() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = multistep_at_fractions(optimizer, max_epochs=10)
    assert scheduler.milestones == {8: 1, 9: 1} and scheduler.gamma == 0.2
    images = torch.rand(3, 3, 16, 16)
    assert rotate_images(images, prob=0.0, degrees=45) is images
    rotated = rotate_images(
        images, prob=1.0, degrees=45, generator=torch.Generator().manual_seed(0)
    )
    assert rotated.shape == images.shape and not torch.equal(rotated, images)
