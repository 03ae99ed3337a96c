"""The paper's recipes: each loads, its captions format ingests a fixture, Snakemake's dry run
shows the expected jobs and counts, and the planner prices them."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import polars as pl
import pytest

from synrep.generation.sources import referenced_sources, source_spec

from synrep.data import captions
from synrep.experiments import planner as plan
from synrep.experiments import sweep
from synrep.config import load_config
from tests.conftest import REPO

FIXTURE_CAPTIONS = ["A dog on a beach", "a  dog on a beach", "Two cats asleep", "a red car",
                    "A Red Car", "sunset over the sea", "a bowl of soup"]
UNIQUE = 5  # after NFKC + lower case + whitespace dedup


def write_fixture(fmt: str, folder):
    folder.mkdir(parents=True, exist_ok=True)
    urls = [f"http://example.com/{i}.jpg" for i in range(len(FIXTURE_CAPTIONS))]
    if fmt == "cc3m":
        path = folder / "Train_GCC-training.tsv"
        path.write_text("".join(f"{c}\t{u}\n" for c, u in zip(FIXTURE_CAPTIONS, urls)))
    elif fmt == "cc12m":
        path = folder / "cc12m.tsv"
        path.write_text("".join(f"{u}\t{c}\n" for c, u in zip(FIXTURE_CAPTIONS, urls)))
    elif fmt == "redcaps":
        path = folder / "annotations.json"
        path.write_text(json.dumps({"info": {"subreddit": "pics"}, "annotations": [
            {"image_id": str(i), "caption": c, "url": u, "subreddit": "pics"}
            for i, (c, u) in enumerate(zip(FIXTURE_CAPTIONS, urls))]}))
    else:
        path = folder / "part-00000.parquet"
        pl.DataFrame({"URL": urls, "TEXT": FIXTURE_CAPTIONS, "similarity": [0.3] * len(urls)}).write_parquet(path)
    return path


RECIPES = {
    "paper_cc3m_ablations": "cc3m",
    "paper_cc12m": "cc12m",
    "paper_redcaps": "redcaps",
    "paper_laion_plus": "laion",
}


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_recipe_dry_run_and_plan(experiment, tmp_path):
    fmt = RECIPES[experiment]
    recipe = load_config([f"experiment={experiment}"])
    assert recipe.captions.format == fmt
    # papers.md's generation recipe
    g = recipe.generation
    assert (g.model, g.sampler, g.steps, g.resolution, g.save_size, g.eta) == (
        "runwayml/stable-diffusion-v1-5", "ddim", 50, 512, 256, 0.0)
    assert (recipe.train.encoder, recipe.train.temperature, list(recipe.train.betas)) == (
        "vit_base_patch16_224", 0.1, [0.9, 0.98])

    relative = recipe.captions.path.split("/", 1)[1]  # under paths.data_dir
    path = write_fixture(fmt, (tmp_path / "data" / relative).parent)
    overrides = [f"experiment={experiment}", f"paths.data_dir={tmp_path}/data", f"paths.results_dir={tmp_path}/results",
                 "generation.captions_per_shard=2", "plan.captions=null"]
    cfg = load_config(overrides)
    assert cfg.captions.path == str(path)
    captions.run(cfg)
    n = pl.read_parquet(tmp_path / "results" / experiment / "captions" / "captions.parquet").height
    assert n == UNIQUE

    profile = ["--profile", "slurm"] if (REPO / "slurm" / "config.yaml").exists() else ["--cores", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *profile, "--quiet", "rules", "--config", f"experiment={experiment}",
         f"paths={{data_dir: {tmp_path}/data, results_dir: {tmp_path}/results}}", "generation={captions_per_shard: 2}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", done.stdout, re.M)}
    sources = referenced_sources(cfg)
    shards = math.ceil(UNIQUE / 2) * len(sources)
    runs = sweep.expand(cfg)
    assert counts.get("generate_shard") == shards, done.stdout
    assert counts.get("sweep_run") == len(runs), done.stdout
    assert "toyworld" not in counts and "sample_quality" not in counts and "real_shards" not in counts

    table = plan.plan_table(cfg)
    generation = table.filter(pl.col("stage").str.starts_with("generate "))
    assert generation["stage"].to_list() == [f"generate {s}" for s in sources]
    assert generation["jobs"].sum() == shards
    images = UNIQUE * sum(source_spec(cfg, s)["l"] for s in sources)
    assert generation["gpu_hours"].sum() == pytest.approx(images * cfg.plan.seconds_per_image / 3600)
    assert table.height == len(sources) + len(runs)


def test_planner_prints_the_paper_scale(capsys):
    cfg = load_config(["experiment=paper_cc12m", "plan.seconds_per_image=0.8", "plan.seconds_per_train_step=1.0"])
    plan.run(cfg)
    out = capsys.readouterr().out
    # 8.3M captions x 10 images at 0.8 s = 18,444 GPU-hours of generation
    assert "83,000,000 images" in out and "18,444.4" in out
    assert "8300 |" in out  # generation jobs: one per 1000-caption shard
