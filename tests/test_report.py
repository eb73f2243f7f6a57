"""``report.py``: best row per category by a metric, paper layout, Markdown and embedded HTML."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from adlab.cli import report


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _row(category: str, kind: str, img_auc: float, aupro: float, run_dir: Path, **extra) -> dict:
    return {
        "model": "autoencoder",
        "dataset": "synthetic",
        "category": category,
        "category_type": kind,
        "img_auc": img_auc,
        "pixel_auc": 0.8,
        "pixel_aupro": aupro,
        "epochs": 3,
        "train_seconds": 75.5,
        "ckpt_path": str(run_dir / "checkpoints" / "model.ckpt"),
        "run_dir": str(run_dir),
        "time": "2026-01-02T00:00:00+00:00",
        **extra,
    }


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """Shared table (weave 0.70, disc 0.60), an older weave run dir scoring 0.95, and an
    evaluate table where foreground masking lifts disc to 0.90."""
    weave_old, weave_new, disc = (tmp_path / "runs" / n for n in ("weave_old", "weave_new", "disc"))
    _png(disc / "lightning_logs" / "version_0" / "sample" / "000_hole.png", (255, 0, 0))
    shared = [
        _row("weave", "texture", 0.70, 0.50, weave_new),
        _row("disc", "object", 0.60, 0.40, disc),
    ]
    pd.DataFrame(shared).to_csv(tmp_path / "results.csv", index=False)
    weave_old.mkdir(parents=True)
    old = _row("weave", "texture", 0.95, 0.30, weave_old, time="2026-01-01T00:00:00+00:00")
    pd.DataFrame([old]).to_csv(weave_old / "results.csv", index=False)
    evaluation = tmp_path / "evaluate" / "t1"
    _png(evaluation / "curves" / "d" / "foreground_roc.png", (0, 255, 0))
    _png(evaluation / "curves" / "d" / "foreground_pr.png", (0, 0, 255))
    rows = [
        _row("disc", "object", 0.60, 0.40, disc, technique="none"),
        _row(
            "disc",
            "object",
            0.90,
            0.20,
            disc,
            technique="foreground",
            roc_png="curves/d/foreground_roc.png",
            pr_png="curves/d/foreground_pr.png",
        ),
    ]
    pd.DataFrame(rows).to_csv(evaluation / "evaluation.csv", index=False)
    return tmp_path


def _cfg(root: Path, metric: str = "img_auc") -> OmegaConf:
    return OmegaConf.create(
        {
            "results_csv": str(root / "results.csv"),
            "runs_root": str(root / "runs"),
            "evaluations": [str(root / "evaluate" / "*" / "evaluation.csv")],
            "metric": metric,
            "table_metrics": ["img_auc", "pixel_aupro"],
            "samples_per_run": 4,
            "output_dir": str(root / "report"),
        }
    )


def test_best_rows_pick_the_highest_metric(outputs: Path) -> None:
    candidates = report.load_candidates(
        outputs / "results.csv", outputs / "runs", [str(outputs / "evaluate/*/evaluation.csv")]
    )
    best = report.best_rows(candidates, "img_auc").set_index("category")
    assert best.loc["weave", "img_auc"] == 0.95 and best.loc["weave", "run_dir"].endswith("old")
    assert best.loc["disc", "technique"] == "foreground"
    by_aupro = report.best_rows(candidates, "pixel_aupro").set_index("category")
    assert by_aupro.loc["weave", "pixel_aupro"] == 0.50
    assert by_aupro.loc["disc", "technique"] == "none"
    with pytest.raises(ValueError, match="metric='nope'.*img_auc"):
        report.best_rows(candidates, "nope")


def test_paper_layout_has_avg_first_then_textures(outputs: Path) -> None:
    candidates = report.load_candidates(outputs / "results.csv", outputs / "runs", [])
    table = report.paper_table(report.best_rows(candidates, "img_auc"), "img_auc")
    assert list(table.columns) == ["Avg", "weave", "disc"]
    assert table.loc["autoencoder (synthetic)"].tolist() == [77.5, 95.0, 60.0]


def test_report_writes_markdown_and_self_contained_html(outputs: Path) -> None:
    paths = report.run(_cfg(outputs))
    markdown = paths["markdown"].read_text()
    assert "| img_auc (%) | Avg | weave | disc |" in markdown
    assert "| autoencoder (synthetic) | 92.5 | 95.0 | 90.0 |" in markdown
    assert "| 0:01:16 |" in markdown and "| 0:02:31 |" in markdown  # 75.5 s each, and total
    page = paths["html"].read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 3  # ROC + PR of the disc winner and its sample picture
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<th>Avg</th>" in page and page.index("<th>Avg</th>") < page.index("<th>weave</th>")


def test_missing_or_empty_results_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="results.csv"):
        report.run(_cfg(tmp_path))
    (tmp_path / "results.csv").write_text("model,dataset,category\n")
    with pytest.raises(ValueError, match="results.csv has no rows"):
        report.run(_cfg(tmp_path))
