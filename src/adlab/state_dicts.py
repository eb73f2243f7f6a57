"""The one state-dict layout check: which keys are missing, unexpected or of another shape.

Used wherever weights from a file meet a network built from a config: the pretrained DDPM's UNet
(:mod:`adlab.models.pretrained_ddpm.loader`) and timm backbones (:mod:`adlab.backbones`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

SHOWN = 5
"""Keys named per kind of mismatch; the rest are counted."""


def _first(keys: Sequence[str]) -> str:
    more = f" ... (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def state_dict_mismatches(
    expected: nn.Module | Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]]
) -> list[str]:
    """Compare the layout a network expects with ``{key: shape}`` of a file's state dict.

    Reads only keys and shapes, so a module may live on the ``meta`` device.

    Args:
        expected: the network to load into, or its ``{key: shape}``.
        found: key -> shape of every file entry (e.g. ``{k: v.shape for k, v in sd.items()}``).

    Returns:
        One line per kind of problem (``N missing keys: ...``, ``N unexpected keys: ...``,
        ``N shape mismatches: key [file shape] (model [shape])``), each naming the first
        :data:`SHOWN` keys; empty if the layouts are identical.
    """
    if isinstance(expected, nn.Module):
        expected = {k: v.shape for k, v in expected.state_dict().items()}
    want = {k: tuple(v) for k, v in expected.items()}
    have = {k: tuple(v) for k, v in found.items()}
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    wrong = [
        f"{k} {list(have[k])} (model {list(want[k])})"
        for k in want
        if k in have and have[k] != want[k]
    ]
    kinds = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": wrong}
    return [f"{len(keys)} {what}: {_first(keys)}" for what, keys in kinds.items() if keys]
