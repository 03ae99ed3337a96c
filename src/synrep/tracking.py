"""MLflow tracking: a SQLite store under the results directory, one experiment per config name.

MLflow 3 rejects the plain file store, so the default URI is ``sqlite:///<abs results>/mlflow.db``
and artifacts go to ``<results>/mlartifacts/<experiment>``. Browse with
``mlflow ui --backend-store-uri sqlite:///results/mlflow.db``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig

from synrep.config import to_dict


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
    """Create (or find) the experiment for ``cfg.name``; safe when several jobs race on it."""
    import mlflow

    _quiet()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    client = mlflow.MlflowClient()
    artifacts = (Path(cfg.paths.results_dir).resolve() / "mlartifacts" / cfg.name).as_uri()
    for attempt in range(10):
        experiment = client.get_experiment_by_name(cfg.name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(cfg.name, artifact_location=artifacts)
        except Exception:  # another job created it first, or SQLite was locked
            time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not create MLflow experiment {cfg.name!r} at {tracking_uri(cfg)}")


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), sub))
        return out
    return {prefix: value}


@contextlib.contextmanager
def mlflow_run(
    cfg: DictConfig,
    step: str,
    *,
    sections: tuple[str, ...] = (),
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """Start an MLflow run for a step, logging the config sections it depends on as params."""
    import mlflow

    experiment_id = ensure_experiment(cfg)
    all_tags = {"synrep.step": step, "synrep.config_name": cfg.name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name or step, tags=all_tags, nested=parent_run_id is not None
    ) as run:
        params = {}
        for section in sections:
            params.update(flatten(section, to_dict(cfg[section]) if section in cfg else None))
        # MLflow caps param values at 6000 characters
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        yield run
