"""``python -m synrep plan``: what a config will cost, before it is launched.

Generation: captions x l images per source that training reads, at ``plan.seconds_per_image`` on one
GPU (measure it with ``benchmarks/generation_speed.py``). Training: every run of the sweep with its
optimizer steps, warm-up steps, batch and peak lr exactly as ``train()`` will compute them on
``launch.nodes x launch.tasks_per_node`` ranks (one GPU each), and its GPU-hours at
``plan.seconds_per_train_step`` (measure a step with ``benchmarks/train_step.py``). Evaluation: each
run's frozen-feature pass over the evaluation set once, plus, for the augmented probe (the official
protocol), one encoder pass over its train split every probe epoch, at ``plan.seconds_per_eval_image``
(one image, forward only, one GPU; the same benchmark prints it) on the run's GPUs. Indexing reads
each shard's small record, no image: a CPU job per source, no GPU-hours. Job counts are those
``snakemake --profile slurm`` submits.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from synrep import source_modes
from synrep.settings import InputError, run_dir
from synrep.tables import markdown_table


def caption_count(cfg: DictConfig) -> int:
    if cfg.plan.captions is not None:
        n = int(cfg.plan.captions)
    else:
        parquet = run_dir(cfg, "captions", "captions.parquet")
        if not parquet.exists():
            raise FileNotFoundError(f"no caption count: set config key 'plan.captions' or run the captions "
                                    f"step first ({parquet} is missing)")
        n = pl.scan_parquet(parquet).select(pl.len()).collect().item()
    return min(n, cfg.captions.limit) if cfg.captions.limit else n


def source_captions_planned(cfg: DictConfig, name: str, n: int) -> int:
    """Captions source ``name`` generates (a union: its sources' together), from the run's caption
    set of ``n`` or from its own ``caption_set``: counted once the captions step made that set,
    before it its concept count (null: ``n``) or its limit."""
    from synrep.data.captions import source_captions_dir
    from synrep.generation.sources import source_caption_count, source_spec

    source = cfg.sources[name]
    if not source_modes.get(source.mode).generates:
        return sum(source_captions_planned(cfg, member, n) for member in source.union)
    own = source.caption_set
    if own is not None:
        parquet = source_captions_dir(cfg, name) / "captions.parquet"
        if parquet.exists():
            n = pl.scan_parquet(parquet).select(pl.len()).collect().item()
        elif own.format == "concepts":
            n = own.concepts.count if own.concepts.count is not None else n
            n = min(n, own.limit) if own.limit else n
        elif own.limit:
            n = own.limit
        else:
            raise FileNotFoundError(f"no caption count for source {name!r}: set config key "
                                    f"'sources.{name}.caption_set.limit' or run `python -m synrep captions --source "
                                    f"{name}` first ({parquet} is missing)")
    return source_caption_count(source_spec(cfg, name), n)


def world_size(cfg: DictConfig) -> int:
    """Ranks of a training job: one per task (= per GPU when the launch asks for GPUs)."""
    return cfg.launch.nodes * max(1, cfg.launch.tasks_per_node)


def evaluation_row(cfg: DictConfig, rcfg: DictConfig, run_id: str, gpus: int) -> dict:
    """A run's evaluation: features of every split once; the augmented probe re-encodes the train
    split every epoch (the official protocol), the plain probe reads the cached features."""
    p, e = cfg.plan, rcfg.eval
    if p.eval_train_images is None or p.eval_other_images is None:
        return {"stage": f"evaluate {run_id}", "jobs": 0, "gpus_per_job": gpus, "gpu_hours": None,
                "detail": "not estimated: set plan.eval_train_images and plan.eval_other_images"}
    passes = e.probe_epochs if e.probe_augment else 0
    images = p.eval_train_images * (1 + passes) + p.eval_other_images
    hours = None if p.seconds_per_eval_image is None else images * p.seconds_per_eval_image / 3600
    probe = f"augmented probe: {passes} epochs re-encode the train split" if passes else "probe on cached features"
    # the evaluation runs in the training job, after training
    return {"stage": f"evaluate {run_id}", "jobs": 0, "gpus_per_job": gpus, "gpu_hours": hours,
            "detail": f"{images:,} encoder passes ({probe})"}


def plan_table(cfg: DictConfig) -> pl.DataFrame:
    from synrep.experiments import sweep
    from synrep.generation.sources import referenced_sources, source_spec, w_params
    from synrep.learning.trainer import training_length

    n = caption_count(cfg)
    rows = []
    for name in referenced_sources(cfg):
        spec = source_spec(cfg, name)
        if not source_modes.get(spec["mode"]).generates:  # a union joins shards that its sources' rows already count
            continue
        n_source = source_captions_planned(cfg, name, n)
        images = n_source * spec["l"]
        w = w_params(spec)
        rows.append({"stage": f"generate {name}", "jobs": -(-n_source // cfg.generation.captions_per_shard),
                     "detail": f"{n_source:,} captions x l={spec['l']} = {images:,} images, w={w['w_set'] or format(w['w'], 'g')}",
                     "gpus_per_job": 1, "gpu_hours": images * cfg.plan.seconds_per_image / 3600})
        rows.append({"stage": f"index {name}", "jobs": 1,
                     "detail": f"{-(-n_source // cfg.generation.captions_per_shard):,} shard records read, no image",
                     "gpus_per_job": 0, "gpu_hours": 0.0})
    world = world_size(cfg)
    gpus = cfg.launch.nodes * max(1, cfg.launch.gpus_per_node)
    for spec in sweep.expand(cfg):
        rcfg = sweep.run_config(cfg, spec)
        # real-image runs see the same captions, one image each; a small source only its own
        n_run = n if spec.data == "real" else source_captions_planned(cfg, spec.data, n)
        try:
            length = training_length(rcfg, n_run, world_size=world)
        except InputError as err:  # e.g. a caption set smaller than one batch
            rows.append({"stage": f"train {spec.run_id}", "jobs": 1, "detail": f"cannot run: {err}",
                         "gpus_per_job": gpus, "gpu_hours": None})
            continue
        hours = None
        if cfg.plan.seconds_per_train_step is not None:
            hours = length.steps * cfg.plan.seconds_per_train_step * gpus / 3600
        rows.append({"stage": f"train {spec.run_id}", "jobs": 1,
                     "detail": f"{length.steps:,} steps, warm-up {length.warmup_steps:,.1f}, "
                               f"batch {length.crops_per_step:,} ({length.rows_per_step:,} captions), "
                               f"lr {length.peak_lr:.4g}, {length.n_captions:,} captions",
                     "steps": length.steps, "warmup_steps": length.warmup_steps, "batch": length.crops_per_step,
                     "peak_lr": length.peak_lr, "gpus_per_job": gpus, "gpu_hours": hours})
        rows.append(evaluation_row(cfg, rcfg, spec.run_id, gpus))
    return pl.DataFrame(rows, schema_overrides={"gpu_hours": pl.Float64, "steps": pl.Int64,
                                                "warmup_steps": pl.Float64, "batch": pl.Int64,
                                                "peak_lr": pl.Float64})


def run(cfg: DictConfig) -> dict[str, Path]:
    table = plan_table(cfg)
    total = table["gpu_hours"].sum()
    shown = table.select("stage", "jobs", "detail", "gpus_per_job", pl.col("gpu_hours").round(1))
    print(f"# {cfg.name}: {cfg.plan.seconds_per_image} s per image, "
          f"{cfg.plan.seconds_per_train_step or 'unmeasured'} s per training step, "
          f"{cfg.plan.seconds_per_eval_image or 'unmeasured'} s per evaluated image")
    print(markdown_table(shown, floatfmt=",.1f"), end="")
    known = "" if table["gpu_hours"].null_count() == 0 else (
        " (training or evaluation not estimated: set plan.seconds_per_train_step, plan.seconds_per_eval_image,"
        " plan.eval_train_images and plan.eval_other_images)")
    print(f"total: {total:,.1f} GPU-hours{known}; {int(table['jobs'].sum())} jobs", flush=True)
    return {}
