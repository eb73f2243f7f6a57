"""``notebooks/main_experiment.ipynb`` runs headless at smoke sizes (nbclient), so it cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "main_experiment.ipynb"


def _inject(nb: nbformat.NotebookNode, values: dict[str, object]) -> None:
    """Append assignments to the cell tagged ``parameters`` (as papermill does)."""
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + "\n".join(f"{name} = {value!r}" for name, value in values.items())


def test_notebook_runs_a_small_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    out, data = tmp_path / "outputs", tmp_path / "data"
    _inject(nb, {"OUTPUT_DIR": str(out), "DATA_DIR": str(data), "SMOKE": True, "MAX_EPOCHS": 2})
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # kernel threads
    client = NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    table = pd.read_csv(out / "results.csv")
    assert sorted(table.category) == ["disc", "weave"]
    for row in table.itertuples():  # the shared table holds each run's own row
        own = pd.read_csv(Path(row.run_dir) / "results.csv").iloc[0]
        assert (own.category, own.img_auc) == (row.category, row.img_auc)
    assert (data / "synthetic_smoke" / "weave").is_dir()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 1 + 2 * 2  # the metrics plot and 2 samples per category
    markdown = [o for o in outputs if "text/markdown" in o.get("data", {})]
    assert markdown and "| Avg | weave | disc |" in markdown[0]["data"]["text/markdown"]
    # the report's paper table: the runs' image AUROC in percent, Avg their mean
    auc = table.set_index("category").img_auc * 100
    expected = [(auc["weave"] + auc["disc"]) / 2, auc["weave"], auc["disc"]]
    lines = markdown[0]["data"]["text/markdown"].splitlines()
    header = next(i for i, line in enumerate(lines) if "| Avg | weave | disc |" in line)
    values = [float(v) for v in lines[header + 2].strip(" |").split("|")[1:]]
    assert values == pytest.approx(expected, abs=0.051)
    assert (out / "report" / "report.html").is_file()
