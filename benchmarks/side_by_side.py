"""What the side-by-side benchmarks against official code share (``anoddpm_official.py``,
``ddad_official.py``): weights copied by position, alternating timed rounds, the result."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from torch import nn

SIDES = ("official", "adlab")


def load_by_position(target: nn.Module, source: nn.Module) -> None:
    """Give ``target`` (adlab's network) ``source``'s (the official one's) weights, zipped by
    position; both state dicts must list the same shapes in the same order."""
    ours, theirs = target.state_dict(), source.state_dict()
    if [v.shape for v in ours.values()] != [v.shape for v in theirs.values()]:
        raise RuntimeError("adlab and official UNet state_dicts differ in order or shapes")
    target.load_state_dict(dict(zip(ours, theirs.values(), strict=True)))


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
