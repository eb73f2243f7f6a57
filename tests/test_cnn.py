"""One-class CNN: shapes, the exact CAM decomposition, training on synthetic anomalies only."""

import pytest
import torch
import torch.nn.functional as F

from adlab.models.cnn import CNNClassifier, CNNModule
from adlab.synthesis import DraemAnomalySynthesizer


class _Recording(DraemAnomalySynthesizer):
    """A synthesizer that remembers what it returned."""

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.last = super().__call__(images, generator)
        return self.last


def _tiny_module() -> CNNModule:
    net = CNNClassifier(widths=(4, 8), pool=2, pool_size=4, hidden=16)
    return CNNModule(net, _Recording(p_normal=0.0))


def test_seed_architecture_at_256_px() -> None:
    net = CNNClassifier()
    assert sum(p.numel() for p in net.parameters()) == 3_706_562  # the seed's count
    out = net(torch.rand(1, 3, 256, 256))
    assert out.logits.shape == (1, 2) and out.cam.shape == (1, 1, 15, 15)


@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_map_is_at_input_resolution(size: tuple[int, int]) -> None:
    module = _tiny_module().eval()
    with torch.no_grad():
        out = module.evaluate_images(torch.rand(3, 3, *size))
    assert out.anomaly_map.shape == (3, 1, *size) and out.pred_score.shape == (3,)
    assert torch.isfinite(out.pred_score).all()


def test_cam_decomposes_the_anomaly_logit_margin() -> None:
    net = CNNClassifier(widths=(4, 8), pool=2, pool_size=4, hidden=16).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        z = net.fc1(net.features(x * 2 - 1).flatten(1))
        direction = net.fc2.weight[1] - net.fc2.weight[0]
        const = ((z > 0) * direction * net.fc1.bias).sum(1) + net.fc2.bias[1] - net.fc2.bias[0]
    margin = out.logits[:, 1] - out.logits[:, 0]
    assert torch.allclose(out.cam.flatten(1).sum(1) + const, margin, atol=1e-5)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_training_uses_synthetic_anomalies_only() -> None:
    module = _tiny_module()
    images = torch.rand(4, 3, 32, 32)
    batch = {"image": images, "gt_label": torch.ones(4, dtype=torch.long)}  # labels are ignored
    loss = module.training_step(batch, 0)
    augmented, mask = module.synthesizer.last
    labels = torch.cat([torch.zeros(4), mask.flatten(1).amax(1)]).long()
    assert labels[:4].sum() == 0 and labels[4:].sum() > 0
    logits = module.net(torch.cat([images, augmented])).logits
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_training_batch_is_half_normal_half_synthetic() -> None:
    module = _tiny_module()
    images = torch.rand(6, 3, 32, 32)
    inputs, labels = module.training_batch(images, torch.Generator().manual_seed(0))
    assert inputs.shape == (12, 3, 32, 32) and labels.dtype == torch.long
    assert torch.equal(inputs[:6], images) and labels[:6].sum() == 0
    changed = (inputs[6:] != images).flatten(1).any(dim=1)
    assert torch.equal(changed.long(), labels[6:])


def test_score_is_the_logit_margin_and_does_not_saturate() -> None:
    """Confident logits (margin 40 and 60) saturate softmax to exactly 1.0 in fp32: a tie."""
    module, x = _tiny_module().eval(), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        module.net.fc2.bias.copy_(torch.tensor([0.0, 40.0]))
        first = module.predict_anomaly(x)
        module.net.fc2.bias.copy_(torch.tensor([0.0, 60.0]))
        second = module.predict_anomaly(x)
        logits = module.net(x).logits
    assert logits.softmax(dim=1)[0, 1] == 1.0  # what the old score gave
    assert second.pred_score > first.pred_score + 10  # the margin keeps the order
