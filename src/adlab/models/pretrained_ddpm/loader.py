"""Load OpenAI guided-diffusion weights into the shared :class:`adlab.diffusion.UNet`.

The released ``256x256_diffusion_uncond.pt`` is a plain ``state_dict`` (no wrapper) whose keys and
shapes equal those of ``UNet(**UNET_PRESETS["guided_diffusion_256_uncond"])``
(``tests/fixtures/guided_diffusion_256_uncond_keys.json``: 566 keys, 552,814,086 parameters), so it
loads with ``strict=True``; a mismatch is reported by key before anything is copied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from adlab.state_dicts import state_dict_mismatches

CHECKPOINT_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
)
DEFAULT_LOCATION = "${paths.root_dir}/models/256x256_diffusion_uncond.pt"


def check_state_dict(model: nn.Module, shapes: Mapping[str, Sequence[int]], source: str) -> None:
    """Raise if :func:`adlab.state_dicts.state_dict_mismatches` finds anything.

    Raises:
        ValueError: naming the missing / unexpected keys and shape mismatches, and the usual
            cause (UNet flags that differ from the checkpoint's).
    """
    problems = state_dict_mismatches(model, shapes)
    if problems:
        raise ValueError(
            f"{source} does not fit the configured UNet:\n  "
            + "\n  ".join(problems)
            + "\nThe UNet flags must equal the checkpoint's (for 256x256_diffusion_uncond.pt: "
            "UNET_PRESETS['guided_diffusion_256_uncond'], image_size 256, as in "
            "configs/model/pretrained_ddpm.yaml)."
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain ``state_dict`` file on CPU, with a download hint if it is missing.

    Raises:
        FileNotFoundError: the file does not exist (says where to download it and put it).
        ValueError: the file is not a ``{str: Tensor}`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained DDPM checkpoint not found: {path}\n"
            f"Download OpenAI's 256x256 unconditional model (2.2 GB) from\n  {CHECKPOINT_URL}\n"
            f"and put it at {DEFAULT_LOCATION} (the default of model.checkpoint), or pass "
            "model.checkpoint=PATH."
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ValueError(f"{path} is not a plain state_dict (a mapping of names to tensors)")
    return dict(state_dict)


def load_pretrained_unet(
    build_unet: Callable[[], nn.Module], checkpoint: str | Path | None, random_init: bool = False
) -> nn.Module:
    """Build the UNet and copy a checkpoint's weights into it (``strict=True``).

    The file is read first (a missing file fails at once), then the network is built on the
    ``meta`` device and materialised uninitialised (``to_empty``), so the 552 M parameters are
    never randomly initialised only to be overwritten; ``load_state_dict`` casts to float32.

    Args:
        build_unet: builds the network with the checkpoint's flags (a Hydra ``_partial_``).
        checkpoint: path of a plain ``state_dict`` file (e.g. ``256x256_diffusion_uncond.pt``),
            or None together with ``random_init=True``.
        random_init: build with random weights instead (tests and smoke runs only).

    Returns:
        The network with the loaded (or random) weights, on the CPU.

    Raises:
        ValueError: neither or both of ``checkpoint`` and ``random_init`` are given, or the
            file's keys / shapes do not match.
        FileNotFoundError: the file does not exist.
    """
    if checkpoint is None and not random_init:
        raise ValueError(
            "pretrained_ddpm needs model.checkpoint=PATH to a guided-diffusion state_dict "
            f"(download: {CHECKPOINT_URL}); model.random_init=true runs untrained weights "
            "(smoke tests only)"
        )
    if checkpoint is not None and random_init:
        raise ValueError("set either model.checkpoint or model.random_init=true, not both")
    if checkpoint is None:
        return build_unet()
    state_dict = read_state_dict(checkpoint)
    with torch.device("meta"):
        unet = build_unet()
    check_state_dict(unet, {k: v.shape for k, v in state_dict.items()}, str(checkpoint))
    if any(True for _ in unet.buffers()):  # non-persistent ones would stay uninitialised
        raise ValueError(f"{type(unet).__name__} has buffers; load_pretrained_unet expects none")
    unet.to_empty(device="cpu").load_state_dict(state_dict, strict=True)
    return unet
