"""One run of the sweep (train + evaluate + ``metrics.json``) as an MLflow child run of the
sweep's parent run, which is created once, before the runs fan out (parallel jobs race on
creating it in SQLite)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from synrep.config import save_resolved, section_hash
from synrep.experiments.sweep import RunSpec, expand, find, run_config
from synrep.generation.sources import source_spec, w_params


def sweep_key(cfg: DictConfig) -> str:
    return section_hash(cfg, "sweep", "train", "eval", "generation", "sources")


def parent_run_id(cfg: DictConfig) -> str:
    """The sweep's MLflow parent run: found by its tag, created once."""
    import mlflow

    from synrep.tracking import ensure_experiment, tracking_uri

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
    return {k: v for k, v in params.items() if v is not None}


def run_one(cfg: DictConfig, run_id: str) -> dict[str, Path]:
    """Train and evaluate one run of the sweep, as an MLflow child run; writes ``metrics.json``."""
    import mlflow

    from synrep.evaluation import evaluate
    from synrep.fileio import write_json
    from synrep.learning import distributed, trainer
    from synrep.tracking import mlflow_run

    spec = find(cfg, run_id)
    rcfg = run_config(cfg, spec)
    out = Path(rcfg.train.output_dir)
    if not distributed.detect().is_main:
        # other ranks of a multi-process run only train; rank 0 evaluates and logs
        trainer.train(rcfg, restart_other=True)
        return {}
    parent = parent_run_id(cfg)
    params = run_params(cfg, spec)
    tags = {"synrep.run": spec.run_id, "synrep.group": spec.group, **{f"synrep.{k}": str(v) for k, v in asdict(spec).items()}}
    with mlflow_run(rcfg, "sweep_run", sections=("train", "eval"), run_name=spec.run_id, parent_run_id=parent,
                    tags=tags):
        mlflow.log_params(params)
        summary = trainer.train(rcfg, restart_other=True)
        metrics = evaluate.evaluate_run(rcfg)
        flat = evaluate.flat_metrics(metrics)
        mlflow.log_metrics(flat | {"train_seconds": summary["seconds"]})
        w = {"w": params.get("w"), "w_set": params.get("w_set")}
        record = {"run": spec.run_id, "group": spec.group, **asdict(spec), "source": spec.data, **w, **flat,
                  "train_seconds": summary["seconds"], "steps": summary["length"]["steps"],
                  "final_loss": summary["final_loss"], "details": metrics}
        save_resolved(rcfg, out)
        path = write_json(out / "metrics.json", record)
        mlflow.log_artifact(str(path))
    return {"metrics": path, "model": out / "model.pt"}
