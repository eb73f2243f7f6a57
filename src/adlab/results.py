"""The results table: one row per (model, dataset, category, stage, run_name), safe under
parallel writers.

The shared table (``paths.results_csv``, default ``outputs/results.csv``) keeps the last run of a
category, per training stage (DDAD's ``diffusion`` and ``domain_adaptation`` rows coexist) and
per optional ``run_name`` (empty by default). Writes hold a file lock and replace the file
atomically, so parallel multirun jobs never lose or tear a row. No torch import here: the table
tools stay light.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

KEY = ("model", "dataset", "category")
ROW_KEY = (*KEY, "stage", "run_name")
"""What identifies a row; ``stage`` and ``run_name`` are empty strings when unused."""
LEADING = (*KEY, "category_type", "img_auc", "pixel_auc")
# names in AnomalyModule.test_results -> results columns
RENAMED = {"img_auroc": "img_auc", "pixel_auroc": "pixel_auc"}


def atomic_write_text(text: str, path: Path) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` as CSV through :func:`atomic_write_text`."""
    atomic_write_text(frame.to_csv(index=False), path)


def read_table(path: Path) -> pd.DataFrame:
    """Read a results table; a missing file is an empty table. A corrupt one is an error."""
    if not path.exists():
        return pd.DataFrame(columns=list(LEADING))
    try:
        table = pd.read_csv(path, dtype={k: str for k in ROW_KEY})
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(
            f"results table {path} is not a readable CSV ({err}); move it away"
        ) from err
    return with_row_key(table)


def with_row_key(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with string ``stage`` and ``run_name`` columns ("" where absent: older tables)."""
    frame = frame.copy()
    for col in ROW_KEY[len(KEY) :]:
        frame[col] = frame[col].fillna("").astype(str) if col in frame else ""
    return frame


def _row_keys(frame: pd.DataFrame) -> pd.Series:
    return frame[list(ROW_KEY)].astype(str).agg("|".join, axis=1)


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    rest = [c for c in frame.columns if c not in LEADING]
    return frame[[*LEADING, *rest]]


def upsert_rows(
    path: Path,
    rows: Iterable[dict[str, Any]],
    after: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Insert or replace ``rows`` (keyed by :data:`ROW_KEY`) in the table at ``path``.

    ``after(table)`` runs with the merged table while the lock is still held, so files derived
    from the table (e.g. ``training_times.md``) are never written from a stale table.
    """
    new = pd.DataFrame(list(rows))
    missing = [k for k in KEY if k not in new.columns]
    if missing:
        raise ValueError(f"results rows need the key columns {KEY}; missing {missing}")
    for col in LEADING:
        new[col] = new.get(col, math.nan)
    new = with_row_key(new)
    with FileLock(str(path) + ".lock", timeout=120):
        table = read_table(path)
        if not table.empty:
            table = table[~_row_keys(table).isin(set(_row_keys(new)))]
        frames = [f for f in (table, new) if not f.empty]
        merged = ordered(pd.concat(frames, ignore_index=True))
        atomic_write_csv(merged, path)
        if after is not None:
            after(merged)
    return merged


def has_row(
    path: Path, model: str, dataset: str, category: str, stage: str = "", run_name: str = ""
) -> bool:
    """Whether the table at ``path`` already holds the row key (see :data:`ROW_KEY`)."""
    with FileLock(str(path) + ".lock", timeout=120):
        table = read_table(path)
    if table.empty:
        return False
    wanted = "|".join(map(str, (model, dataset, category, stage or "", run_name or "")))
    return bool((_row_keys(table) == wanted).any())
