"""End to end: `snakemake --cores 2` on the reduced config (.test/config/config.yaml) runs every rule,
writes what a user opens, logs each run's axes to MLflow (read back through a started `mlflow
server`), reruns nothing it need not, and survives SIGKILL at any point."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from synrep.data.shards import read_shard
from tests.conftest import REPO

TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"
NAME = "toytest"
RUNS = [f"{run}-s{seed}" for seed in (0, 1) for run in
        ("stablerep-w2-l4-m4", "stablerep-w4-l4-m4", "stablerep-mix-l4-m4", "simclr-real-l1")]

pytestmark = pytest.mark.slow


def snakemake_cmd(root: Path, *args: str, config: str | tuple[str, ...] = "") -> list[str]:
    extra = [config] if isinstance(config, str) and config else list(config or [])
    return [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(TEST_CONFIG), "--config",
            f"paths={{results_dir: {root}/results, data_dir: {root}/data}}", *extra, *args]


def snakemake(root: Path, *args: str, config: str | tuple[str, ...] = "",
              timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_cmd(root, *args, config=config), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def planned_jobs(done: subprocess.CompletedProcess) -> dict[str, int]:
    """rule -> job count from the job stats of a dry run."""
    counts = {}
    in_stats = False
    for line in done.stdout.splitlines():
        if line.startswith("Job stats"):
            in_stats = True
        parts = line.split()
        if in_stats and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
        if in_stats and parts[:1] == ["total"]:
            break
    return counts


@pytest.fixture(scope="module")
def finished(reduced_run) -> Path:
    """The reduced pipeline run once to the end (shared with tests/test_mlflow_ui.py); returns its
    root (results/ and data/ below)."""
    return reduced_run


def test_reduced_pipeline_writes_what_a_user_opens(finished):
    results = finished / "results" / NAME
    for run in RUNS:
        record = json.loads((results / "runs" / run / "metrics.json").read_text())
        # the log of the job that trained it (sweep.runs_per_job runs a job) names it
        logs = [p for p in (results / "logs" / "runs").glob("*.log") if f"run {run}: " in p.read_text()]
        assert record["run"] == run and len(logs) == 1
    tables = (results / "ablations" / "tables.md").read_text()
    # a cell is the runs' own numbers: mean and Student-t 95 % half-width over seeds, from metrics.json
    from scipy import stats

    for run in ("stablerep-w2-l4-m4", "simclr-real-l1"):
        values = [json.loads((results / "runs" / f"{run}-s{seed}" / "metrics.json").read_text())["probe_shape"]
                  for seed in (0, 1)]
        mean = sum(values) / 2
        half = stats.t.ppf(0.975, 1) * stats.tstd(values) / 2 ** 0.5
        row = next(line for line in tables.splitlines()
                   if line.startswith(f"| {'StableRep' if run.startswith('stablerep') else 'SimCLR'} |"))
        cells = [tuple(map(float, c.split(" ± "))) for c in row.split("|") if " ± " in c]
        assert any(abs(m - mean) < 6e-4 and abs(c - half) < 6e-4 for m, c in cells), (run, values, row)
    assert "| method | w=2.0 | w=3.0 {2,4} |" not in tables  # a set is named by its set, not its mean
    assert "| method | w=2.0 | w={2,4} | w=4.0 |" in tables and "random init" in tables
    # no lm_heatmap.png: one (l, m) is a table cell (tests/test_report_page.py checks each plot's axis)
    for png in ("ablations/accuracy_vs_w.png", "sample_quality/caption_match.png",
                "shards/w2/grid.png", "shards/mix/grid.png"):
        with Image.open(results / png) as image:
            assert image.format == "PNG", png
    for log in ("toyworld", "captions", "index_mix", "sample_quality", "real_shards", "baselines/s1", "report"):
        assert (results / "logs" / f"{log}.log").exists(), log
    # the generator family's modes, judged (not trained on), in the generator-family table
    family = (results / "ablations" / "generator_family.md").read_text()
    for source in ("clip30", "inpaint", "unclip", "variation"):
        assert json.loads((results / "source_quality" / f"{source}.json").read_text())["captions"] == 4
        assert f"| {source} |" in family, family
    # DreamBooth (both variants) and NADA in their smallest form
    dreambooth = (results / "dreambooth_quality" / "dreambooth_quality.md").read_text()
    assert all(f"| {model} |" in dreambooth for model in ("real", "base", "prior", "no_prior")), dreambooth
    assert "| adapted | 2 |" in (results / "nada" / "quality" / "nada_quality.md").read_text()


def test_a_set_of_scales_runs_end_to_end_with_the_scale_of_each_image(finished):
    shards = finished / "results" / NAME / "shards" / "mix"
    index = pl.read_parquet(shards / "index.parquet")
    drawn = []
    for path in index["path"]:
        for sample in read_shard(path):
            record = sample["record"]
            assert record["source"]["guidance"] == {"kind": "cfg", "w": [2.0, 4.0]}
            assert len(record["guidance_scales"]) == len(sample["images"]) == 4
            drawn += record["guidance_scales"]
    assert set(drawn) == {2.0, 4.0} and len(drawn) == 48 * 4
    stats = json.loads((shards / "stats.json").read_text())
    assert stats["images"] == 48 * 4


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_mlflow_server_shows_each_runs_axes_as_params(reduced_mlflow_server):
    """Through the REST API of a started `mlflow server`, as the UI's compare view reads them."""
    base, experiment_id = reduced_mlflow_server
    found = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 1000,
                                                         "filter": "tags.`synrep.step` = 'sweep_run'"})["runs"]
    params = {}
    for run in found:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        params[tags["synrep.run"]] = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert sorted(params) == sorted(RUNS)
    axes = ("method", "source", "w", "w_set", "l", "m", "seed")
    shown = {run: {k: p.get(k) for k in axes} for run, p in params.items()}
    assert shown["stablerep-w4-l4-m4-s1"] == {"method": "stablerep", "source": "w4", "w": "4.0", "w_set": None,
                                              "l": "4", "m": "4", "seed": "1"}
    assert shown["stablerep-mix-l4-m4-s0"] == {"method": "stablerep", "source": "mix", "w": "3.0", "w_set": "{2,4}",
                                               "l": "4", "m": "4", "seed": "0"}
    assert shown["simclr-real-l1-s0"] == {"method": "simclr", "source": "real", "w": None, "w_set": None,
                                          "l": "1", "m": "1", "seed": "0"}


def test_rerun_has_nothing_to_do_and_a_new_seed_plans_only_its_runs(finished):
    again = snakemake(finished, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
    more = snakemake(finished, "-n", config="sweep={seeds: [0, 1, 2]}")
    assert more.returncode == 0, more.stderr[-3000:]
    jobs = planned_jobs(more)
    # the 4 runs of seed 2 in two jobs (sweep.runs_per_job: 2), and what aggregates them; no
    # finished run and no shard again
    assert jobs == {"sweep_run_s2_0": 1, "sweep_run_s2_1": 1, "baselines": 1, "report": 1, "page": 1, "all": 1}, \
        more.stdout[-3000:]
    outputs = [line.split("output: ")[1] for line in more.stdout.splitlines() if line.strip().startswith("output: ")]
    trained = sorted(re.findall(r"runs/([^/]+)/metrics\.json", ",".join(outputs)))
    assert trained == sorted(run.replace("-s0", "-s2") for run in RUNS if run.endswith("-s0"))
    planned = sorted(line.split("wildcards: ")[1] for line in more.stdout.splitlines() if "wildcards: " in line)
    assert planned == ["seed=2"]


def _wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float = 600) -> None:
    folder, pattern = path_glob
    deadline = time.time() + timeout
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, f"snakemake ended (rc {proc.returncode}) before {pattern} appeared"
        assert time.time() < deadline, f"{pattern} did not appear under {folder}"
        time.sleep(0.2)


def test_sigkill_at_any_stage_then_rerun_gives_the_same_tables(finished, tmp_path):
    """Kill the whole `snakemake --cores 2` (process group, SIGKILL) during generation, training and
    the report; rerun it as a user would after a crash; the tables equal the uninterrupted run's
    and no half-written file is left."""
    root = tmp_path / "killed"
    results = root / "results" / NAME
    # the StableRep loop only: the generator-family previews and the adaptation stages (which write
    # as atomically, tested on their own) would double this test's time, and no table here reads them
    core = ("sample_quality={sources: []}", "dreambooth={enabled: false}", "nada={enabled: false}")
    stages = [
        (results / "shards", "*/shard-*.tar"),  # a shard written: others are being generated
        (results / "runs", "*/checkpoints/last.pt"),  # a training run mid-way
        (results / "logs", "report.log"),  # the report started
    ]
    for stage in stages:
        proc = subprocess.Popen(snakemake_cmd(root, config=core), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        _wait_for(stage, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # what Snakemake asks of a user after a crash: release its lock (workflow/profiles/default
        # sets --rerun-incomplete for the jobs the kill interrupted)
        assert snakemake(root, "--unlock", config=core).returncode == 0
    done = snakemake(root, config=core)
    assert done.returncode == 0, done.stderr[-4000:]
    reference = finished / "results" / NAME / "ablations" / "tables.md"
    assert (results / "ablations" / "tables.md").read_text() == reference.read_text()
    leftovers = [p for p in (root / "results").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
