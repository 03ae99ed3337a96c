"""MLflow as a user opens it: the experiment's top level holds the sweep's runs (axes as params,
probe metrics), its steps folded under one run; a run's time is its job's; the runs page, in a real
headless Chromium on the reduced pipeline's store, shows the sweep's runs with their columns. And
progress of long loops: a bar on a terminal, a line per interval in a log."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from synrep.experiments import report, sweep, sweep_run
from synrep.tracking import AXES, KIND, KIND_TAG, SWEEP_VIEW, VIEW_TAG, mlflow_run, progress, runs_page, tracking_uri
from tests.conftest import REPO

PROBES = {"shape": 0.61, "size": 0.42}


def fake_training(monkeypatch):
    """Training and evaluation replaced by numbers the test knows (the MLflow record is under test)."""
    from synrep.evaluation import evaluate
    from synrep.learning import trainer

    monkeypatch.setattr(trainer, "train", lambda rcfg, **kwargs: {
        "seconds": 1.0, "length": {"steps": 3}, "final_loss": 2.0})
    monkeypatch.setattr(evaluate, "evaluate_run", lambda rcfg: {
        "linear_probe": {t: {"test": v, "val": v - 0.1} for t, v in PROBES.items()},
        "few_shot": {}, "zero_shot": {}})


def test_steps_fold_under_one_run_and_the_sweeps_runs_stay_on_top(make_cfg, monkeypatch):
    import mlflow

    fake_training(monkeypatch)
    cfg = make_cfg("name=ui", "sweep.grids=[{method:[stablerep],data:[w2]},{method:[simclr],data:[real]}]",
                   "sweep.seeds=[0,1]")
    with mlflow_run(cfg, "generate", run_name="generate w2"):
        pass
    with mlflow_run(cfg, "captions"):
        pass
    specs = sweep.expand(cfg)
    for spec in specs:
        sweep_run.run_one(cfg, spec.run_id)

    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name("ui")
    assert experiment.tags[KIND_TAG] == KIND
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_step: dict[str, list] = {}
    for run in runs:
        by_step.setdefault(run.data.tags["synrep.step"], []).append(run)
    (steps,), (parent,) = by_step["steps"], by_step["sweep"]
    # the steps' runs fold under the one steps run, which ended with the last of them
    for run in by_step["generate"] + by_step["captions"]:
        assert run.data.tags["mlflow.parentRunId"] == steps.info.run_id
    assert steps.info.status == "FINISHED"
    assert steps.info.end_time >= max(r.info.end_time for r in by_step["generate"] + by_step["captions"])
    # the sweep's runs are top-level rows, tied to the sweep's run by a tag of their own
    sweep_runs = {r.data.tags["synrep.run"]: r for r in by_step["sweep_run"]}
    assert sorted(sweep_runs) == sorted(s.run_id for s in specs)
    for spec in specs:
        run = sweep_runs[spec.run_id]
        assert "mlflow.parentRunId" not in run.data.tags
        assert run.data.tags["synrep.sweep_parent"] == parent.info.run_id
        params = run.data.params
        assert (params["method"], params["source"], params["l"], params["m"], params["seed"]) == (
            spec.method, spec.data, str(spec.l), str(spec.m), str(spec.seed))
        assert {k: run.data.metrics[f"probe_{k}"] for k in PROBES} == PROBES
    # the report reads them back as it did when they were nested
    assert sorted(report.runs_from_mlflow(cfg)["run"].to_list()) == sorted(s.run_id for s in specs)
    # the sweep's view: only its runs, their axes and each probe target as columns
    view = json.loads(experiment.tags[VIEW_TAG + SWEEP_VIEW])
    assert view["selectedColumns"] == [f"params.`{a}`" for a in AXES] + [f"metrics.`probe_{t}`"
                                                                         for t in cfg.eval.targets]
    found = client.search_runs([experiment.experiment_id], view["searchFilter"], max_results=1000)
    assert sorted(r.info.run_id for r in found) == sorted(r.info.run_id for r in sweep_runs.values())


JOB = textwrap.dedent(
    """
    import sys, time
    from synrep.config import load_config
    from synrep.tracking import mlflow_run

    time.sleep(float(sys.argv[2]))  # the job's work before it logs
    cfg = load_config(config_file=sys.argv[1])
    with mlflow_run(cfg, "first"):
        pass
    time.sleep(float(sys.argv[2]))
    with mlflow_run(cfg, "second"):
        pass
    """
)


def test_a_steps_run_spans_its_job_not_its_logging(make_cfg, tmp_path):
    import mlflow

    from synrep.config import save_resolved

    cfg = make_cfg("name=spans")
    config_file = save_resolved(cfg, tmp_path)
    work = 3.0
    launched = time.time()
    subprocess.run([sys.executable, "-c", JOB, str(config_file), str(work)], check=True, cwd=REPO, timeout=300)
    client = mlflow.MlflowClient(f"sqlite:///{Path(cfg.paths.results_dir).resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("spans")
    first, second = (client.search_runs([experiment.experiment_id], f"tags.`synrep.step` = '{step}'")[0].info
                     for step in ("first", "second"))
    # the first run starts when the process did: before its work, not after it
    assert launched - 1.0 <= first.start_time / 1000 < launched + work
    assert first.end_time - first.start_time >= work * 1000
    # a second run of the job starts where the first ended, and holds the work in between
    assert first.end_time <= second.start_time < first.end_time + work * 1000
    assert second.end_time - second.start_time >= work * 1000


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log():
    def loop(stream, **kwargs):
        for _ in progress(range(30), desc="work", unit="it", stream=stream, **kwargs):
            time.sleep(0.01)
        return stream.getvalue()

    log = loop(io.StringIO(), log_interval=0.05)
    lines = log.splitlines()
    assert "\r" not in log and log.endswith("\n")
    assert lines[0].startswith("work:   0%") and "30/30" in lines[-1]
    # a line per interval: more than the first and the last over 0.3 s of 0.05 s intervals
    assert len(lines) > 2
    # a log interval longer than the loop: the first and the last line only
    assert len(loop(io.StringIO(), log_interval=60).splitlines()) == 2
    # a transient bar: nothing in a log when shorter than an interval, else its lines and its last
    assert loop(io.StringIO(), log_interval=60, leave=False) == ""
    transient = loop(io.StringIO(), log_interval=0.05, leave=False).splitlines()
    assert len(transient) > 1 and "30/30" in transient[-1]
    # a terminal redraws one line
    assert "\r" in loop(_Terminal(), interval=0.05)
    assert loop(io.StringIO(), disable=True) == ""


# ------------------------------------------------------------------------------------------------
# The runs page in a real browser, on the reduced pipeline's store
# ------------------------------------------------------------------------------------------------

RUNS = [f"{run}-s{seed}" for seed in (0, 1) for run in
        ("stablerep-w2-l4-m4", "stablerep-w4-l4-m4", "stablerep-mix-l4-m4", "simclr-real-l1")]
COLUMNS = ("method", "source", "w", "l", "m", "seed", "probe_shape", "probe_size")


def chromium() -> str | None:
    for name in (os.environ.get("SYNREP_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def table_cells(page) -> dict[str, dict[str, str]]:
    """The runs table as shown: run name -> {column key: text}. The grid draws a row in parts (the
    pinned name, the scrolled columns), joined here by their row index; cells name their column."""
    parts: dict[str, dict[str, str]] = {}
    rows = page.locator(".ag-row")
    for i in range(rows.count()):
        row = rows.nth(i)
        cells = row.locator("[role=gridcell]")
        part = parts.setdefault(row.get_attribute("row-index"), {})
        for j in range(cells.count()):
            part[cells.nth(j).get_attribute("col-id")] = cells.nth(j).inner_text().strip()
    return {part["attributes.`Run Name`"].splitlines()[-1]: part for part in parts.values()
            if "attributes.`Run Name`" in part}


@pytest.mark.slow
def test_the_runs_page_shows_the_sweeps_runs_with_their_axes_and_probes(reduced_run, reduced_mlflow_server,
                                                                        tmp_path):
    browser_path = chromium()
    required = bool(os.environ.get("SYNREP_REQUIRE_BROWSER"))
    if browser_path is None:
        if required:
            pytest.fail("SYNREP_REQUIRE_BROWSER is set but no Chromium was found (scripts/chromium_install.sh, "
                        "or set SYNREP_CHROMIUM)")
        pytest.skip("no Chromium on this machine (scripts/chromium_install.sh); SYNREP_REQUIRE_BROWSER unset")
    if required:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

    base, experiment_id = reduced_mlflow_server
    screenshot = tmp_path / "mlflow_runs.png"
    method_cells = ".ag-row [col-id='params.`method`']"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            # wide enough that the grid draws every column (it draws only those in view)
            page = browser.new_page(viewport={"width": 2600, "height": 1100})
            page.goto(runs_page(experiment_id, base))
            page.locator(method_cells).nth(len(RUNS) - 1).wait_for(timeout=90_000)
            page.wait_for_timeout(1000)  # the last rows' values
            page.screenshot(path=str(screenshot), full_page=True)
            headers = {h.strip() for h in page.locator("[role=columnheader]").all_inner_texts()}
            shown = table_cells(page)
            text, landed = page.inner_text("body"), page.url
        finally:
            browser.close()
    if os.environ.get("SYNREP_TEST_ARTIFACTS"):
        keep = Path(os.environ["SYNREP_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, keep / screenshot.name)

    # the model-training runs page, not the GenAI overview (its usage charts say "No data available")
    assert f"/experiments/{experiment_id}/runs?" in landed and "workflowType=machine_learning" in landed, landed
    assert "No data available" not in text
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.width >= 2600
    assert set(COLUMNS) <= headers, headers
    # the sweep's runs and nothing else: not the steps, not the sweep's own run
    assert sorted(shown) == sorted(RUNS), sorted(shown)
    # each row shows what its job wrote to its metrics.json
    for run, cells in shown.items():
        record = json.loads((reduced_run / "results" / "toytest" / "runs" / run / "metrics.json").read_text())
        axes = {a: cells[f"params.`{a}`"] for a in ("method", "source", "l", "m", "seed")}
        assert axes == {a: str(record[a]) for a in axes}, (run, cells)
        assert cells["params.`w`"] == ("-" if record["w"] is None else str(float(record["w"]))), (run, cells)
        for target in ("shape", "size"):
            assert float(cells[f"metrics.`probe_{target}`"]) == pytest.approx(record[f"probe_{target}"], rel=1e-6)
