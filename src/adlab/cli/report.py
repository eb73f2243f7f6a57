"""``run(cfg)``: the best-model report (``python report.py``).

Candidates are the test-run rows (the shared ``results.csv`` and every run dir's own
``results.csv``, so repeated runs of a category compete) and the rows of ``evaluate.py`` tables
(checkpoint x technique). Per (model, dataset, category) the row with the highest ``metric``
wins. Writes ``report.md`` (tables) and a self-contained ``report.html`` (tables plus the winners'
ROC/PR curves and sample pictures, embedded as base64 PNGs).
"""

from __future__ import annotations

import base64
import glob
import html
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from adlab.results import KEY, read_table
from adlab.training_times import format_duration

log = logging.getLogger(__name__)
TEST_RUN = "test run"
CATEGORY_ORDER = ("texture", "object")  # paper tables list textures first


def load_candidates(
    results_csv: Path, runs_root: Path | None, evaluations: list[str]
) -> pd.DataFrame:
    """All scored (checkpoint, technique) rows, with ``source`` and ``technique`` columns.

    Args:
        results_csv: the shared results table (must exist).
        runs_root: folder searched for run dirs' ``results.csv`` (None: the shared table only).
        evaluations: glob patterns of ``evaluation.csv`` tables (none matching is fine).
    """
    if not results_csv.is_file():
        raise FileNotFoundError(
            f"results table {results_csv} not found: train first (python train.py) or pass "
            "results_csv=PATH"
        )
    frames = [read_table(results_csv).assign(source=TEST_RUN, technique="none")]
    if runs_root is not None and runs_root.is_dir():
        for path in sorted(runs_root.rglob("results.csv")):
            if path.resolve() != results_csv.resolve():
                frames.append(read_table(path).assign(source=TEST_RUN, technique="none"))
    for pattern in evaluations:
        for path in sorted(glob.glob(pattern, recursive=True)):
            table = read_table(Path(path)).assign(source=f"evaluate: {path}")
            for column in ("roc_png", "pr_png"):
                if column in table:
                    table[column] = [_beside(path, p) for p in table[column]]
            frames.append(table)
    frames = [f for f in frames if not f.empty]
    if not frames:
        raise ValueError(f"results table {results_csv} has no rows: nothing to report")
    rows = pd.concat(frames, ignore_index=True)
    rows["ckpt_path"] = rows.get("ckpt_path", pd.Series("", index=rows.index)).fillna("")
    rows = rows.sort_values("time", kind="stable") if "time" in rows else rows
    return rows.drop_duplicates(["ckpt_path", "technique", "source", *KEY], keep="last")


def _beside(table_path: str, relative: Any) -> str:
    """A curve path stored relative to its evaluation table, made absolute."""
    return "" if pd.isna(relative) else str(Path(table_path).parent / str(relative))


def best_rows(candidates: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The row with the highest ``metric`` per (model, dataset, category); nan never wins."""
    if metric not in candidates:
        available = [c for c in candidates if c.startswith(("img_", "pixel_"))]
        raise ValueError(f"metric={metric!r} is not a results column; available: {available}")
    scored = candidates.dropna(subset=[metric]).sort_values(metric, ascending=False, kind="stable")
    best = scored.drop_duplicates(list(KEY), keep="first")
    return best.sort_values(list(KEY)).reset_index(drop=True)


def category_order(rows: pd.DataFrame) -> list[str]:
    """Categories as the paper tables list them: textures, then objects, each alphabetical."""
    types = rows.drop_duplicates("category").set_index("category").get("category_type")
    rank = {t: i for i, t in enumerate(CATEGORY_ORDER)}

    def key(category: str) -> tuple[int, str]:
        kind = types.get(category) if types is not None else None
        return (rank.get(kind, len(rank)), str(category))

    return sorted(rows.category.astype(str).unique(), key=key)


def paper_table(best: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows ``model (dataset)``, columns ``Avg`` then the categories; values in percent.

    ``Avg`` is the mean over the categories a model has (the paper's mean over categories).
    """
    frame = best.assign(
        row=best.model.astype(str) + " (" + best.dataset.astype(str) + ")",
        category=best.category.astype(str),
    )
    table = frame.pivot_table(index="row", columns="category", values=metric, aggfunc="first")
    table = table.reindex(columns=category_order(frame)) * 100
    table.insert(0, "Avg", table.mean(axis=1))
    table.index.name = f"{metric} (%)"
    return table.round(1)


def training_times(rows: pd.DataFrame) -> pd.DataFrame:
    """Training time per (model, dataset, category) of the given test-run rows, plus totals."""
    if "train_seconds" not in rows:
        return pd.DataFrame()
    keep = [c for c in (*KEY, "epochs", "train_seconds") if c in rows]
    times = rows[keep].sort_values(list(KEY)).reset_index(drop=True)
    totals = times.groupby(["model", "dataset"], as_index=False).train_seconds.sum()
    times = pd.concat([times, totals.assign(category="(total)")], ignore_index=True)
    times["training_time"] = times.train_seconds.map(format_duration)
    return times


def markdown_table(frame: pd.DataFrame, index: bool = False, float_format: str = "{:.4g}") -> str:
    """A GitHub Markdown table (nan shown as ``-``)."""
    if index:
        frame = frame.reset_index()
    cells = [[_cell(v, float_format) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _cell(value: Any, float_format: str) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else float_format.format(value)
    return str(value).replace("|", "\\|")


def _image_tag(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = f"<figcaption>{html.escape(title)}</figcaption>"
    return f'<figure><img src="data:image/png;base64,{data}">{caption}</figure>'


def sample_pngs(run_dir: str, limit: int) -> list[Path]:
    """Up to ``limit`` sample pictures of a run dir (the latest TensorBoard version first)."""
    if not run_dir or not Path(run_dir).is_dir():
        return []
    found = sorted(Path(run_dir).glob("**/sample/*.png"), key=lambda p: (-p.stat().st_mtime, p))
    return found[:limit]


def _best_view(best: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    columns = [*KEY, "technique", "source", "epochs", "epoch", "global_step", *metrics, "ckpt_path"]
    view = best.assign(source=best.source.str.split(":").str[0])
    return view[[c for c in columns if c in view]]


def _figures(best: pd.DataFrame, samples_per_run: int) -> list[str]:
    """HTML sections with the curves and samples of each winning row."""
    sections = []
    for row in best.itertuples(index=False):
        title = f"{row.model} / {row.dataset} / {row.category}: {row.technique}"
        tags = [
            _image_tag(Path(p), name)
            for name in ("roc_png", "pr_png")
            if isinstance(p := getattr(row, name, ""), str) and p and Path(p).is_file()
        ]
        run_dir = getattr(row, "run_dir", "")
        tags += [
            _image_tag(p, p.stem)
            for p in sample_pngs(str(run_dir) if isinstance(run_dir, str) else "", samples_per_run)
        ]
        if tags:
            sections.append(f"<h3>{html.escape(title)}</h3><div class='grid'>{''.join(tags)}</div>")
    return sections


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    ".grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}img{max-width:420px}"
    "figcaption{font-size:11px;color:#555}"
)


def build_sections(
    candidates: pd.DataFrame, metric: str, table_metrics: list[str]
) -> dict[str, pd.DataFrame]:
    """Report title -> table: paper-layout tables, the winners and the training times."""
    best = best_rows(candidates, metric)
    sections = {
        f"{m} (%), best checkpoint by {metric}, categories as columns": paper_table(best, m)
        for m in table_metrics
        if m in best and best[m].notna().any()
    }
    sections[f"Best checkpoint per category and model (by {metric})"] = _best_view(
        best, list(dict.fromkeys([metric, *table_metrics]))
    )
    test_runs = candidates[candidates.source == TEST_RUN].drop_duplicates(list(KEY), keep="last")
    sections["Training times (latest test run per category)"] = training_times(test_runs)
    return sections


def _is_paper(table: pd.DataFrame) -> bool:
    """Paper-layout tables are indexed by ``<metric> (%)``; the others have a plain index."""
    return str(table.index.name).endswith("(%)")


def write_markdown(path: Path, sections: dict[str, pd.DataFrame], intro: str) -> None:
    parts = ["# adlab: best-model report", "", intro, ""]
    for title, table in sections.items():
        paper = _is_paper(table)
        text = markdown_table(table, index=paper, float_format="{:.1f}" if paper else "{:.4g}")
        parts += [f"## {title}", "", text, ""]
    path.write_text("\n".join(parts))


def write_html(
    path: Path, sections: dict[str, pd.DataFrame], intro: str, figures: list[str]
) -> None:
    body = [f"<h1>adlab: best-model report</h1><p>{html.escape(intro)}</p>"]
    for title, table in sections.items():
        paper = _is_paper(table)
        fmt = "{:.1f}" if paper else "{:.4g}"
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(table.to_html(index=paper, na_rep="-", float_format=fmt.format))
    if figures:
        body.append("<h2>Curves and samples of the best checkpoints</h2>" + "".join(figures))
    page = "<!doctype html><html><head><meta charset='utf-8'><title>adlab report</title>"
    page += f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    path.write_text(page)


def run(cfg: DictConfig) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` into ``cfg.output_dir``; return their paths."""
    runs_root = Path(cfg.runs_root) if cfg.get("runs_root") else None
    evaluations = list(cfg.get("evaluations") or [])
    candidates = load_candidates(Path(cfg.results_csv), runs_root, evaluations)
    sections = build_sections(candidates, cfg.metric, list(cfg.table_metrics))
    n_eval = int((candidates.source != TEST_RUN).sum())
    intro = (
        f"Best checkpoint per (model, dataset, category) by {cfg.metric}, among "
        f"{int((candidates.source == TEST_RUN).sum())} test-run rows ({cfg.results_csv} and run "
        f"dirs) and {n_eval} evaluate.py rows (checkpoint x technique). Avg is the mean over "
        "categories. The choice is made on the test metrics themselves, so these are optimistic "
        "(best-of) numbers; compare methods at one fixed checkpoint and technique instead."
    )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    write_markdown(paths["markdown"], sections, intro)
    best = best_rows(candidates, cfg.metric)
    write_html(paths["html"], sections, intro, _figures(best, cfg.samples_per_run))
    log.info("report written to %s and %s", paths["markdown"], paths["html"])
    return paths
