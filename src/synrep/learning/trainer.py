"""``train(cfg)``: one trainer for StableRep, SimCLR, CLIP and StableRep+.

- Data: n captions x k crops per step from the shards (``synrep.data.stream``); k = m for StableRep(+),
  2 for SimCLR, 1 for CLIP. ``train.batch_images`` crops per step, across all ranks.
- Compute is counted in SimCLR-equivalent epochs (papers.md): every method sees
  ``epochs * 2 * n_captions`` crops in all, so one StableRep epoch with m = 6 costs 3 SimCLR epochs.
- AdamW without weight decay on biases and norms, lr = base_lr * batch_images / 256, cosine schedule
  with linear warm-up (timm's scheduler), bf16 autocast on GPU.
- A checkpoint after every pass over the captions; a restarted run resumes from the latest one.
  Each pass reseeds every random generator from (seed, pass, rank), so a resumed run computes
  exactly what an uninterrupted run computes.
- One process, torchrun, or ``srun`` with several tasks (``synrep.distributed``).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.learning import distributed, methods
from synrep.learning.identity import identity_diff, training_identity
from synrep.learning.step import forward_loss, optimizer_step
from synrep.config import save_resolved
from synrep.fileio import atomic_path, write_json


@dataclass(frozen=True)
class TrainingLength:
    """How many steps a run takes and how they split into passes over the captions."""

    n_captions: int
    crops_per_row: int
    rows_per_step: int  # global
    rows_per_rank: int
    crops_per_step: int
    steps: int
    steps_per_pass: int
    passes: int


def training_length(cfg: DictConfig, n_captions: int, world_size: int = 1) -> TrainingLength:
    t = cfg.train
    k = methods.get(t.method).crops_per_row(t.m)
    rows = t.batch_images // k
    if rows < 2:
        raise ValueError(f"config key 'train.batch_images': {t.batch_images} crops hold fewer than 2 rows of {k}")
    if rows % world_size:
        raise ValueError(f"config key 'train.batch_images': {rows} rows of {k} crops do not split over "
                         f"{world_size} processes")
    per_rank = rows // world_size
    # each DataLoader worker batches its own share of the captions and drops its last partial batch
    workers = max(1, t.workers)
    steps_per_pass = (n_captions // (world_size * workers)) // per_rank * workers
    if steps_per_pass == 0:
        raise ValueError(f"config key 'train.batch_images': one step needs {rows} captions but the data "
                         f"source {t.data!r} has {n_captions}")
    steps = max(1, round(t.epochs * 2 * n_captions / (rows * k)))
    return TrainingLength(n_captions, k, rows, per_rank, rows * k, steps, steps_per_pass, math.ceil(steps / steps_per_pass))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("config key 'train.device': cuda requested but no GPU is visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_pass(seed: int, pass_index: int, rank: int) -> None:
    """Reseed torch, Python and NumPy for one pass (augmentations draw from them)."""
    value = (seed * 1_000_003 + pass_index * 7_919 + rank) % 2**31
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def build_model(cfg: DictConfig):
    from synrep.learning.models import RepresentationModel

    return RepresentationModel(cfg, cfg.train.method)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, steps: int):
    from timm.scheduler import CosineLRScheduler

    from synrep.learning.models import parameter_groups

    t = cfg.train
    lr = t.base_lr * t.batch_images / 256
    optimizer = torch.optim.AdamW(parameter_groups(model, t.weight_decay), lr=lr, betas=tuple(t.betas))
    schedule = CosineLRScheduler(optimizer, t_initial=steps, warmup_t=int(t.warmup_fraction * steps),
                                 warmup_lr_init=0.0, lr_min=0.0, t_in_epochs=False, warmup_prefix=True)
    return optimizer, schedule


def checkpoint_path(out: Path) -> Path:
    return out / "checkpoints" / "last.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def data_loader(cfg: DictConfig, length: TrainingLength, info: distributed.DistInfo, pass_index: int):
    from synrep.learning import augment
    from synrep.data import stream as data

    t = cfg.train
    spec = methods.get(t.method).sample_spec(t.l, t.m)
    stream = data.GroupStream(data.shard_urls(cfg, t.data), spec, augment.train_transform(cfg), seed=t.seed,
                              shuffle_buffer=t.shuffle_buffer, rank=info.rank, world=info.world_size)
    stream.set_epoch(pass_index)
    return torch.utils.data.DataLoader(stream, batch_size=length.rows_per_rank, collate_fn=data.collate_groups,
                                       num_workers=t.workers, drop_last=True,
                                       persistent_workers=False)


class OtherRunError(ValueError):
    """The output folder holds a run (finished or not) made with another config."""


def check_output_dir(cfg: DictConfig, out: Path) -> None:
    """Refuse to resume or return a run in ``out`` that was made with another config."""
    identity_file = out / "identity.json"
    if not (out / "model.pt").exists() and not checkpoint_path(out).exists():
        return
    if not identity_file.exists():
        raise OtherRunError(f"{out} holds a run without identity.json (made by an older synrep); "
                            "choose another config key 'train.output_dir' or delete the folder")
    differs = identity_diff(json.loads(identity_file.read_text()), training_identity(cfg))
    if differs:
        shown = "; ".join(differs[:5]) + (f"; and {len(differs) - 5} more" if len(differs) > 5 else "")
        raise OtherRunError(f"{out} holds a run with another config ({shown}); choose another config key "
                            "'train.output_dir' or delete the folder")


def load_state(path: Path, device) -> dict:
    """``torch.load`` of a checkpoint or model file, with one line naming a corrupt file."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # truncated zip, unpickling errors
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({str(err).splitlines()[0]})") from None


def train(cfg: DictConfig, progress: bool = True, restart_other: bool = False) -> dict:
    """Train one run into ``train.output_dir``; returns the training summary.

    Resumes from ``checkpoints/last.pt`` and returns a finished run at once, but only when the
    folder's run was made with the same config (``identity.json``); otherwise it refuses, naming
    the keys that differ, or with ``restart_other`` (the sweep, which owns its run folders) deletes
    the folder and trains afresh.
    """
    import mlflow

    from synrep.data import stream as data

    t = cfg.train
    out = Path(t.output_dir)
    final = out / "model.pt"
    try:
        check_output_dir(cfg, out)
    except OtherRunError as err:
        if not restart_other:
            raise
        print(f"starting afresh: {err}", flush=True)
        import shutil

        shutil.rmtree(out)
    if final.exists() and (out / "train.json").exists():
        return json.loads((out / "train.json").read_text())

    torch.set_num_threads(cfg.threads)
    device = resolve_device(t.device, 0)
    info = distributed.init_distributed(device.type)
    device = resolve_device(t.device, info.local_rank)
    amp_dtype = autocast_dtype(t.precision, device)

    n_captions = data.count_captions(cfg, t.data)
    length = training_length(cfg, n_captions, info.world_size)
    torch.manual_seed(t.seed)
    model = build_model(cfg).to(device)
    optimizer, schedule = build_optimizer(cfg, model, length.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    step, start_pass, history, elapsed = 0, 0, [], 0.0
    ckpt = checkpoint_path(out)
    if ckpt.exists():
        state = load_state(ckpt, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        step, start_pass, history, elapsed = state["step"], state["pass"], state["history"], state["seconds"]
        if info.is_main:
            print(f"resuming {out} from pass {start_pass} (step {step}/{length.steps})", flush=True)
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.type == "cuda" else None)
    active = mlflow.active_run() if info.is_main else None

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, out)
        write_json(out / "identity.json", training_identity(cfg))
    bar = tqdm(total=length.steps, initial=step, desc=f"train {t.method} {t.data}", unit="step",
               disable=not (progress and info.is_main), mininterval=2)
    try:
        started = time.time() - elapsed
        model.train()
        for pass_index in range(start_pass, length.passes):
            seed_pass(t.seed, pass_index, info.rank)
            steps_now = min(length.steps_per_pass, length.steps - step)
            losses_now: list[float] = []
            made = 0
            for batch in data_loader(cfg, length, info, pass_index):
                if made == steps_now:
                    break
                images = batch["images"].to(device, non_blocking=True)
                group_ids = batch["group_ids"].to(device)
                loss, parts = forward_loss(cfg, model, images, group_ids, batch["captions"], amp_dtype)
                optimizer_step(loss, optimizer, scaler)
                step += 1
                made += 1
                schedule.step_update(num_updates=step)
                losses_now.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses_now[-1]:.3f}", refresh=False)
            if made < steps_now:
                raise ValueError(f"data source {t.data!r} ran out after {made} of {steps_now} steps in pass "
                                   f"{pass_index}; the shards hold fewer captions than the index says")
            mean_loss = distributed.all_reduce_mean(float(np.mean(losses_now)))
            history.append({"pass": pass_index + 1, "step": step, "loss": mean_loss,
                            "lr": optimizer.param_groups[0]["lr"]})
            if active is not None:
                mlflow.log_metric("train_loss", mean_loss, step=step)
            if info.is_main:
                save_checkpoint(ckpt, {
                    "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "scaler": scaler.state_dict(), "step": step,
                    "pass": pass_index + 1, "history": history, "seconds": time.time() - started,
                })
            distributed.barrier()
    finally:
        # an error mid-run prints on its own line, not after the bar
        bar.close()

    summary = {
        "method": t.method, "data": t.data, "l": t.l, "m": t.m, "seed": t.seed,
        "length": asdict(length), "world_size": info.world_size, "device": str(device),
        "seconds": round(time.time() - started, 2), "final_loss": history[-1]["loss"] if history else None,
        "history": history,
    }
    if info.is_main:
        with atomic_path(final) as tmp:
            torch.save({"model": unwrap(model).state_dict(), "method": t.method}, tmp)
        write_json(out / "train.json", summary)
    distributed.barrier()
    return summary


def load_trained(cfg: DictConfig, output_dir: str | Path | None = None, device: str = "cpu"):
    """The trained model of a run folder, in eval mode."""
    path = Path(output_dir or cfg.train.output_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"no trained model at {path}; train the run first")
    state = load_state(path, device)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval()


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep train``: the single run that ``train.*`` describes."""
    from synrep.tracking import mlflow_run

    with mlflow_run(cfg, "train", sections=("train",), run_name=Path(cfg.train.output_dir).name):
        train(cfg)
    out = Path(cfg.train.output_dir)
    return {"model": out / "model.pt", "summary": out / "train.json"}
