"""Frozen-feature evaluation of a trained run (``eval.json``), and two no-training baselines.

Every run gets a linear probe per target (the learning rate, and with ``eval.probe_eval_every`` the
epoch, chosen on the selection split and the head reported on test, unlike the official code, which
selects and reports on the same split), few-shot on the first target, and zero-shot where the
encoder has a text tower. Baselines: a randomly initialised encoder of the same
architecture, and raw pixels. The pieces: features, linear_probe, fewshot, zeroshot.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from synrep.config import digest, run_dir, save_resolved
from synrep.evaluation.features import SPLITS, EvalData, cached_features, extract_features, load_eval_data
from synrep.evaluation.fewshot import few_shot
from synrep.evaluation.linear_probe import linear_probe, linear_probe_augmented
from synrep.evaluation.zeroshot import zero_shot
from synrep.fileio import write_json


def evaluate_features(features: dict[str, np.ndarray], data: EvalData, cfg: DictConfig, seed: int = 0,
                      model=None, encode=None) -> dict:
    """Every evaluation of one set of features; ``model`` (with a text tower) adds zero-shot;
    ``encode`` (the frozen encoder) trains the probe on augmented crops when ``eval.probe_augment``."""
    e = cfg.eval
    metrics: dict = {"linear_probe": {}, "few_shot": {}, "zero_shot": {}}
    clock = Clock()
    for target in data.labels:
        labels = data.labels[target]
        common = dict(n_classes=len(data.class_names[target]), lrs=list(e.probe_lrs), epochs=e.probe_epochs,
                      batch_size=e.probe_batch_size, batchnorm=e.probe_batchnorm, seed=seed,
                      eval_every=e.probe_eval_every)
        if e.probe_augment and encode is not None:
            metrics["linear_probe"][target] = linear_probe_augmented(
                encode, data.train_images, cfg.train.image_size, features, labels, **common)
        else:
            metrics["linear_probe"][target] = linear_probe(features, labels, **common)
    clock.lap("probe")
    primary = next(iter(data.labels))
    metrics["few_shot"][primary] = few_shot(features["test"], data.labels[primary]["test"], e.fewshot_ways,
                                            e.fewshot_shots, e.fewshot_queries, e.fewshot_episodes, seed=seed,
                                            classifier=e.fewshot_classifier)
    clock.lap("few_shot")
    if model is not None and getattr(model, "has_text", False) and e.zero_shot:
        for target, prompts in data.prompts.items():
            metrics["zero_shot"][target] = zero_shot(model, cfg, features["test"], data.labels[target]["test"], prompts)
        clock.lap("zero_shot")
    metrics["seconds"] = clock.seconds
    return metrics


class Clock:
    """Seconds per named part, for the time split of a run (benchmarks/sweep_run.py)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 3)
        self._last = now


def flat_metrics(metrics: dict) -> dict[str, float]:
    """{"probe_shape": .., "fewshot_shape": .., "fewshot_shape_ci95": .., "zeroshot_shape": ..}"""
    flat = {}
    for target, r in metrics["linear_probe"].items():
        flat[f"probe_{target}"] = r["test"]
        flat[f"probe_{target}_val"] = r["val"]
        if r.get("eval_every") or r.get("epochs_compared", 1) > 1:  # eval.probe_eval_every: the epoch was chosen too
            flat[f"probe_{target}_epoch"] = r["epoch"]
    for target, r in metrics["few_shot"].items():
        flat[f"fewshot_{target}"] = r["mean"]
        flat[f"fewshot_{target}_ci95"] = r["ci95"]
    for target, acc in metrics["zero_shot"].items():
        flat[f"zeroshot_{target}"] = acc
    return flat


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def feature_splits(cfg: DictConfig) -> tuple[str, ...]:
    """The splits whose features are extracted once: all three, or only val and test when the probe
    trains on augmented crops through the encoder (``eval.probe_augment``)."""
    return ("val", "test") if cfg.eval.probe_augment else SPLITS


def features_key(cfg: DictConfig, weights: Path) -> str:
    """What cached features depend on: the weights, the data set, its split and the evaluation crop."""
    e = cfg.eval
    setting = {"dataset": e.dataset, "root": str(e.root), "holdout": e.holdout, "crop_pct": e.crop_pct,
               "image_size": cfg.train.image_size, "splits": list(feature_splits(cfg))}
    return f"{_fingerprint(weights)}:{digest(setting)}"


def evaluate_run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict:
    """Evaluate the trained encoder in a run folder; writes ``eval.json`` there."""
    from synrep.learning.trainer import load_trained

    out = Path(output_dir or cfg.train.output_dir)
    torch.set_num_threads(cfg.threads)
    clock = Clock()
    model = load_trained(cfg, out)
    data = load_eval_data(cfg)
    clock.lap("load")
    features = cached_features(out / "features.npz", features_key(cfg, out / "model.pt"),
                               lambda: extract_features(model.features, data, cfg, desc=out.name,
                                                        splits=feature_splits(cfg)))
    clock.lap("features")
    metrics = evaluate_features(features, data, cfg, seed=cfg.train.seed, model=model, encode=model.features)
    metrics["seconds"] = clock.seconds | metrics["seconds"]
    write_json(out / "eval.json", metrics)
    return metrics


def baselines(cfg: DictConfig, seed: int, data: EvalData | None = None) -> dict[str, dict]:
    """Random-init encoder (train.encoder, seeded) and raw pixels (pooled to ``eval.raw_pixels_size``),
    evaluated like trained runs."""
    from synrep.learning.trainer import build_model

    data = data or load_eval_data(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    random_features = extract_features(model.features, data, cfg, desc=f"random init s{seed}",
                                       splits=feature_splits(cfg))
    results = {"random_init": evaluate_features(random_features, data, cfg, seed=seed, encode=model.features)}
    if cfg.eval.raw_pixels_size is not None:
        pixel_features = extract_features(lambda x: raw_pixels(x, cfg.eval.raw_pixels_size), data, cfg,
                                          desc="raw pixels")
        results["raw_pixels"] = evaluate_features(pixel_features, data, cfg, seed=seed)
    return results


def raw_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images as flat vectors, average-pooled to at most ``size`` px a side."""
    if images.shape[-1] > size or images.shape[-2] > size:
        images = torch.nn.functional.adaptive_avg_pool2d(images, (min(size, images.shape[-2]),
                                                                  min(size, images.shape[-1])))
    return images.flatten(1)


def baselines_path(cfg: DictConfig, seed: int) -> Path:
    return run_dir(cfg, "baselines", f"s{int(seed)}", "metrics.json")


def baselines_run(cfg: DictConfig, seed: int | None = None) -> dict[str, Path]:
    """``python -m synrep baselines [--seed N]``: both baselines for one seed, or every sweep seed;
    one file per seed, so that adding a seed to the sweep computes only its own."""
    import mlflow

    from synrep.tracking import mlflow_run

    torch.set_num_threads(cfg.threads)
    data = load_eval_data(cfg)
    outputs = {}
    for s in [seed] if seed is not None else list(cfg.sweep.seeds):
        rows = []
        with mlflow_run(cfg, "baselines", sections=("eval",), run_name=f"baselines s{int(s)}"):
            for name, metrics in baselines(cfg, s, data).items():
                flat = flat_metrics(metrics)
                rows.append({"baseline": name, "seed": int(s), "encoder": cfg.train.encoder, **flat,
                             "details": metrics})
                mlflow.log_metrics({f"{name}.{k}": v for k, v in flat.items()})
        path = baselines_path(cfg, s)
        save_resolved(cfg, path.parent)
        outputs[f"s{int(s)}"] = write_json(path, {"baselines": rows})
    return outputs


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep evaluate``: the run in ``train.output_dir``."""
    from synrep.tracking import mlflow_run

    with mlflow_run(cfg, "evaluate", sections=("eval",), run_name=f"eval {Path(cfg.train.output_dir).name}"):
        import mlflow

        metrics = evaluate_run(cfg)
        mlflow.log_metrics(flat_metrics(metrics))
    return {"eval": Path(cfg.train.output_dir) / "eval.json"}
