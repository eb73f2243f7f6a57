"""The shared results table: upsert semantics, column order, atomicity under concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pandas as pd
import pytest

from adlab.results import LEADING, has_row, upsert_rows


def _row(model: str, category: str, auc: float, **extra: float) -> dict:
    return {
        "model": model,
        "dataset": "synthetic",
        "category": category,
        "category_type": "texture",
        "img_auc": auc,
        "pixel_auc": auc / 2,
        **extra,
    }


def test_upsert_replaces_same_key_and_keeps_others(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    upsert_rows(path, [_row("ae", "weave", 0.5), _row("ae", "disc", 0.6)])
    upsert_rows(path, [_row("ae", "weave", 0.9, pixel_aupro=0.4)])
    table = pd.read_csv(path)
    assert len(table) == 2
    assert table.set_index("category").loc["weave", "img_auc"] == 0.9
    assert table.set_index("category").loc["disc", "img_auc"] == 0.6
    assert list(table.columns[: len(LEADING)]) == list(LEADING)
    assert "pixel_aupro" in table.columns


def test_has_row(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    assert not has_row(path, "ae", "synthetic", "weave")
    upsert_rows(path, [_row("ae", "weave", 0.5)])
    assert has_row(path, "ae", "synthetic", "weave")
    assert not has_row(path, "ae", "synthetic", "disc")
    assert not has_row(path, "draem", "synthetic", "weave")


def test_missing_key_column_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="category"):
        upsert_rows(tmp_path / "r.csv", [{"model": "ae", "dataset": "x"}])


def test_corrupt_table_is_reported_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_bytes(b'model,dataset\n"unterminated,\xff\xfe\n')
    with pytest.raises(ValueError, match=str(path)):
        upsert_rows(path, [_row("ae", "weave", 0.5)])
    assert path.read_bytes().startswith(b"model,dataset")


def _writer(path: str, worker: int, n_rows: int) -> None:
    for i in range(n_rows):
        upsert_rows(Path(path), [_row(f"m{worker}", f"c{i}", i / n_rows)])


def test_concurrent_writers_lose_no_row(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    workers, n_rows = 4, 12
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, n_rows)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    table = pd.read_csv(path)
    assert len(table) == workers * n_rows
    assert set(zip(table.model, table.category, strict=True)) == {
        (f"m{w}", f"c{i}") for w in range(workers) for i in range(n_rows)
    }
    assert not list(tmp_path.glob(".results.csv.*.tmp"))


def test_collect_rebuilds_the_table_with_the_latest_run_per_key(tmp_path: Path) -> None:
    from adlab.cli.collect import collect
    from adlab.results import atomic_write_csv

    runs = [("weave", "2026-01-01T00:00:00", 0.5), ("weave", "2026-01-02T00:00:00", 0.7)]
    runs.append(("disc", "2026-01-01T00:00:00", 0.9))
    for i, (category, time, auc) in enumerate(runs):
        row = {**_row("ae", category, auc), "time": time}
        atomic_write_csv(pd.DataFrame([row]), tmp_path / f"run{i}" / "results.csv")
    table = collect(tmp_path, tmp_path / "results.csv")
    assert dict(zip(table.category, table.img_auc, strict=True)) == {"weave": 0.7, "disc": 0.9}
    assert list(table.columns[: len(LEADING)]) == list(LEADING)
    assert len(collect(tmp_path, tmp_path / "results.csv")) == 2  # its own output is skipped
