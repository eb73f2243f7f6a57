"""``training_times.md``: the readable per-category training times next to the results table.

For each (model, dataset) one table: category, epochs, fit time (``train_seconds``: start to end of
``trainer.fit``, validation epochs included, data preparation excluded), test time per image, when
the row was written, then the total over the categories. It is rewritten from the whole results
table under the table's lock after every results row
(:class:`adlab.callbacks.results_csv.ResultsCSV`), and ``python -m adlab.cli.collect`` rebuilds
it with the table. No torch import here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from adlab.results import atomic_write_text

FILENAME = "training_times.md"


def training_times_path(results_csv: Path) -> Path:
    """Where the summary of the results table at ``results_csv`` lives (same folder)."""
    return Path(results_csv).with_name(FILENAME)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``-`` for nan or a missing value)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _number(value: object, fmt: str) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    return format(number, fmt) if math.isfinite(number) else "-"


def training_times_markdown(table: pd.DataFrame) -> str:
    """The Markdown summary of a results table (columns ``model, dataset, category`` at least)."""
    lines = [
        "# Training times",
        "",
        "One row per (model, dataset, category) of the results table, the last run winning. Fit:",
        "start to end of `trainer.fit` (validation included). Test: wall time per test image.",
    ]
    frame = table.copy()
    for col in ("epochs", "train_seconds", "test_seconds_per_image", "time"):
        if col not in frame.columns:
            frame[col] = math.nan
    for (model, dataset), group in frame.groupby(["model", "dataset"], sort=True):
        group = group.sort_values("category")
        lines += [
            "",
            f"## {model} / {dataset}",
            "",
            "| category | epochs | fit time | fit seconds | test ms/image | written (UTC) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for row in group.itertuples(index=False):
            lines.append(
                f"| {row.category} | {_number(row.epochs, '.0f')} "
                f"| {format_duration(float(row.train_seconds))} "
                f"| {_number(row.train_seconds, '.1f')} "
                f"| {_number(float(row.test_seconds_per_image) * 1000, '.2f')} "
                f"| {row.time if isinstance(row.time, str) else '-'} |"
            )
        total = float(pd.to_numeric(group["train_seconds"], errors="coerce").sum(min_count=1))
        lines.append(
            f"| **total, {len(group)} categor{'y' if len(group) == 1 else 'ies'}** "
            f"| | **{format_duration(total)}** "
            f"| **{_number(total, '.1f')}** | | |"
        )
    return "\n".join(lines) + "\n"


def write_training_times(table: pd.DataFrame, path: Path) -> None:
    """Write :func:`training_times_markdown` of ``table`` to ``path`` atomically."""
    atomic_write_text(training_times_markdown(table), path)
