"""What every ``*_quality`` step does around its own measurement: the judge at the start, and at the
end its findings written into its folder (tables, json, plots, image grids), the resolved config
beside them, and an MLflow run of the step with the findings' metrics and files. Each study module
holds only its measurement and its summary (the files and metrics this writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig

from synrep.evaluation.attribute_classifier import judge
from synrep.evaluation.small_classifier import SmallClassifier
from synrep.fileio import atomic_path, write_json, write_text
from synrep.settings import save_resolved
from synrep.tracking import mlflow_run

# a file's content, by kind: a table (csv), text (markdown), a dict (json), a uint8 image (png), or a
# function that draws into the path (a plot)
Content = Union[pl.DataFrame, str, dict, np.ndarray, Callable[[Path], None]]


def load_judge(cfg: DictConfig) -> tuple[SmallClassifier, dict[str, float], str]:
    """The configured threads, and the judge (attribute_classifier.judge), saying where it came from."""
    torch.set_num_threads(cfg.threads)
    classifier, ceiling, origin = judge(cfg)
    print(f"attribute classifier: {origin}", flush=True)
    return classifier, ceiling, origin


def write(path: Path, content: Content) -> Path:
    """Write one finding into ``path`` by its kind (``Content``)."""
    if isinstance(content, pl.DataFrame):
        with atomic_path(path) as tmp:
            content.write_csv(tmp)
    elif isinstance(content, str):
        write_text(path, content)
    elif isinstance(content, dict):
        write_json(path, content)
    elif isinstance(content, np.ndarray):
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(content).save(tmp, format="PNG")
    else:
        content(path)
    return path


def report(cfg: DictConfig, out: Path, files: dict[str, tuple[str, Content]], step: str, sections: tuple[str, ...],
           metrics: list[tuple[dict[str, float], int | None]], artifact_folders: dict[str, str] | None = None
           ) -> dict[str, Path]:
    """Write ``files`` (output key -> (file name, content)) into ``out``, in order, and the resolved
    config beside them; then log the MLflow run of ``step`` (params: the config's ``sections``):
    each of ``metrics`` (values, MLflow step or None) and each file, under its
    ``artifact_folders`` entry if it has one. Returns output key -> path."""
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    outputs = {key: write(out / name, content) for key, (name, content) in files.items()}
    save_resolved(cfg, out)
    with mlflow_run(cfg, step, sections=sections):
        for values, at in metrics:
            mlflow.log_metrics(values, step=at)
        for key, path in outputs.items():
            mlflow.log_artifact(str(path), artifact_path=(artifact_folders or {}).get(key))
    return outputs
