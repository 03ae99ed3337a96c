"""notebooks/ablations.ipynb runs against MLflow runs made by the real sweep step."""

from __future__ import annotations

from html import escape as html_escape

import nbformat
import pytest
from nbclient import NotebookClient

from synrep.config import load_config, save_resolved
from synrep.experiments import ablation_tables, sweep, sweep_run
from tests.conftest import REPO


@pytest.mark.slow
def test_notebook_draws_the_report_from_mlflow(learning_world, tmp_path, monkeypatch):
    cfg = load_config(learning_world("sweep.grids=[{method:[stablerep],data:[w2,w4]}]", "sweep.seeds=[0]",
                                     "train.epochs=1"))
    runs = sweep.expand(cfg)
    for spec in runs:
        sweep_run.run_one(cfg, spec.run_id)
    config_file = save_resolved(cfg, tmp_path)

    nb = nbformat.read(REPO / "notebooks" / "ablations.ipynb", as_version=4)
    monkeypatch.setenv("SYNREP_CONFIG", str(config_file))
    monkeypatch.setenv("SYNREP_ROOT", str(REPO))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{len(runs)} runs, {len(runs)} groups" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if o.output_type in ("display_data", "execute_result"))
    assert all(spec.run_id in html for spec in runs)
    # The notebook reads MLflow; the same tables built from the runs' metrics.json files, as the
    # Snakemake report does, must show the same cells.
    files = ablation_tables.load_runs([sweep.run_output_dir(cfg, spec) / "metrics.json" for spec in runs])
    primary = f"probe_{cfg.eval.targets[0]}"
    title, table = ablation_tables.table_w(files, primary, cfg)
    assert title in text
    cells = [cell for row in table.iter_rows() for cell in row[1:]]
    assert len(cells) == len(runs) and all(html_escape(cell) in html for cell in cells), (cells, html)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # two scales (w2, w4) draw the plot against w; one (l, m) is a table cell, not a heatmap
    assert len(images) == 1 and "lm_heatmap: waits for the l x m axes" in text
