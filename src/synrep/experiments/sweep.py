"""Sweep expansion: one function turns the sweep config into runs, for Snakemake and submitit alike.

A run is (method, data source, l, m, generation budget T, seed). ``sweep.grids`` is a list of blocks; each block is the
cartesian product of its lists, and a missing list takes the ``train.*`` value. Runs are
normalised (a method with one image per row has m = 1; real data holds one image per caption:
l = 1) and deduplicated, keeping the first occurrence, so blocks may overlap.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synrep.generation.alignment_filter import fewest_kept, filter_spec
from synrep.generation.sources import refresh_reading, source_spec
from synrep.learning import methods
from synrep.learning.identity import training_identity
from synrep.learning.settings import merge_method_settings
from synrep.settings import ConfigError, InputError, run_dir, to_dict


@dataclass(frozen=True)
class RunSpec:
    method: str
    data: str  # a source name, or "real"
    l: int
    m: int
    seed: int
    budget: int | None = None  # T images: the run trains on the first T // l captions

    @property
    def run_id(self) -> str:
        m = f"-m{self.m}" if methods.get(self.method).multi_positive else ""
        budget = f"-T{self.budget}" if self.budget is not None else ""
        return f"{self.method}-{self.data}-l{self.l}{m}{budget}-s{self.seed}"

    @property
    def group(self) -> str:
        """The run without its seed: runs of one group are averaged in the tables."""
        return self.run_id.rsplit("-s", 1)[0]


def canonical_run(method: str, data: str, l: int, m: int, seed: int, budget: int | None = None) -> RunSpec:
    if data == "real":
        l = 1
    if not methods.get(method).multi_positive:
        m = 1
    return RunSpec(method, data, int(l), int(m), int(seed), None if budget is None else int(budget))


def expand(cfg: DictConfig) -> list[RunSpec]:
    """Every run of the sweep, in a fixed order. No grids: the single run ``train.*`` describes."""
    t = cfg.train
    grids = list(cfg.sweep.grids) or [OmegaConf.create({"method": None, "data": None, "l": None, "m": None,
                                                          "budget": None})]
    runs: dict[str, RunSpec] = {}
    for grid in grids:
        axes = [grid.method or [t.method], grid.data or [t.data], grid.l or [t.l], grid.m or [t.m], cfg.sweep.seeds,
                grid.get("budget") or [t.image_budget]]
        for method, data, l, m, seed, budget in itertools.product(*axes):
            spec = canonical_run(method, data, l, m, seed, budget)
            runs.setdefault(spec.run_id, spec)
    specs = list(runs.values())
    check_sources(cfg, specs)
    return specs


def job_batches(cfg: DictConfig, specs: list[RunSpec] | None = None) -> dict[str, list[RunSpec]]:
    """The runs of each job (``sweep.runs_per_job``): a seed's runs in sweep order, in chunks, named
    ``s<seed>`` (or ``s<seed>_<i>`` when a seed takes several jobs; a job of one run is named by the
    run, with ``_`` for ``-``). Per seed, so that adding a seed
    adds jobs and leaves the others as they are."""
    specs = expand(cfg) if specs is None else specs
    size = int(cfg.sweep.runs_per_job)
    batches: dict[str, list[RunSpec]] = {}
    for seed in dict.fromkeys(s.seed for s in specs):
        runs = [s for s in specs if s.seed == seed]
        chunks = [runs[i:i + size] for i in range(0, len(runs), size)]
        label = f"s{seed}".replace("-", "m")  # a rule name: no '-' (a negative seed)
        for i, chunk in enumerate(chunks):
            if size == 1:  # a job per run: named by the run
                batches[re.sub(r"\W", "_", chunk[0].run_id)] = chunk
            else:
                batches[label if len(chunks) == 1 else f"{label}_{i}"] = chunk
    return batches


def check_sources(cfg: DictConfig, specs: list[RunSpec]) -> None:
    """Every synthetic source must store at least the l images a run uses per caption."""
    for spec in specs:
        if spec.data == "real":
            continue
        stored = source_spec(cfg, spec.data)["l"]
        if spec.l > stored:
            raise ConfigError(f"run {spec.run_id} uses l = {spec.l} images per caption but source {spec.data!r} "
                              f"stores {stored} (config key 'sources.{spec.data}.l' or 'generation.images_per_caption')")
        if (reading := refresh_reading(cfg, spec.data)) is not None and spec.l > reading[2]:
            raise ConfigError(f"run {spec.run_id} uses l = {spec.l} images per caption but source {spec.data!r} "
                              f"makes {reading[2]} a round (config key 'sources.{spec.data}.l'; a union of it "
                              "reads every round as one set)")
        if (f := filter_spec(cfg, spec.data)) is not None and spec.l > (kept := fewest_kept(stored, f)):
            raise ConfigError(f"run {spec.run_id} uses l = {spec.l} images per caption but source {spec.data!r} "
                              f"keeps {kept} of its {stored} (config key 'sources.{spec.data}.filter')")


def find(cfg: DictConfig, run_id: str) -> RunSpec:
    specs = {s.run_id: s for s in expand(cfg)}
    if run_id not in specs:
        raise InputError(f"run {run_id!r} is not in the sweep; runs: {', '.join(specs)}")
    return specs[run_id]


def run_output_dir(cfg: DictConfig, spec: RunSpec) -> Path:
    return run_dir(cfg, "runs", spec.run_id)


def run_config(cfg: DictConfig, spec: RunSpec) -> DictConfig:
    """The config of one run: ``train.*`` set from the spec and the method's own settings
    (``train.by_method``), its own output folder."""
    return _as_run(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), spec)


def _as_run(cfg: DictConfig, spec: RunSpec) -> DictConfig:
    """``run_config`` on a resolved copy the caller owns (changed in place: only ``train``)."""
    cfg.train.method, cfg.train.data, cfg.train.l, cfg.train.m, cfg.train.seed, cfg.train.image_budget = (
        spec.method, spec.data, spec.l, spec.m, spec.seed, spec.budget)
    cfg.train.output_dir = str(run_output_dir(cfg, spec))
    return merge_method_settings(cfg)


def run_identities(cfg: DictConfig, specs: list[RunSpec]) -> dict[str, dict]:
    """``run_identity(run_config(cfg, spec))`` of each run, by run id, from one copy of the config
    whose ``train`` section is reset for each run: a whole copy per run takes about 0.1 s, and the
    Snakefile hashes every run of the sweep at every parse (every cluster job's too)."""
    work = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    train = OmegaConf.to_container(work.train)
    identities = {}
    for spec in specs:
        work.train = train
        identities[spec.run_id] = run_identity(_as_run(work, spec))
    return identities


def run_identity(cfg: DictConfig) -> dict:
    """What a run's result depends on: its train and eval sections, the resolved spec of the source
    it trains on, and the toy world or captions it reads. Not the rest of the sweep: adding a seed
    or a grid block leaves every other run's identity, and result, as it is."""
    # the trained model's identity (train, source, captions), plus what evaluation reads
    return {**training_identity(cfg), "eval": to_dict(cfg.eval), "toyworld": to_dict(cfg.toyworld)}


def list_runs(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep sweep``: print the runs the sweep expands to."""
    specs = expand(cfg)
    for spec in specs:
        print(spec.run_id)
    print(f"{len(specs)} runs", flush=True)
    return {}
