"""What the side-by-side benchmarks against official code share (``anoddpm_official.py``,
``ddad_official.py``): weights copied by position, a timed round's row, alternating rounds,
the result."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

SIDES = ("official", "adlab")


def load_by_position(target: nn.Module, source: nn.Module) -> None:
    """Give ``target`` (adlab's network) ``source``'s (the official one's) weights, zipped by
    position; both state dicts must list the same shapes in the same order."""
    ours, theirs = target.state_dict(), source.state_dict()
    if [v.shape for v in ours.values()] != [v.shape for v in theirs.values()]:
        raise RuntimeError("adlab and official UNet state_dicts differ in order or shapes")
    target.load_state_dict(dict(zip(ours, theirs.values(), strict=True)))


def timed_row(seconds: float, images: int, **outputs: Tensor) -> dict[str, float]:
    """One round's row: seconds, seconds per image, mean and std of each output (``<name>_mean``,
    ``<name>_std``, in the order given) and the 1-minute load average."""
    row = {"seconds": seconds, "s_per_img": seconds / images}
    for name, value in outputs.items():
        row |= {f"{name}_mean": value.mean().item(), f"{name}_std": value.std().item()}
    return row | {"load": os.getloadavg()[0]}


def alternate(
    run: Callable[[str, int], dict[str, Any]], rounds: int, only: str | None
) -> dict[str, list[dict[str, Any]]]:
    """``run(side, round)`` for both sides (or ``only`` one), the order swapped every round;
    each row printed as it comes."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for round_ in range(rounds):
        order = SIDES if round_ % 2 == 0 else SIDES[::-1]
        for side in (s for s in order if only in (None, s)):
            row = run(side, round_)
            runs[side].append(row)
            print(side, json.dumps(row), flush=True)
    return runs


def report(
    args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], extra: dict[str, Any]
) -> None:
    """Print (and write to ``args.json_out``) the arguments, ``extra``, every run and the
    speed-up official / adlab of the best ``seconds`` of each side."""
    best = {k: min(r["seconds"] for r in v) for k, v in runs.items() if v}
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        **extra,
        "runs": runs,
        "speedup_adlab_over_official": best["official"] / best["adlab"] if len(best) == 2 else None,
    }
    print(json.dumps(result, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
