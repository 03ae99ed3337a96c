"""Tracking a job: its MLflow runs, and its progress on a terminal or in a log.

MLflow: a SQLite store under the results directory, one experiment per config name.

MLflow 3 rejects the plain file store, so the default URI is ``sqlite:///<abs results>/mlflow.db``
and artifacts go to ``<results>/mlartifacts/<experiment>``. Browse with
``mlflow ui --backend-store-uri sqlite:///results/mlflow.db`` and open ``runs_page`` (printed when a
sweep's parent run is created).

The experiment's top level holds what a user compares: the sweep's runs (axes as params, probe
metrics), the sweep's own run (the ablation tables and plots as artifacts), and one run per config
under which every pipeline step's run (generate, captions, baselines ...) is nested, folded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig

from synrep.settings import to_dict

# MLflow 3's UI reads the experiment's kind from this tag ("Machine learning" rather than "GenAI
# apps & agents"); 3.17 decides by its own workflow switch instead, which ``runs_page`` sets.
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"
# the UI's shared views: an experiment tag ``mlflow.sharedViewState.<key>`` holding the runs
# table's filter and columns, opened by ``?viewStateShareKey=<key>``
VIEW_TAG = "mlflow.sharedViewState."
SWEEP_VIEW = "sweep"
AXES = ("method", "source", "w", "w_set", "l", "m", "seed", "budget")


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.paths.mlflow_uri:
        return cfg.paths.mlflow_uri
    db = Path(cfg.paths.results_dir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _quiet() -> None:
    # alembic prints its schema migrations on the first use of a new SQLite store
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def ensure_experiment(cfg: DictConfig) -> str:
    """Create (or find) the experiment for ``cfg.name``, of the model-training kind, with the run
    its steps nest under; safe when several jobs race on it."""
    import mlflow

    _quiet()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    client = mlflow.MlflowClient()
    artifacts = (Path(cfg.paths.results_dir).resolve() / "mlartifacts" / cfg.name).as_uri()
    for attempt in range(10):
        experiment = client.get_experiment_by_name(cfg.name)
        if experiment is None:
            try:
                client.create_experiment(cfg.name, artifact_location=artifacts, tags={KIND_TAG: KIND})
            except Exception:  # another job created it first, or SQLite was locked
                time.sleep(0.2 * (attempt + 1))
            continue
        # Snakemake's onstart and `launch` call this before the jobs fan out, so that the jobs
        # find the steps run rather than race on making it
        steps_run_id(cfg, experiment.experiment_id)
        return experiment.experiment_id
    raise RuntimeError(f"could not create MLflow experiment {cfg.name!r} at {tracking_uri(cfg)}")


def steps_run_id(cfg: DictConfig, experiment_id: str) -> str:
    """The run the pipeline's step runs nest under (one per experiment): found by its tag, else
    created."""
    import mlflow

    key = (tracking_uri(cfg), experiment_id)
    if key not in _steps_runs:
        client = mlflow.MlflowClient(key[0])
        found = client.search_runs([experiment_id], filter_string="tags.`synrep.step` = 'steps'",
                                   order_by=["attributes.start_time ASC"], max_results=1)
        _steps_runs[key] = found[0].info.run_id if found else client.create_run(
            experiment_id, run_name=f"steps {cfg.name}", start_time=_process_start_ms(),
            tags={"synrep.step": "steps", "synrep.config_name": cfg.name}).info.run_id
    return _steps_runs[key]


# (tracking URI, experiment id) -> the steps run, looked up once per process
_steps_runs: dict[tuple[str, str], str] = {}


def sweep_view(probe_metrics: list[str]) -> dict:
    """The runs table as the sweep is read: only the sweep's runs, their axes and probe metrics as
    columns, in that order (the UI's column keys: ``params.`name```, ``metrics.`name```)."""
    columns = [f"params.`{axis}`" for axis in AXES] + [f"metrics.`{m}`" for m in probe_metrics]
    return {"searchFilter": "tags.`synrep.step` = 'sweep_run'",
            "orderByKey": "attributes.start_time", "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": columns}


def set_sweep_view(cfg: DictConfig, experiment_id: str) -> None:
    import mlflow

    probes = [f"probe_{target}" for target in cfg.eval.targets]
    client = mlflow.MlflowClient(tracking_uri(cfg))
    client.set_experiment_tag(experiment_id, VIEW_TAG + SWEEP_VIEW, json.dumps(sweep_view(probes)))


def runs_page(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs page in the model-training view, on the sweep's view."""
    return (f"{server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={SWEEP_VIEW}")


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


_IMPORTED_MS = int(time.time() * 1000)


def _process_start_ms() -> int:
    try:
        import psutil
    except ImportError:  # not a dependency of the package: this module's import is close to the start
        return _IMPORTED_MS
    return int(psutil.Process().create_time() * 1000)


# when this process's previous run ended: a second run of one job starts there, not at the job's start
_last_end_ms: int | None = None


@contextlib.contextmanager
def mlflow_run(
    cfg: DictConfig,
    step: str,
    *,
    sections: tuple[str, ...] = (),
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    top_level: bool = False,
    start_ms: int | None = None,
) -> Iterator[Any]:
    """Start an MLflow run for a step, logging the config sections it depends on as params.

    The run starts when the job (this process) started, or where its previous run ended, unless
    ``start_ms`` says otherwise, so that its duration is the job's, not the logging's. It nests
    under ``parent_run_id``, else under the experiment's steps run unless ``top_level``."""
    import mlflow

    global _last_end_ms
    experiment_id = ensure_experiment(cfg)
    steps = parent_run_id is None and not top_level
    if steps:
        parent_run_id = steps_run_id(cfg, experiment_id)
    all_tags = {"synrep.step": step, "synrep.config_name": cfg.name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if start_ms is None:
        start_ms = _last_end_ms if _last_end_ms is not None else _process_start_ms()
    client = mlflow.MlflowClient()
    created = client.create_run(experiment_id, start_time=start_ms, tags=all_tags, run_name=run_name or step)
    try:
        with mlflow.start_run(run_id=created.info.run_id, nested=mlflow.active_run() is not None) as run:
            params = {}
            for section in sections:
                params.update(flatten(section, to_dict(cfg[section]) if section in cfg else None))
            # MLflow caps param values at 6000 characters
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            yield run
        if steps:  # the steps run ends with its latest step
            client.set_terminated(parent_run_id, "FINISHED")
    finally:
        _last_end_ms = int(time.time() * 1000)


# a log gets a line this often (seconds); a terminal redraws its bar in place
LOG_INTERVAL = 30.0


class _Lines:
    """A log file as tqdm's output: each redraw becomes a line of its own, not a carriage return
    over the last (a Snakemake log is a file, and ``tail -f`` shows lines)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:  # tqdm clears a bar by writing blanks
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, *, interval: float = 5.0, log_interval: float = LOG_INTERVAL, disable: bool = False,
             stream=None, **kwargs):
    """tqdm for a long loop: a bar redrawn every ``interval`` seconds on a terminal; elsewhere (a
    job's log) one line every ``log_interval`` seconds, plus the first and the last. A transient
    bar (``leave=False``) shows in a log only once it has lasted an interval, and then keeps its
    last line."""
    from tqdm.auto import tqdm

    stream = stream if stream is not None else sys.stderr
    if disable:
        return tqdm(iterable, disable=True, **kwargs)
    if stream.isatty():
        return tqdm(iterable, mininterval=interval, file=stream, disable=False, **kwargs)
    if kwargs.get("leave") is False:
        kwargs.update(leave=True, delay=log_interval)
    return tqdm(iterable, mininterval=log_interval, file=_Lines(stream), ascii=True, disable=False, **kwargs)
