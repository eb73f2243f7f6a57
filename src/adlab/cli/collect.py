"""Rebuild the shared results table from the ``results.csv`` rows of the run directories.

``python -m adlab.cli.collect outputs [--out outputs/results.csv]``: every run dir below ``outputs``
contributes its row; per (model, dataset, category, stage, run_name) the most recent run (``time``
column) wins, as in the live table. ``training_times.md`` is rewritten next to the output table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from adlab.results import ROW_KEY, atomic_write_csv, ordered, with_row_key
from adlab.training_times import training_times_path, write_training_times


def collect(root: Path, out: Path) -> pd.DataFrame:
    """Merge ``<root>/**/results.csv`` (except ``out`` itself) into ``out``; return the table."""
    files = sorted(p for p in root.rglob("results.csv") if p.resolve() != out.resolve())
    if not files:
        raise FileNotFoundError(f"no run results.csv found below {root}")
    frames = [with_row_key(pd.read_csv(p, dtype={k: str for k in ROW_KEY})) for p in files]
    rows = pd.concat(frames, ignore_index=True)
    latest = rows.sort_values("time").drop_duplicates(list(ROW_KEY), keep="last")
    table = ordered(latest.sort_values(list(ROW_KEY)).reset_index(drop=True))
    atomic_write_csv(table, out)
    write_training_times(table, training_times_path(out))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="outputs directory holding the run dirs")
    parser.add_argument("--out", type=Path, default=None, help="default: <root>/results.csv")
    args = parser.parse_args(argv)
    out = args.out or args.root / "results.csv"
    table = collect(args.root, out)
    print(f"{len(table)} rows from the run dirs below {args.root} written to {out}")


if __name__ == "__main__":
    main()
