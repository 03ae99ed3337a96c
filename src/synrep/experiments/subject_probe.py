"""Does an encoder tell DreamBooth's subject from other rings? A fine-grained linear probe on real images.

Four classes of real toy renders (``toy_subject.RING_VARIANTS``): the subject (a notched two-tone ring)
and its near misses (the same ring without the notch, in one tone, and a plain ring of the world),
each in the world's random contexts (background, size, position, rotation, clutter). The linear
probe (``linear_probe.linear_probe``: the learning rate chosen on ``val``) is trained on frozen
features of ``images`` renders per class and reports accuracy on as many held-out ``test`` renders
(chance 0.25). The renders come from their own seeds, apart
from DreamBooth's instance images and its quality references.

The runs compared are the sweep's runs of ``method`` on each of ``sources`` (e.g. StableRep on w2,
on w2 with the subject's DreamBooth images added, and with as many plain-ring images added): one row
per source, mean and 95% t-interval over the sweep's seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig

from synrep.data import toy_subject
from synrep.fileio import write_json, write_text
from synrep.settings import ConfigError, run_dir, save_resolved
from synrep.tables import markdown_table, mean_ci
from synrep.tracking import mlflow_run

SPLITS = ("train", "val", "test")


def probe_images(cfg: DictConfig, n: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """{split: uint8 [4n, H, W, 3]} and {split: labels (index in RING_VARIANTS)}, n renders per class."""
    images, labels = {}, {}
    for k, split in enumerate(SPLITS):
        parts = [toy_subject.render_subject(cfg, n, [int(seed), k, c], variant=variant)[0]
                 for c, variant in enumerate(toy_subject.RING_VARIANTS)]
        images[split] = np.concatenate(parts)
        labels[split] = np.repeat(np.arange(len(parts)), n)
    return images, labels


def encoder_features(run_folder: Path, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Unit-norm features of a trained run's backbone (the evaluation's normalisation)."""
    from synrep.evaluation.dreambooth_quality import RunEncoder

    encoder = RunEncoder(run_folder)
    return {split: encoder(x).numpy() for split, x in images.items()}


def probe_runs(cfg: DictConfig) -> dict[str, list[Path]]:
    """{source: the run folders of ``dreambooth.probe.method`` on it, one per seed}."""
    from synrep.experiments.sweep import expand

    p = cfg.dreambooth.probe
    runs: dict[str, list[Path]] = {source: [] for source in p.sources}
    for spec in expand(cfg):
        if spec.method == p.method and spec.data in runs:
            runs[spec.data].append(run_dir(cfg, "runs", spec.run_id))
    missing = [source for source, folders in runs.items() if not folders]
    if missing:
        raise ConfigError(f"config key 'dreambooth.probe.sources': no {p.method} run of the sweep trains on {missing}")
    return runs


def measure(cfg: DictConfig) -> pl.DataFrame:
    from synrep.evaluation.linear_probe import linear_probe

    p, e = cfg.dreambooth.probe, cfg.eval
    images, labels = probe_images(cfg, p.images, p.seed)
    rows = []
    for source, folders in probe_runs(cfg).items():
        for folder in folders:
            if not (folder / "model.pt").exists():
                raise FileNotFoundError(f"{folder / 'model.pt'} missing: train the sweep's runs first")
            features = encoder_features(folder, images)
            result = linear_probe(features, labels, n_classes=len(toy_subject.RING_VARIANTS), lrs=list(e.probe_lrs),
                                  epochs=e.probe_epochs, batch_size=e.probe_batch_size, batchnorm=False, seed=p.seed)
            rows.append({"source": source, "run": folder.name, "accuracy": float(result["test"]),
                         "lr": float(result["lr"])})
    return pl.DataFrame(rows)


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep subject_probe``: the table and per-run rows into ``dreambooth.probe.output_dir``."""
    import mlflow

    torch.set_num_threads(cfg.threads)
    p = cfg.dreambooth.probe
    rows = measure(cfg)
    table = mean_ci(rows, ["source"], "accuracy")
    header = (f"Subject vs its near-miss rings (4 classes, chance 0.25): linear probe on real renders, {p.images} a "
              f"class and split, {p.method} runs by source, test accuracy, mean ± 95% CI over seeds\n\n")
    out = Path(p.output_dir)
    shown = table.select("source", pl.col("n").alias("seeds"), pl.col("cell").alias("accuracy"))
    outputs = {"table": write_text(out / "subject_probe.md", header + markdown_table(shown)),
               "json": write_json(out / "subject_probe.json",
                                  {"summary": table.drop("cell").to_dicts(), "runs": rows.to_dicts()})}
    save_resolved(cfg, out)
    with mlflow_run(cfg, "subject_probe", sections=("dreambooth", "eval")):
        mlflow.log_metrics({f"{row['source']}.accuracy": row["mean"] for row in table.iter_rows(named=True)})
        for path in outputs.values():
            mlflow.log_artifact(str(path))
    return outputs
