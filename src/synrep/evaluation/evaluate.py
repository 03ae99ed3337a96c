"""Frozen-feature evaluation of a trained run (``eval.json``), and two no-training baselines.

Every run gets a linear probe per target (the learning rate, and with ``eval.probe_eval_every`` the
epoch, chosen on the selection split and the head reported on test, unlike the official code, which
selects and reports on the same split), few-shot on the first target, and zero-shot where the
encoder has a text tower. Baselines: a randomly initialised encoder of the same
architecture, and raw pixels. The pieces: features, linear_probe, fewshot, zeroshot.

Evaluation runs on the job's device (``train.device``, ``train.precision``) and, in a job of several
ranks (torchrun, srun), on every rank: each extracts its block of the features (cached on disk per
rank, keyed by what they depend on) and encodes its share of the augmented probe's crops; rank 0
fits the probes and writes the results. Probes save their state every ``train.checkpoint_seconds``
so a requeued evaluation carries on where it stopped, and a finished one (its result beside a
``.key`` file naming what it was computed from) is returned, not redone.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from synrep.evaluation.compositional import compositional_zero_shot
from synrep.evaluation.features import (
    SPLITS,
    EvalData,
    cached_features,
    extract_features,
    load_eval_data,
    normalise_transform,
)
from synrep.evaluation.fewshot import few_shot
from synrep.evaluation.linear_probe import ProbeCheckpoint, linear_probe, linear_probe_augmented
from synrep.evaluation.worst_group import probe_worst_groups
from synrep.evaluation.zeroshot import zero_shot
from synrep.fileio import write_json, write_text
from synrep.settings import digest, run_dir, save_resolved, to_dict
from synrep.tracking import mlflow_run


@dataclass(frozen=True)
class EvalJob:
    """Where evaluation runs: the device and autocast dtype, this process's rank among
    ``world_size``, loader workers, and how often probes save their state."""

    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    rank: int = 0
    world_size: int = 1
    workers: int = 0
    checkpoint_seconds: float = 0.0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def eval_job(cfg: DictConfig) -> EvalJob:
    """The job's device (``train.device``: the GPU of this rank when there is one) and precision
    (``train.precision``), joining the process group the launcher describes; loader workers
    ``train.workers``; probe state saved every ``train.checkpoint_seconds``."""
    from synrep.learning import distributed, trainer

    info = distributed.init_distributed(trainer.resolve_device(cfg.train.device, 0).type)
    device = trainer.resolve_device(cfg.train.device, info.local_rank)
    return EvalJob(device, trainer.autocast_dtype(cfg.train.precision, device), info.rank, info.world_size,
                   int(cfg.train.workers), float(cfg.train.checkpoint_seconds))


def finished(path: Path, key: str) -> dict | None:
    """The result at ``path`` when it was computed for ``key`` (``<path>.key`` says so), else None."""
    import json

    marker = path.with_suffix(".key")
    if path.exists() and marker.exists() and marker.read_text(encoding="utf-8") == key:
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def finish(path: Path, key: str, result: dict) -> Path:
    """Write a result, then the key that makes it final (a crash between the two redoes it)."""
    path.with_suffix(".key").unlink(missing_ok=True)
    write_json(path, result)
    write_text(path.with_suffix(".key"), key)
    return path


def probe_key(cfg: DictConfig, target: str, seed: int) -> str:
    """What a probe's saved state depends on besides its features: the evaluation settings."""
    return digest({"eval": to_dict(cfg.eval), "image_size": cfg.train.image_size, "target": target, "seed": seed})


def evaluate_features(features: dict[str, np.ndarray] | None, data: EvalData, cfg: DictConfig, seed: int = 0,
                      model=None, encode=None, job: EvalJob | None = None, state: Path | None = None,
                      key: str = "", on_epoch=None) -> dict | None:
    """Every evaluation of one set of features; ``model`` (with a text tower) adds zero-shot;
    ``encode`` (the frozen encoder) trains the probe on augmented crops when ``eval.probe_augment``.
    With ``state`` (a folder) each probe saves its state there under ``key`` (the features') and
    resumes from it. In a job of several ranks every rank calls it (``features`` only on rank 0):
    the others encode crops for the augmented probe and return None."""
    e = cfg.eval
    job = job or EvalJob()
    metrics: dict = {"linear_probe": {}, "few_shot": {}, "zero_shot": {}}
    clock = Clock()
    primary = next(iter(data.labels))
    for target in data.labels:
        labels = data.labels[target]
        checkpoint = None
        if state is not None and job.is_main:
            checkpoint = ProbeCheckpoint(Path(state) / f"probe_{target}.pt", f"{key}:{probe_key(cfg, target, seed)}",
                                         job.checkpoint_seconds)
        common = dict(n_classes=len(data.class_names[target]), lrs=list(e.probe_lrs), epochs=e.probe_epochs,
                      batch_size=e.probe_batch_size, batchnorm=e.probe_batchnorm, seed=seed,
                      eval_every=e.probe_eval_every, device=job.device, checkpoint=checkpoint, on_epoch=on_epoch,
                      keep_test_predictions=bool(e.groups) and target == primary)
        if e.probe_augment and encode is not None:
            metrics["linear_probe"][target] = linear_probe_augmented(
                encode, data.train_images, cfg.train.image_size, features, labels, workers=job.workers,
                amp_dtype=job.amp_dtype, normalise=normalise_transform(cfg), rank=job.rank,
                world_size=job.world_size, **common)
        elif job.is_main:
            metrics["linear_probe"][target] = linear_probe(features, labels, **common)
    if not job.is_main:
        return None
    if e.groups:
        metrics["worst_group"] = {primary: probe_worst_groups(metrics["linear_probe"][primary],
                                                              data.labels[primary]["test"], data, e.groups,
                                                              e.group_min_images)}
    clock.lap("probe")
    metrics["few_shot"][primary] = few_shot(features["test"], data.labels[primary]["test"], e.fewshot_ways,
                                            e.fewshot_shots, e.fewshot_queries, e.fewshot_episodes, seed=seed,
                                            classifier=e.fewshot_classifier)
    clock.lap("few_shot")
    if model is not None and getattr(model, "has_text", False) and e.zero_shot:
        for target, prompts in data.prompts.items():
            metrics["zero_shot"][target] = zero_shot(model, cfg, features["test"], data.labels[target]["test"], prompts)
        if cfg.captions.held_out and data.test_attributes:  # pairs no training caption showed together
            metrics["compositional_zero_shot"] = compositional_zero_shot(model, cfg, features["test"],
                                                                         data.test_attributes)
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
    """{"probe_shape": .., "fewshot_shape": .., "fewshot_shape_ci95": .., "zeroshot_shape": ..}, and
    with eval.groups "probe_shape_worst_shape_background", "probe_shape_groupmean_shape_background" ..,
    with captions.held_out "zeroshot_pair_shape_colour_heldout", "zeroshot_pair_shape_colour_seen" .."""
    flat = {}
    for target, r in metrics["linear_probe"].items():
        flat[f"probe_{target}"] = r["test"]
        flat[f"probe_{target}_val"] = r["val"]
        if r.get("eval_every") or r.get("epochs_compared", 1) > 1:  # eval.probe_eval_every: the epoch was chosen too
            flat[f"probe_{target}_epoch"] = r["epoch"]
    for target, by_grouping in metrics.get("worst_group", {}).items():  # eval.groups
        for name, r in by_grouping.items():
            if r["worst"] is not None:  # every group below eval.group_min_images: nothing to log
                flat[f"probe_{target}_worst_{name}"] = r["worst"]
                flat[f"probe_{target}_groupmean_{name}"] = r["mean"]
    for target, r in metrics["few_shot"].items():
        flat[f"fewshot_{target}"] = r["mean"]
        flat[f"fewshot_{target}_ci95"] = r["ci95"]
    for target, acc in metrics["zero_shot"].items():
        flat[f"zeroshot_{target}"] = acc
    for name, r in metrics.get("compositional_zero_shot", {}).items():  # captions.held_out
        for part in ("held_out", "seen"):
            if r[part] is not None:
                flat[f"zeroshot_pair_{name}_{part.replace('_', '')}"] = r[part]
    return flat


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def feature_splits(cfg: DictConfig) -> tuple[str, ...]:
    """The splits whose features are extracted once: all three, or only val and test when the probe
    trains on augmented crops through the encoder (``eval.probe_augment``)."""
    return ("val", "test") if cfg.eval.probe_augment else SPLITS


def data_key(cfg: DictConfig, splits: tuple[str, ...], amp_dtype: torch.dtype | None = None) -> str:
    """What features depend on besides the encoder: the data set, its split, the evaluation crop,
    the splits extracted and the precision they were computed in."""
    e = cfg.eval
    setting = {"dataset": e.dataset, "root": str(e.root), "holdout": e.holdout, "crop_pct": e.crop_pct,
               "image_size": cfg.train.image_size, "splits": list(splits), "precision": str(amp_dtype)}
    return digest(setting)


def features_key(cfg: DictConfig, weights: Path, amp_dtype: torch.dtype | None = None) -> str:
    """What cached features depend on: the weights, the data set, its split, the evaluation crop
    and the precision."""
    return f"{_fingerprint(weights)}:{data_key(cfg, feature_splits(cfg), amp_dtype)}"


def job_features(encode, data: EvalData, cfg: DictConfig, job: EvalJob, splits: tuple[str, ...], desc: str,
                 folder: Path | None = None, key: str = "") -> dict[str, np.ndarray] | None:
    """Features of ``splits`` on the job's device, every rank its block; cached in ``folder`` (for
    ``key``) when given. Rank 0 gets them all, the other ranks None."""
    def compute(split: str) -> np.ndarray:
        return extract_features(encode, data, cfg, desc=desc, splits=(split,), device=job.device,
                                amp_dtype=job.amp_dtype, rank=job.rank, world_size=job.world_size,
                                workers=job.workers)[split]

    if folder is None and job.world_size == 1:
        return {split: compute(split) for split in splits}
    if folder is None:
        raise ValueError("features extracted by several ranks meet in a folder: pass one")
    return cached_features(folder, key, splits, compute, rank=job.rank, world_size=job.world_size)


def eval_key(cfg: DictConfig, weights: Path, job: EvalJob) -> str:
    """What a run's ``eval.json`` depends on: its features and every evaluation setting."""
    return f"{features_key(cfg, weights, job.amp_dtype)}:{probe_key(cfg, '*', cfg.train.seed)}"


def evaluate_run(cfg: DictConfig, output_dir: str | Path | None = None, on_epoch=None) -> dict | None:
    """Evaluate the trained encoder in a run folder; writes ``eval.json`` there (rank 0; every rank
    of a multi-process job calls it and the others return None). A finished evaluation of the same
    weights and settings is returned as it is; an interrupted one resumes."""
    from synrep.learning.trainer import load_trained

    out = Path(output_dir or cfg.train.output_dir)
    torch.set_num_threads(cfg.threads)
    clock = Clock()
    job = eval_job(cfg)
    result = out / "eval.json"
    done = None
    if job.is_main and (out / "model.pt").exists():
        done = finished(result, eval_key(cfg, out / "model.pt", job))
    if job.world_size > 1:  # rank 0's view: every rank goes on, or none
        box = [done is not None]
        torch.distributed.broadcast_object_list(box, src=0)
        if box[0] and not job.is_main:
            return None
    if done is not None:
        return done
    model = load_trained(cfg, out).to(job.device)
    key = eval_key(cfg, out / "model.pt", job)
    data = load_eval_data(cfg)
    clock.lap("load")
    features = job_features(model.features, data, cfg, job, feature_splits(cfg), out.name, out / "features",
                            features_key(cfg, out / "model.pt", job.amp_dtype))
    clock.lap("features")
    state = out / "eval_state"
    metrics = evaluate_features(features, data, cfg, seed=cfg.train.seed, model=model, encode=model.features,
                                job=job, state=state, key=key, on_epoch=on_epoch)
    if not job.is_main:
        return None
    metrics["seconds"] = clock.seconds | metrics["seconds"]
    finish(result, key, metrics)
    shutil.rmtree(state, ignore_errors=True)
    return metrics


def baselines(cfg: DictConfig, seed: int, data: EvalData | None = None, job: EvalJob | None = None,
              state: Path | None = None, on_epoch=None) -> dict[str, dict] | None:
    """Random-init encoder (train.encoder, seeded) and raw pixels (pooled to ``eval.raw_pixels_size``),
    evaluated like trained runs, on the job's device. With ``state`` (a folder) each baseline's
    features, probe state and result are kept there, so a rerun resumes and skips what is done.
    Rank 0 gets the results, the other ranks of a multi-process job None."""
    from synrep.learning.trainer import build_model

    job = job or EvalJob()
    data = data or load_eval_data(cfg)
    torch.manual_seed(seed)
    model = build_model(cfg).eval().to(job.device)
    encoders = {"random_init": (model.features, feature_splits(cfg), model.features,
                                digest({"train": to_dict(cfg.train), "seed": int(seed)}))}
    if cfg.eval.raw_pixels_size is not None:
        size = cfg.eval.raw_pixels_size
        encoders["raw_pixels"] = (lambda x: raw_pixels(x, size), SPLITS, None, f"raw pixels {size}")
    results = {}
    for name, (encode, splits, probe_encode, encoder_key) in encoders.items():
        folder = Path(state) / name if state is not None else None
        features_key_ = f"{encoder_key}:{data_key(cfg, splits, job.amp_dtype)}"
        key = f"{features_key_}:{probe_key(cfg, '*', seed)}"
        done = finished(folder / "metrics.json", key) if folder is not None and job.is_main else None
        if job.world_size > 1:
            box = [done is not None]
            torch.distributed.broadcast_object_list(box, src=0)
            if box[0] and not job.is_main:
                continue
        if done is not None:
            results[name] = done
            continue
        desc = f"random init s{seed}" if name == "random_init" else "raw pixels"
        features = job_features(encode, data, cfg, job, splits, desc, folder / "features" if folder else None,
                                features_key_)
        metrics = evaluate_features(features, data, cfg, seed=seed, encode=probe_encode, job=job, state=folder,
                                    key=key, on_epoch=on_epoch)
        if job.is_main:
            results[name] = metrics
            if folder is not None:
                finish(folder / "metrics.json", key, metrics)
    return results if job.is_main else None


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

    torch.set_num_threads(cfg.threads)
    job = eval_job(cfg)
    data = load_eval_data(cfg)
    outputs = {}
    for s in [seed] if seed is not None else list(cfg.sweep.seeds):
        state = baselines_path(cfg, s).parent / "state"
        if not job.is_main:  # the other ranks extract features and encode crops with rank 0
            baselines(cfg, s, data, job, state)
            continue
        rows = []
        with mlflow_run(cfg, "baselines", sections=("eval",), run_name=f"baselines s{int(s)}"):
            for name, metrics in baselines(cfg, s, data, job, state).items():
                flat = flat_metrics(metrics)
                rows.append({"baseline": name, "seed": int(s), "encoder": cfg.train.encoder, **flat,
                             "details": metrics})
                mlflow.log_metrics({f"{name}.{k}": v for k, v in flat.items()})
        path = baselines_path(cfg, s)
        save_resolved(cfg, path.parent)
        outputs[f"s{int(s)}"] = write_json(path, {"baselines": rows})
        shutil.rmtree(state, ignore_errors=True)  # features and probe states, kept only for a rerun
    return outputs


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep evaluate``: the run in ``train.output_dir``."""
    from synrep.learning import distributed

    if not distributed.detect().is_main:  # the other ranks of torchrun / srun help rank 0, which logs
        evaluate_run(cfg)
        return {}
    with mlflow_run(cfg, "evaluate", sections=("eval",), run_name=f"eval {Path(cfg.train.output_dir).name}"):
        import mlflow

        metrics = evaluate_run(cfg)
        mlflow.log_metrics(flat_metrics(metrics))
    return {"eval": Path(cfg.train.output_dir) / "eval.json"}
