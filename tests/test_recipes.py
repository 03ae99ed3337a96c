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

from synrep.config import load_config
from synrep.data import captions
from synrep.experiments import planner as plan
from synrep.experiments import sweep
from synrep.generation.sources import referenced_sources, source_spec
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
    "paper_cc12m_bn": "cc12m",
    "paper_redcaps": "redcaps",
    "paper_redcaps_bn": "redcaps",
    "paper_laion_plus": "laion",
}


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_recipe_dry_run_and_plan(experiment, tmp_path):
    fmt = RECIPES[experiment]
    recipe = load_config([f"experiment={experiment}"])
    assert recipe.captions.format == fmt
    # the paper's generation recipe
    g = recipe.generation
    assert (g.model, g.sampler, g.steps, g.resolution, g.save_size, g.eta) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "ddim", 50, 512, 256, 0.0)
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
    assert counts.get("download_weights") == 1, done.stdout  # the hub's weights, fetched once for every shard
    # a cluster recipe trains one run per job (sweep.runs_per_job = 1), each job named by its run
    assert sorted(k for k in counts if k.startswith("sweep_run_")) == sorted(
        "sweep_run_" + re.sub(r"\W", "_", spec.run_id) for spec in runs), done.stdout
    assert "toyworld" not in counts and "sample_quality" not in counts and "real_shards" not in counts

    table = plan.plan_table(cfg)
    generation = table.filter(pl.col("stage").str.starts_with("generate "))
    assert generation["stage"].to_list() == [f"generate {s}" for s in sources]
    assert generation["jobs"].sum() == shards
    images = UNIQUE * sum(source_spec(cfg, s)["l"] for s in sources)
    assert generation["gpu_hours"].sum() == pytest.approx(images * cfg.plan.seconds_per_image / 3600)
    # a row per source to generate and one to index; a row per run to train, and one to evaluate
    # each run that can train (these few captions are less than one of the recipe's batches)
    trainable = table.filter(pl.col("stage").str.starts_with("train ") & ~pl.col("detail").str.starts_with("cannot run"))
    assert table.height == 2 * len(sources) + len(runs) + trainable.height


def test_planner_prints_the_paper_scale(capsys):
    cfg = load_config(["experiment=paper_cc12m", "plan.seconds_per_image=0.8", "plan.seconds_per_train_step=1.0"])
    plan.run(cfg)
    out = capsys.readouterr().out
    # 8.3M captions x 10 images at 0.8 s = 18,444 GPU-hours of generation
    assert "83,000,000 images" in out and "18,444.4" in out
    assert "8300 |" in out  # generation jobs: one per 1000-caption shard


def test_planner_prices_evaluation_by_the_probe_protocol():
    """The official probe re-encodes ImageNet's train split every epoch through the frozen encoder;
    the plain probe encodes every split once and trains on cached features."""
    base = ["experiment=paper_cc12m", "plan.seconds_per_train_step=1.0", "plan.seconds_per_eval_image=0.001"]
    augmented = plan.plan_table(load_config(base)).filter(pl.col("stage").str.starts_with("evaluate "))
    cached = plan.plan_table(load_config(base + ["eval.probe_augment=false"])).filter(
        pl.col("stage").str.starts_with("evaluate "))
    assert augmented.height == cached.height == len(sweep.expand(load_config(base)))
    # ImageNet-1k: 1,281,167 train images (91 passes: features once, 90 probe epochs) and 50,000 val
    assert augmented["gpu_hours"][0] == pytest.approx((1_281_167 * 91 + 50_000) * 0.001 / 3600)
    assert cached["gpu_hours"][0] == pytest.approx((1_281_167 + 50_000) * 0.001 / 3600)
    unknown = plan.plan_table(load_config(base + ["plan.eval_train_images=null"]))
    assert unknown.filter(pl.col("stage").str.starts_with("evaluate "))["gpu_hours"].null_count() == augmented.height


def test_planner_counts_a_source_s_own_caption_set(tmp_path):
    """A source with a caption set of its own generates from that set: its concept count before the
    captions step made it, the rows of its parquet after; a union adds its sources' counts."""
    from synrep.data.captions import source_captions_dir

    cfg = load_config(["experiment=toy_concept_captions", "plan.captions=256", f"paths.results_dir={tmp_path}"])
    table = plan.plan_table(cfg)

    def detail(stage):
        return table.filter(pl.col("stage") == stage)["detail"].item()

    assert detail("generate w2").startswith("256 captions x l=4")
    assert detail("generate concepts_2x").startswith("512 captions x l=4")
    assert detail("generate concepts_4x").startswith("1,024 captions x l=4")
    assert detail("generate concepts_1x").startswith("256 captions")  # count null: as many as the run's
    written = source_captions_dir(cfg, "concepts_2x") / "captions.parquet"
    written.parent.mkdir(parents=True)
    pl.DataFrame({"caption_id": list(range(500)), "caption": ["a red circle"] * 500}).write_parquet(written)
    assert plan.plan_table(cfg).filter(pl.col("stage") == "generate concepts_2x")["detail"].item().startswith(
        "500 captions")
    runs = plan.plan_table(cfg).filter(pl.col("stage").str.contains("concepts_2x") & pl.col("stage").str.starts_with(
        "train "))
    assert runs.height and all("500 captions" in d for d in runs["detail"])


# ------------------------------------------------------------------------------------------------
# The official runs, from their public command lines (google-research/syn-rep-learn, StableRep/README.md)
# ------------------------------------------------------------------------------------------------

OFFICIAL_TRAIN = ("torchrun --nproc_per_node=8 --nnodes=4 main_stablerep.py --model base --batch_size 43 "
                  "--epochs {epochs} --warmup_epochs {warmup} --blr 2.0e-4 --weight_decay 0.1 --beta1 0.9 "
                  "--beta2 0.98 --num_workers 14 --n_img 6")
# README, "To reproduce the 1x, 2x, or 3x schedules": --epochs / --warmup_epochs
OFFICIAL_SCHEDULES = {
    "paper_cc12m": {"1x": (15, 0.5), "2x": (31, 1.0), "3x": (46, 1.5)},
    "paper_redcaps": {"1x": (13, 0.45), "2x": (27, 0.9), "3x": (40, 1.35)},
}
# main_linear.py: --batch-size 128 per GPU on 8 GPUs, --epochs 90, --eval-freq 10, --base_lrs (scaled
# by batch / 256), Resize(256) + CenterCrop(224); the headline rows without --use_bn
OFFICIAL_PROBE = {"batch": 128 * 8, "epochs": 90, "eval_every": 10, "crop_pct": 224 / 256,
                  "lrs": [b * 128 * 8 / 256 for b in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)]}


def official_run(command: str, n_captions: int) -> dict:
    """What main_stablerep.py computes from its command line: the lr rule, and the step count of
    its DataLoader(DistributedSampler(dataset), batch_size, drop_last=True) over --epochs."""
    import argparse

    import torch

    parser = argparse.ArgumentParser()
    for name, kind in (("--nproc_per_node", int), ("--nnodes", int), ("--batch_size", int), ("--epochs", int),
                       ("--warmup_epochs", float), ("--blr", float), ("--weight_decay", float), ("--beta1", float),
                       ("--beta2", float), ("--n_img", int), ("--num_workers", int), ("--model", str)):
        parser.add_argument(name, type=kind)
    parser.add_argument("--num_crop", type=int, default=1)
    words = command.replace("=", " ").split()
    args, _ = parser.parse_known_args(words[1:])
    world = args.nproc_per_node * args.nnodes
    lr = args.blr * args.batch_size * world * args.n_img / 256 * args.num_crop / 2
    dataset = range(n_captions)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=0)
    per_epoch = len(torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True))
    return {"world": world, "lr": lr, "batch": args.batch_size * world * args.n_img, "per_epoch": per_epoch,
            "steps": args.epochs * per_epoch, "warmup_steps": args.warmup_epochs * per_epoch,
            "epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "weight_decay": args.weight_decay,
            "betas": [args.beta1, args.beta2]}


@pytest.mark.parametrize("experiment,schedule", [(e, s) for e in OFFICIAL_SCHEDULES for s in OFFICIAL_SCHEDULES[e]])
def test_recipe_trains_exactly_the_official_run(experiment, schedule):
    from synrep.learning import trainer

    cfg = load_config([f"experiment={experiment}", f"schedule={schedule}"])
    epochs, warmup = OFFICIAL_SCHEDULES[experiment][schedule]
    n = cfg.plan.captions
    official = official_run(OFFICIAL_TRAIN.format(epochs=epochs, warmup=warmup), n)
    assert plan.world_size(cfg) == official["world"] == 32
    rcfg = sweep.run_config(cfg, sweep.canonical_run("stablerep", "w2", 10, 6, 0))
    length = trainer.training_length(rcfg, n, world_size=plan.world_size(cfg))
    assert length.crops_per_step == official["batch"] == 8256
    assert length.rows_per_rank == 43 and length.steps_per_pass == official["per_epoch"]
    assert length.steps == official["steps"]
    assert length.warmup_steps == pytest.approx(official["warmup_steps"])
    assert length.peak_lr == pytest.approx(official["lr"]) and official["lr"] == pytest.approx(3.225e-3)
    t = rcfg.train
    assert (t.weight_decay, list(t.betas), t.temperature, t.head_hidden, t.head_out) == (
        official["weight_decay"], official["betas"], 0.1, 4096, 256)
    # the official schedule, step by step at its ends and around the end of the warm-up
    per_epoch = official["per_epoch"]
    edge = int(official["warmup_steps"])
    for step in [0, 1, edge - 1, edge, edge + 1, length.steps // 2, length.steps - 1]:
        epoch, it = divmod(step, per_epoch)
        e = it / per_epoch + epoch
        want = (official["lr"] * e / warmup if e < warmup else
                official["lr"] * 0.5 * (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup))))
        assert trainer.lr_at(step, length) == pytest.approx(want, rel=1e-9, abs=1e-15)
    # the headline rows: no down-sampling while training; the official probe without BatchNorm
    assert t.augment.downsample_p == 0.0 and (t.augment.crop_scale, t.augment.color_jitter_p) == ([0.08, 1.0], 0.8)
    e = cfg.eval
    assert (e.probe_batch_size, e.probe_epochs, e.probe_eval_every, e.probe_batchnorm, e.probe_augment) == (
        OFFICIAL_PROBE["batch"], OFFICIAL_PROBE["epochs"], OFFICIAL_PROBE["eval_every"], False, True)
    assert list(e.probe_lrs) == pytest.approx(OFFICIAL_PROBE["lrs"])
    assert e.crop_pct == pytest.approx(OFFICIAL_PROBE["crop_pct"])
    assert e.holdout == 10000  # lr and epoch chosen on held-out train images, val reported


@pytest.mark.parametrize("experiment", ["paper_cc12m_bn", "paper_redcaps_bn"])
def test_bn_recipes_are_the_readme_rows_with_downsampling_and_probe_bn(experiment):
    base = load_config([f"experiment={experiment.removesuffix('_bn')}"])
    cfg = load_config([f"experiment={experiment}"])
    # --downsample --downsample_prob 0.05 --down_res 64 128 (of the 256 px images); main_linear --use_bn
    assert cfg.train.augment.downsample_p == 0.05
    assert [f * base.generation.save_size for f in cfg.train.augment.downsample_sizes] == [64, 128]
    assert cfg.eval.probe_batchnorm and not base.eval.probe_batchnorm
    assert cfg.train.epochs == base.train.epochs and cfg.train.batch_images == base.train.batch_images


@pytest.mark.parametrize("experiment", ["paper_cc12m", "paper_redcaps"])
def test_baselines_are_the_papers(experiment):
    """SimCLR and CLIP on synthetic images: one image per caption; SimCLR swept over w (reported
    at its best); CLIP with its own optimiser (SLIP's CLIP ViT-B/16: lr 5e-4, wd 0.5)."""
    cfg = load_config([f"experiment={experiment}"])
    specs = sweep.expand(cfg)
    synthetic = [s for s in specs if s.method in ("simclr", "clip") and s.data != "real"]
    assert synthetic and all(s.l == 1 for s in synthetic)
    simclr_w = {source_spec(cfg, s.data)["guidance"]["w"] for s in synthetic if s.method == "simclr"}
    assert len(simclr_w) >= 3 and max(simclr_w) >= 8
    clip = sweep.run_config(cfg, next(s for s in specs if s.method == "clip"))
    assert (clip.train.lr, clip.train.weight_decay) == (5e-4, 0.5)
    assert clip.train.epochs == 35  # the paper's "1x (35 ep)" for one image per caption
    stablerep = sweep.run_config(cfg, next(s for s in specs if s.method == "stablerep"))
    assert stablerep.train.lr is None and stablerep.train.weight_decay == 0.1


def test_every_recipe_plans_on_its_own_world_size():
    """Every training run of every recipe is valid for the recipe's launch (32 ranks)."""
    for experiment in RECIPES:
        cfg = load_config([f"experiment={experiment}"])
        table = plan.plan_table(cfg)
        train_rows = table.filter(pl.col("stage").str.starts_with("train "))
        assert train_rows.height == len(sweep.expand(cfg))
        assert not train_rows["detail"].str.contains("cannot run").any(), train_rows.filter(
            pl.col("detail").str.contains("cannot run"))["detail"].to_list()


def test_ablation_recipe_follows_the_papers_designs():
    cfg = load_config(["experiment=paper_cc3m_ablations"])
    specs = sweep.expand(cfg)
    world = plan.world_size(cfg)
    from synrep.learning import trainer

    def length(spec):
        return trainer.training_length(sweep.run_config(cfg, spec), cfg.plan.captions, world_size=world)

    # w: StableRep and SimCLR over {1, ..., 12} and the three sets
    for method in ("stablerep", "simclr"):
        ws = {str(source_spec(cfg, s.data)["guidance"]["w"]) for s in specs if s.method == method and s.data != "real"
              and s.budget is None
              and s.m in (6, 1) and s.l in (10, 1)}
        assert {"1.0", "2.0", "3.0", "4.0", "5.0", "6.0", "8.0", "10.0", "12.0"} <= ws
        assert {"[2.0, 3.0]", "[8.0, 10.0]", "[2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0]"} <= ws
    # l at a fixed budget T: T / l captions, the same compute (35 SimCLR-equivalent epochs)
    budget = [s for s in specs if s.budget is not None]
    assert sorted(s.l for s in budget) == [1, 2, 4, 6, 8, 10]
    lengths = {s.l: length(s) for s in budget}
    for l, got in lengths.items():
        assert got.n_captions == 2_700_000 // l
        assert got.steps * got.crops_per_step == pytest.approx(35 * 2 * 2_700_000, rel=2e-4)
    # m at a fixed batch: rows = batch / m, m = 1 is SimCLR (two crops of one image)
    m_runs = {s.m: length(s) for s in specs if s.method == "stablerep" and s.data == "w2" and s.l == 10
              and s.budget is None}
    assert sorted(m_runs) == [1, 2, 3, 4, 6, 8, 10]
    for m, got in m_runs.items():
        assert got.rows_per_step == 32 * (8256 // (32 * (2 if m == 1 else m)))
        assert 8256 - 32 * 2 * m < got.crops_per_step <= 8256
    # CLIP against w, one image per caption
    clip = [s for s in specs if s.method == "clip" and s.data != "real"]
    assert len(clip) == 9 and all(s.l == 1 for s in clip)


def test_plan_prints_steps_warmup_and_lr(capsys):
    cfg = load_config(["experiment=paper_cc12m", "plan.seconds_per_train_step=0.5"])
    plan.run(cfg)
    out = capsys.readouterr().out
    official = official_run(OFFICIAL_TRAIN.format(epochs=15, warmup=0.5), 8_300_000)
    line = next(l for l in out.splitlines() if "train stablerep-w2-l10-m6-s0" in l)
    assert f"{official['steps']:,} steps" in line and "batch 8,256" in line and "lr 0.003225" in line
    assert f"warm-up {official['warmup_steps']:,.1f}" in line
    # GPU-hours: steps x seconds per step x 32 GPUs
    assert f"{official['steps'] * 0.5 * 32 / 3600:,.1f}" in line
