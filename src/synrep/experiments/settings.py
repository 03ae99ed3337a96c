"""Config sections of experiments: the sweep, its launch on a cluster and the cost plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig

from synrep.generation.settings import check_data_source
from synrep.settings import ConfigError, section_check, setting
from synrep.training_methods import METHODS


@dataclass
class SweepGrid:
    """One block of a sweep: the cartesian product of its lists (null: the train.* value)."""

    method: Optional[list[str]] = setting(None, "Training methods", choices=METHODS)
    data: Optional[list[str]] = setting(None, "Data sources: real or names of sources")
    l: Optional[list[int]] = setting(None, "Images per caption used", gt=0)
    m: Optional[list[int]] = setting(None, "Images per caption in a batch row", gt=0)
    budget: Optional[list[int]] = setting(
        None, "Generation budgets T in images (train.image_budget): a run trains on the first T // l captions", gt=0)


@section_check(SweepGrid)
def check_grid(grid: DictConfig, key: str, cfg: DictConfig) -> None:
    for name in ("method", "data", "l", "m", "budget"):
        values = grid[name]
        if values is not None and len(values) == 0:
            raise ConfigError(f"config key '{key}.{name}': empty list (use null for the train.* value)")
    for j, data in enumerate(grid.data or []):
        check_data_source(cfg, data, f"{key}.data[{j}]")


@dataclass
class SweepConfig:
    """The ablation grid: every run of every block, for each seed."""

    seeds: list[int] = setting([0, 1, 2], "Training seeds: each run is trained once per seed")
    grids: list[SweepGrid] = setting(
        [SweepGrid(method=["stablerep", "stablerep_plus"], data=["w2"]),  # l = 4, m = 4
         SweepGrid(method=["simclr", "clip"], data=["w2"], l=[1]),  # one image per caption, as the paper
         SweepGrid(method=["simclr", "clip"], data=["real"])],  # real vs synthetic
        "The blocks of runs; the default: StableRep against SimCLR and CLIP on the same synthetic images and on "
        "real ones, and with language (StableRep+)")
    baselines: bool = setting(True, "Also evaluate a randomly initialised encoder and raw pixels (no training)")
    runs_per_job: int = setting(
        6, "Sweep runs trained one after another in one process (one Snakemake job), per seed: a toy run takes "
        "seconds, and a new process pays several of them to import torch, timm and MLflow. Each run keeps its own "
        "folder, metrics.json and MLflow run; 1 (a job per run) suits a cluster", gt=0)


@section_check(SweepConfig)
def check_seeds(sweep: DictConfig, key: str, cfg: DictConfig) -> None:
    if not sweep.seeds:
        raise ConfigError(f"config key '{key}.seeds': at least one seed")


@dataclass
class LaunchConfig:
    """``python -m synrep launch``: the sweep through submitit (SLURM job arrays, or local processes)."""

    cluster: Optional[str] = setting(None, "null: submitit's auto-detection (SLURM whenever srun is on PATH)",
                                     choices=("slurm", "local", "debug"))
    folder: str = setting("${paths.results_dir}/${name}/submitit", "submitit's folder (job scripts and logs)")
    partition: Optional[str] = setting(None, "SLURM partition")
    account: Optional[str] = setting(None, "SLURM account")
    timeout_min: int = setting(240, "Time limit of a job in minutes", gt=0)
    nodes: int = setting(1, "Nodes per run", gt=0)
    tasks_per_node: int = setting(1, "> 1: DDP over srun tasks (train() reads SLURM's environment)", gt=0)
    cpus_per_task: Optional[int] = setting(None, "CPUs per task; null: threads")
    gpus_per_node: int = setting(0, "GPUs per node")
    mem_gb: int = setting(16, "Memory per node in GB", gt=0)
    array_parallelism: int = setting(32, "Jobs of the array running at once")
    only_missing: bool = setting(True, "Skip runs whose metrics.json exists")
    wait: bool = setting(True, "Wait for the array, then write the report")


@dataclass
class PlanConfig:
    """``python -m synrep plan``: the GPU-hours a config will cost."""

    captions: Optional[int] = setting(None, "Deduplicated captions; null: counted from the captions step's output")
    seconds_per_image: float = setting(
        0.8, "One generated image on one GPU (StableRep reports, for SD v1.5, 50 DDIM steps, 512 px: 0.8 s on an A100, "
        "2.2 s on a V100); measure yours with benchmarks/generation_speed.py")
    seconds_per_train_step: Optional[float] = setting(
        None, "One training step on launch.nodes x launch.gpus_per_node GPUs; null: training not estimated (measure "
        "with benchmarks/train_step.py)")
    seconds_per_eval_image: Optional[float] = setting(
        None, "One image through the frozen encoder (forward only) on one GPU; null: evaluation not estimated "
        "(benchmarks/train_step.py prints it beside the training step)")
    eval_train_images: Optional[int] = setting(
        None, "Images of the evaluation set's train split (the probe's); null: evaluation not estimated (ImageNet-1k: "
        "1,281,167)")
    eval_other_images: Optional[int] = setting(
        None, "Images of the evaluation set's other splits; null: evaluation not estimated (ImageNet-1k: 50,000)")
