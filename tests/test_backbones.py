"""Backbones: offline ImageNet weights classify a known picture; explicit weight sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from matplotlib import cbook
from PIL import Image
from safetensors.torch import save_file

from adlab.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureExtractor,
    create_model,
    efficientnet_lite0_offline_state_dict,
)

MILITARY_UNIFORM = 652  # ImageNet-1k class index
LITE0 = "efficientnet_lite0"
OFFLINE = "efficientnet_lite0_offline"


@pytest.fixture(scope="module")
def lite0_state_dict() -> dict[str, torch.Tensor]:
    return efficientnet_lite0_offline_state_dict()


def _grace_hopper() -> torch.Tensor:
    """matplotlib's sample photo of Grace Hopper in uniform, ``(1, 3, 224, 224)`` in [0, 1]."""
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


def test_offline_lite0_weights_classify_a_known_picture() -> None:
    model = create_model(LITE0, OFFLINE).eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        logits = model((_grace_hopper() - mean) / std)
    assert MILITARY_UNIFORM in logits.topk(5).indices[0].tolist()


def test_offline_lite0_mapping_keeps_order_and_shapes(
    lite0_state_dict: dict[str, torch.Tensor],
) -> None:
    reference = timm.create_model(LITE0, pretrained=False).state_dict()
    assert list(lite0_state_dict) == list(reference)
    assert all(lite0_state_dict[k].shape == v.shape for k, v in reference.items())


def test_features_only_returns_the_requested_maps(
    lite0_state_dict: dict[str, torch.Tensor],
) -> None:
    extractor = FeatureExtractor(LITE0, out_indices=(1, 2, 3), weights=OFFLINE)
    feats = extractor(torch.rand(2, 3, 64, 64))
    assert extractor.strides == [4, 8, 16] and extractor.channels == [24, 40, 112]
    assert [tuple(f.shape) for f in feats] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    torch.testing.assert_close(
        extractor.model.conv_stem.weight, lite0_state_dict["conv_stem.weight"]
    )


def test_frozen_extractor_stays_in_eval_mode_until_unfrozen() -> None:
    extractor = FeatureExtractor("resnet18", weights=None, allow_random_init=True).train()
    assert not extractor.model.training
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.set_trainable(True).train()
    assert extractor.model.training and all(p.requires_grad for p in extractor.parameters())


def test_random_init_needs_the_explicit_flag() -> None:
    with pytest.raises(ValueError, match="allow_random_init"):
        FeatureExtractor("resnet18", weights=None)


def test_offline_weights_refuse_another_architecture() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        create_model("resnet18", OFFLINE)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_file_without_classifier_loads(
    tmp_path: Path, suffix: str, lite0_state_dict: dict[str, torch.Tensor]
) -> None:
    weights = {k: v for k, v in lite0_state_dict.items() if not k.startswith("classifier.")}
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".pth":
        torch.save(weights, path)
    else:
        save_file(weights, path)
    extractor = FeatureExtractor(LITE0, weights=str(path))
    for key, value in extractor.model.state_dict().items():
        torch.testing.assert_close(value, lite0_state_dict[key])


def test_bad_local_file_names_the_bad_keys(
    tmp_path: Path, lite0_state_dict: dict[str, torch.Tensor]
) -> None:
    weights = dict(lite0_state_dict)
    weights.pop("conv_stem.weight")
    weights["stray.weight"] = torch.zeros(1)
    weights["bn1.weight"] = torch.zeros(3)
    torch.save(weights, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        FeatureExtractor(LITE0, weights=str(tmp_path / "bad.pth"))
    for name in ("missing keys: conv_stem.weight", "unexpected keys: stray.weight", "bn1.weight"):
        assert name in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="allow_random_init"):
        FeatureExtractor(LITE0, weights=str(tmp_path / "nowhere.pth"))


def test_unreachable_hub_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline)  # backbones imports timm on first use
    with pytest.raises(RuntimeError) as err:
        FeatureExtractor("wide_resnet101_2", weights="timm")
    for hint in ("local state-dict file", OFFLINE, "allow_random_init=true"):
        assert hint in str(err.value)
