"""The frame of the *_quality steps (evaluation/study.py): each finding written by its kind, the
resolved config beside them, and one MLflow run of the step with the metrics at their steps and the
files under their folders."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
from PIL import Image


def test_report_writes_each_kind_and_logs_one_run(make_cfg, tmp_path):
    import mlflow

    from synrep.evaluation import study
    from synrep.tracking import tracking_uri

    cfg = make_cfg()
    out = tmp_path / "study"
    grid = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    files = {"csv": ("rows.csv", pl.DataFrame({"a": [1, 2]})), "table": ("rows.md", "| a |\n"),
             "json": ("rows.json", {"rows": [1, 2]}), "plot": ("plot.txt", lambda path: path.write_text("drawn")),
             "grid_x": ("samples_x.png", grid)}
    metrics = [({"acc": 0.5}, 0), ({"acc": 0.75}, 2), ({"real.acc": 1.0}, None)]
    outputs = study.report(cfg, out, files, "toy_quality", ("sample_quality",), metrics,
                           artifact_folders={"grid_x": "grids"})

    assert list(outputs) == list(files) and all(outputs[k] == out / name for k, (name, _) in files.items())
    assert pl.read_csv(outputs["csv"])["a"].to_list() == [1, 2]
    assert outputs["table"].read_text() == "| a |\n" and json.loads(outputs["json"].read_text()) == {"rows": [1, 2]}
    assert outputs["plot"].read_text() == "drawn"
    with Image.open(outputs["grid_x"]) as image:
        assert image.format == "PNG" and np.array_equal(np.asarray(image), grid)
    assert (out / "config.yaml").exists()

    client = mlflow.MlflowClient(tracking_uri(cfg))
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("synrep.step") == "toy_quality"]
    assert len(runs) == 1
    run = runs[0].info.run_id
    assert runs[0].data.params["sample_quality.seed"] == str(cfg.sample_quality.seed)
    assert [(m.value, m.step) for m in client.get_metric_history(run, "acc")] == [(0.5, 0), (0.75, 2)]
    assert [(m.value, m.step) for m in client.get_metric_history(run, "real.acc")] == [(1.0, 0)]
    top = {a.path for a in client.list_artifacts(run)}
    assert top == {"rows.csv", "rows.md", "rows.json", "plot.txt", "grids"}
    assert [a.path for a in client.list_artifacts(run, "grids")] == ["grids/samples_x.png"]


def test_a_study_summary_is_mean_and_t_interval_per_group_with_null_keys_kept():
    """The summary table of dreambooth_quality and inpaint_quality: per (model, prior), a null prior
    a group of its own, each metric's mean ± Student-t 95 % half-width over the seeds (scipy's t)."""
    from scipy import stats

    from synrep.tables import mean_ci_table

    rows = pl.DataFrame({"model": ["base", "base", "base", "prior", "prior", "prior"],
                         "prior": [None, None, None, True, True, True], "seed": [0, 1, 2, 0, 1, 2],
                         "fidelity": [0.30, 0.40, 0.50, 0.61, 0.62, None]})
    table = mean_ci_table(rows, ["model", "prior"])
    assert table.columns == ["model", "prior", "fidelity"]
    values = np.array([0.30, 0.40, 0.50])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)
    # cells as tables.mean_ci writes them: rounded to 3 decimals, trailing zeros dropped
    assert table.row(0) == ("base", None, f"{values.mean():.3f} ± {half:.3f}")
    pair = np.array([0.61, 0.62])
    half = stats.t.ppf(0.975, 1) * pair.std(ddof=1) / np.sqrt(2)
    assert table.row(1) == ("prior", True, f"{pair.mean():.3f} ± {half:.3f}")
