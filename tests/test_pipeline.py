"""End to end: `snakemake --cores 2` on a reduced config runs every rule, writes what a user opens,
logs to MLflow, and a second run has nothing to do."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import polars as pl
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO, SMALL_WORLD, TINY_TRAINING


def reduced_config(tmp_path, model_dir) -> dict:
    """The reduced pipeline as a --configfile: small world, tiny generator, two-run-per-seed sweep."""
    from omegaconf import OmegaConf

    dotlist = [f"paths.data_dir={tmp_path}/data", f"paths.results_dir={tmp_path}/results", "threads=1",
               *SMALL_WORLD, *TINY_TRAINING, f"generation.model={model_dir}",
               "sample_quality.guidance_scales=[1,3]", "sample_quality.captions=4",
               "sample_quality.images_per_caption=2", "sample_quality.classifier_epochs=1",
               "sweep.seeds=[0,1]", "train.epochs=1"]
    cfg = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))
    cfg["sweep"]["grids"] = [{"method": ["stablerep"], "data": ["w2", "w4"]}, {"method": ["simclr"], "data": ["real"]}]
    return cfg


def snakemake(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_snakemake_runs_the_reduced_pipeline_end_to_end(tmp_path, tiny_toy_pipeline_dir):
    config_file = tmp_path / "reduced.yaml"
    config_file.write_text(yaml.safe_dump(reduced_config(tmp_path, tiny_toy_pipeline_dir)))
    done = snakemake("--cores", "2", "--configfile", str(config_file))
    assert done.returncode == 0, done.stderr[-4000:]

    results = tmp_path / "results" / "toy"
    runs = ["stablerep-w2-l4-m4-s0", "stablerep-w4-l4-m4-s0", "simclr-real-l1-s0",
            "stablerep-w2-l4-m4-s1", "stablerep-w4-l4-m4-s1", "simclr-real-l1-s1"]
    for run in runs:
        record = json.loads((results / "runs" / run / "metrics.json").read_text())
        assert 0.0 <= record["probe_shape"] <= 1.0 and record["run"] == run
        assert (results / "logs" / "runs" / f"{run}.log").exists()
    # the files a user opens
    tables = (results / "ablations" / "tables.md").read_text()
    assert "guidance scale w per method" in tables and "random init" in tables
    for png in ("ablations/accuracy_vs_w.png", "ablations/lm_heatmap.png", "sample_quality/caption_match.png",
                "shards/grids/samples_w2.png"):
        with Image.open(results / png) as image:
            assert image.format == "PNG", png
    index = pl.read_parquet(results / "shards" / "index.parquet")
    assert sorted(index["w"].unique().to_list()) == [2.0, 4.0]
    assert (results / "config.yaml").exists()
    for log in ("toyworld", "captions", "index_shards", "sample_quality", "real_shards", "baselines", "report"):
        assert (results / "logs" / f"{log}.log").exists(), log

    # MLflow: the sweep's parent run with one child per run, each with its metrics
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    experiment = client.get_experiment_by_name("toy")
    parent = client.search_runs([experiment.experiment_id], "tags.`synrep.step` = 'sweep'")
    assert len(parent) == 1
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
    assert sorted(c.data.tags["synrep.run"] for c in children) == sorted(runs)
    assert all("probe_shape" in c.data.metrics for c in children)
    artifacts = [a.path for a in client.list_artifacts(parent[0].info.run_id, "ablations")]
    assert "ablations/tables.md" in artifacts

    again = snakemake("-n", "--cores", "2", "--configfile", str(config_file))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
