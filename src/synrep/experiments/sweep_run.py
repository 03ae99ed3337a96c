"""One run of the sweep (train + evaluate + ``metrics.json``) as an MLflow run of the sweep, tagged
with the sweep's parent run (``synrep.sweep_parent``), which is created once, before the runs fan
out (parallel jobs race on creating it in SQLite). The sweep's runs stay at the experiment's top
level, not nested: MLflow's runs page folds nested runs under their parent and hides them from a
search."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from synrep.experiments.sweep import RunSpec, expand, find, run_config
from synrep.fileio import write_json
from synrep.generation.sources import refresh_reading, source_spec, w_params
from synrep.settings import run_dir, save_resolved, section_hash, to_dict
from synrep.tracking import ensure_experiment, mlflow_run, runs_page, set_sweep_view, tracking_uri


def sweep_key(cfg: DictConfig) -> str:
    return section_hash(cfg, "sweep", "train", "eval", "generation", "sources")


def parent_run_id(cfg: DictConfig) -> str:
    """The sweep's MLflow parent run: found by its tag, created once."""
    import mlflow

    experiment_id = ensure_experiment(cfg)
    client = mlflow.MlflowClient(tracking_uri(cfg))
    key = sweep_key(cfg)
    found = client.search_runs([experiment_id], filter_string=f"tags.`synrep.sweep` = '{key}'",
                               order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"sweep {cfg.name}",
                            tags={"synrep.sweep": key, "synrep.step": "sweep", "synrep.config_name": cfg.name})
    client.log_param(run.info.run_id, "runs", len(expand(cfg)))
    set_sweep_view(cfg, experiment_id)
    print(f"MLflow: the sweep's runs at {runs_page(experiment_id)} under "
          f"`mlflow ui --backend-store-uri {tracking_uri(cfg)}`", flush=True)
    return run.info.run_id


def run_params(cfg: DictConfig, spec: RunSpec) -> dict:
    """The run's axes as top-level MLflow params (compare view, parallel coordinates): method,
    source, w (a number; for a set of scales its mean, and the set as ``w_set``), l, m, seed, and the
    generation budget T where the run has one."""
    w = w_params(source_spec(cfg, spec.data)) if spec.data != "real" else {"w": None, "w_set": None}
    params = {"method": spec.method, "source": spec.data, "l": spec.l, "m": spec.m, "seed": spec.seed, "w": w["w"],
              "budget": spec.budget}
    if w["w_set"]:
        params["w_set"] = w["w_set"]
    if spec.data != "real" and "caption_set" in (source := source_spec(cfg, spec.data)):
        # the axis of a source with captions of its own: their format (e.g. concepts) and count
        stats = json.loads(run_dir(cfg, "source_captions", spec.data, "stats.json").read_text())
        params["captions"] = source["caption_set"]["format"]
        params["captions_count"] = stats["rows_out"]
    if spec.data != "real" and (f := cfg.sources[spec.data].filter) is not None:
        # the axis of the alignment filter: what it keeps of each caption's images, by which CLIP
        params.update(keep_fraction=f.keep_fraction, min_score=f.min_score, filter_clip=f.clip_model)
    if (reading := refresh_reading(cfg, spec.data)) is not None:
        # the axis of fresh images: a new round every so many passes, of so many rounds
        params.update(refresh_every=reading[0], refresh_rounds=reading[1])
    if cfg.captions.skew or cfg.captions.held_out:
        # a skewed caption set, pairs held out of it: the same for every run of the sweep, but part of what it measured
        params["caption_skew"] = "; ".join(f"{', '.join(f'{k}={v}' for k, v in to_dict(r.match).items())} keep {r.keep:g}"
                                           for r in cfg.captions.skew) or None
        params["held_out"] = "; ".join(", ".join(f"{k}={v}" for k, v in to_dict(p).items())
                                       for p in cfg.captions.held_out) or None
    return {k: v for k, v in params.items() if v is not None}


def run_one(cfg: DictConfig, run_id: str) -> dict[str, Path]:
    """Train and evaluate one run of the sweep, as an MLflow child run; writes ``metrics.json``."""
    import mlflow

    from synrep.evaluation import evaluate
    from synrep.learning import distributed, trainer

    spec = find(cfg, run_id)
    rcfg = run_config(cfg, spec)
    out = Path(rcfg.train.output_dir)
    if not distributed.detect().is_main:
        # other ranks of a multi-process run train, then extract features and encode probe crops
        # with rank 0, which fits the probes and logs
        trainer.train(rcfg, restart_other=True)
        evaluate.evaluate_run(rcfg)
        return {}
    # where the run's time goes, in this process (benchmarks/sweep_run.py adds the process start)
    seconds = {"mlflow": 0.0}
    started, started_ms = time.perf_counter(), int(time.time() * 1000)
    parent = parent_run_id(cfg)
    params = run_params(cfg, spec)
    tags = {"synrep.run": spec.run_id, "synrep.group": spec.group, "synrep.sweep_parent": parent,
            **{f"synrep.{k}": str(v) for k, v in asdict(spec).items()}}
    with mlflow_run(rcfg, "sweep_run", sections=("train", "eval"), run_name=spec.run_id, top_level=True,
                    tags=tags, start_ms=started_ms):
        mlflow.log_params(params)
        seconds["mlflow"] += time.perf_counter() - started
        summary = trainer.train(rcfg, restart_other=True)
        trained = time.perf_counter()
        metrics = evaluate.evaluate_run(rcfg)
        evaluated = time.perf_counter()
        seconds |= {"train": trained - started - seconds["mlflow"], "evaluate": evaluated - trained}
        flat = evaluate.flat_metrics(metrics)
        mlflow.log_metrics(flat | {"train_seconds": summary["seconds"]})
        w = {"w": params.get("w"), "w_set": params.get("w_set")}
        record = {"run": spec.run_id, "group": spec.group, **asdict(spec), "source": spec.data, **w, **flat,
                  "train_seconds": summary["seconds"], "steps": summary["length"]["steps"],
                  "final_loss": summary["final_loss"], "details": metrics}
        save_resolved(rcfg, out)
        logging = time.perf_counter()
        seconds["mlflow"] += logging - evaluated
        record["seconds"] = {k: round(v, 3) for k, v in seconds.items()} | {
            "train_parts": summary.get("timing", {}), "evaluate_parts": metrics.get("seconds", {})}
        path = write_json(out / "metrics.json", record)
        mlflow.log_artifact(str(path))
    seconds_total = time.perf_counter() - started
    # what the record could not hold: MLflow's own time after it was written (artifact, run end)
    print(f"run {spec.run_id}: {seconds_total:.1f}s (MLflow {seconds['mlflow'] + time.perf_counter() - logging:.1f}s)",
          flush=True)
    return {"metrics": path, "model": out / "model.pt"}


def run_many(cfg: DictConfig, run_ids: list[str]) -> dict[str, Path]:
    """``python -m synrep sweep_run --run ID [ID ...]``: several runs of the sweep one after another
    in this process (a Snakemake job of ``sweep.runs_per_job`` runs), each as ``run_one``."""
    outputs = {}
    for i, run_id in enumerate(run_ids):
        if len(run_ids) > 1:
            print(f"== run {i + 1}/{len(run_ids)}: {run_id}", flush=True)
        outputs.update({f"{run_id}:{k}": v for k, v in run_one(cfg, run_id).items()})
    return outputs
