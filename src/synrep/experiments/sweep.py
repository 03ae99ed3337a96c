"""Sweeps: one function expands the sweep config into runs, for Snakemake and submitit alike.

A run is (method, data source, l, m, seed). ``sweep.grids`` is a list of blocks; each block is the
cartesian product of its lists, and a missing list takes the ``train.*`` value. Runs are
normalised (SimCLR and CLIP use one image per row: m = 1; real data holds one image per caption:
l = 1) and deduplicated, keeping the first occurrence, so blocks may overlap.

Every run is an MLflow child run under one parent run for the sweep, which is created before the
runs fan out (parallel jobs race on creating it in SQLite).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synrep.config import METHODS, run_dir, save_resolved, section_hash


@dataclass(frozen=True)
class RunSpec:
    method: str
    data: str
    l: int
    m: int
    seed: int

    @property
    def run_id(self) -> str:
        m = f"-m{self.m}" if self.method in ("stablerep", "stablerep_plus") else ""
        return f"{self.method}-{self.data}-l{self.l}{m}-s{self.seed}"

    @property
    def group(self) -> str:
        """The run without its seed: runs of one group are averaged in the tables."""
        return self.run_id.rsplit("-s", 1)[0]


def normalise(method: str, data: str, l: int, m: int, seed: int) -> RunSpec:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {list(METHODS)}")
    if data == "real":
        l = 1
    if method in ("simclr", "clip"):
        m = 1
    return RunSpec(method, data, int(l), int(m), int(seed))


def expand(cfg: DictConfig) -> list[RunSpec]:
    """Every run of the sweep, in a fixed order. No grids: the single run ``train.*`` describes."""
    t = cfg.train
    grids = list(cfg.sweep.grids) or [OmegaConf.create({"method": None, "data": None, "l": None, "m": None})]
    runs: dict[str, RunSpec] = {}
    for grid in grids:
        axes = [grid.method or [t.method], grid.data or [t.data], grid.l or [t.l], grid.m or [t.m], cfg.sweep.seeds]
        for method, data, l, m, seed in itertools.product(*axes):
            spec = normalise(method, data, l, m, seed)
            runs.setdefault(spec.run_id, spec)
    specs = list(runs.values())
    check_sources(cfg, specs)
    return specs


def check_sources(cfg: DictConfig, specs: list[RunSpec]) -> None:
    """Every synthetic data source must be generated, with enough images per caption."""
    scales = {float(w) for w in cfg.generation.guidance_scales}
    for spec in specs:
        if spec.data != "real" and float(spec.data[1:]) not in scales:
            raise ValueError(f"run {spec.run_id} trains on {spec.data} but config key 'generation.guidance_scales' "
                             f"is {sorted(scales)}")
        if spec.data != "real" and spec.l > cfg.generation.images_per_caption:
            raise ValueError(f"run {spec.run_id} uses l = {spec.l} images per caption but config key "
                             f"'generation.images_per_caption' is {cfg.generation.images_per_caption}")


def find(cfg: DictConfig, run_id: str) -> RunSpec:
    specs = {s.run_id: s for s in expand(cfg)}
    if run_id not in specs:
        raise ValueError(f"run {run_id!r} is not in the sweep; runs: {', '.join(specs)}")
    return specs[run_id]


def run_output_dir(cfg: DictConfig, spec: RunSpec) -> Path:
    return run_dir(cfg, "runs", spec.run_id)


def run_config(cfg: DictConfig, spec: RunSpec) -> DictConfig:
    """The config of one run: ``train.*`` set from the spec, its own output folder."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.train.method, cfg.train.data, cfg.train.l, cfg.train.m, cfg.train.seed = (
        spec.method, spec.data, spec.l, spec.m, spec.seed)
    cfg.train.output_dir = str(run_output_dir(cfg, spec))
    return cfg


def sweep_key(cfg: DictConfig) -> str:
    return section_hash(cfg, "sweep", "train", "eval", "generation")


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


def run_one(cfg: DictConfig, run_id: str) -> dict[str, Path]:
    """Train and evaluate one run of the sweep, as an MLflow child run; writes ``metrics.json``."""
    import mlflow

    from synrep.evaluation import evaluate
    from synrep.learning import trainer as train
    from synrep.fileio import write_json
    from synrep.tracking import mlflow_run

    from synrep.learning import distributed

    spec = find(cfg, run_id)
    rcfg = run_config(cfg, spec)
    out = Path(rcfg.train.output_dir)
    if not distributed.detect().is_main:
        # other ranks of a multi-process run only train; rank 0 evaluates and logs
        train.train(rcfg)
        return {}
    parent = parent_run_id(cfg)
    tags = {"synrep.run": spec.run_id, "synrep.group": spec.group, **{f"synrep.{k}": str(v) for k, v in asdict(spec).items()}}
    with mlflow_run(rcfg, "sweep_run", sections=("train", "eval"), run_name=spec.run_id, parent_run_id=parent,
                    tags=tags):
        summary = train.train(rcfg)
        metrics = evaluate.evaluate_run(rcfg)
        flat = evaluate.flat_metrics(metrics)
        mlflow.log_metrics(flat | {"train_seconds": summary["seconds"]})
        record = {"run": spec.run_id, "group": spec.group, **asdict(spec), **flat,
                  "train_seconds": summary["seconds"], "steps": summary["plan"]["steps"],
                  "final_loss": summary["final_loss"], "details": metrics}
        save_resolved(rcfg, out)
        path = write_json(out / "metrics.json", record)
        mlflow.log_artifact(str(path))
    return {"metrics": path, "model": out / "model.pt"}


def list_runs(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep sweep``: print the runs the sweep expands to."""
    specs = expand(cfg)
    for spec in specs:
        print(spec.run_id)
    print(f"{len(specs)} runs", flush=True)
    return {}
