"""``train(cfg)``: one trainer for StableRep, SimCLR, CLIP and StableRep+, following the official
StableRep code (google-research/syn-rep-learn, ``StableRep/main_stablerep.py``).

- Data: n captions x k crops per step from the shards (``synrep.data.stream``); k = m for StableRep(+),
  2 for SimCLR (and StableRep at m = 1), 1 for CLIP. ``train.batch_images`` crops per step, across
  all ranks, rounded down to whole rows on every rank (the official ``--batch_size`` counts captions
  per GPU: 43 captions x 6 images x 32 GPUs = 8256).
- Length: ``train.epochs`` passes over the captions as the official ``--epochs`` (a
  ``DistributedSampler`` and ``drop_last``: ceil(N / ranks) // rows-per-rank steps a pass), or
  SimCLR-equivalent epochs with ``train.epoch_unit=simclr`` (every method sees epochs x 2 crops per
  caption: equal compute, the toy default).
- Peak lr: ``train.lr``, else the official rule base_lr x images per step / 256 x crops per image / 2.
  Schedule: the official ``adjust_learning_rate``, set before every step: linear warm-up from 0 over
  ``warmup_epochs``, then half-cycle cosine to 0 at the last step.
- AdamW without weight decay on biases and norms, bf16 autocast on GPU (fp16 with a grad scaler if
  asked, as the official runs).
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

from synrep.data.rounds import Refresh
from synrep.fileio import atomic_path, write_json
from synrep.generation.alignment_filter import check_index
from synrep.generation.sources import refresh_reading
from synrep.learning import distributed, methods
from synrep.learning.identity import identity_diff, training_identity
from synrep.learning.lr_schedule import warmup_cosine_lr
from synrep.learning.settings import method_train
from synrep.learning.step import forward_loss, optimizer_step
from synrep.settings import ConfigError, InputError, save_resolved
from synrep.tracking import mlflow_run
from synrep.tracking import progress as progress_bar


@dataclass(frozen=True)
class TrainingLength:
    """How many steps a run takes, how they split into passes over the captions, and its lr."""

    n_captions: int  # captions the run trains on (T // l of them with a generation budget T)
    crops_per_row: int
    rows_per_step: int  # global
    rows_per_rank: int
    images_per_step: int
    crops_per_step: int
    steps: int
    warmup_steps: float  # the official warm-up ends at a fraction of an epoch: not always a whole step
    steps_per_pass: int
    passes: int
    peak_lr: float


def steps_per_pass(n_captions: int, world_size: int, rows_per_rank: int) -> int:
    """Steps of one pass, as ``len(DataLoader(DistributedSampler(N), batch, drop_last=True))``."""
    return math.ceil(n_captions / world_size) // rows_per_rank


def training_length(cfg: DictConfig, n_captions: int, world_size: int = 1) -> TrainingLength:
    """The run's steps, warm-up and peak lr for ``n_captions`` captions in its source, on
    ``world_size`` ranks (what the official command line gives, see tests/test_recipes.py)."""
    t = cfg.train
    method = methods.get(t.method)
    k = method.crops_per_row(t.m)
    rows_per_rank = t.batch_images // (k * world_size)
    if rows_per_rank * world_size < 2:
        raise ConfigError(f"config key 'train.batch_images': {t.batch_images} crops hold fewer than 2 rows of {k} "
                          f"crops over {world_size} process(es)")
    rows = rows_per_rank * world_size
    used = n_captions
    if t.image_budget is not None:
        used = min(n_captions, t.image_budget // t.l)
    per_pass = steps_per_pass(used, world_size, rows_per_rank)
    if per_pass == 0:
        raise ConfigError(f"config key 'train.batch_images': one step needs {rows} captions but the data "
                          f"source {t.data!r} gives the run {used}")
    # the length is counted on every caption of the source, so that a run on T // l of them
    # (the l ablation at a fixed budget) trains as long as the others
    if t.epoch_unit == "pass":
        steps_per_epoch = float(steps_per_pass(n_captions, world_size, rows_per_rank))
    else:  # simclr: epochs x 2 crops per caption
        steps_per_epoch = 2 * n_captions / (rows * k)
    steps = max(1, round(t.epochs * steps_per_epoch))
    warmup = min(float(steps), t.warmup_epochs * steps_per_epoch)
    images = rows * method.images_per_row(t.m)
    lr = t.lr if t.lr is not None else t.base_lr * images / 256 * method.crops_per_image(t.m) / 2
    return TrainingLength(used, k, rows, rows_per_rank, images, rows * k, steps, warmup, per_pass,
                          math.ceil(steps / per_pass), float(lr))


def lr_at(step: int, length: TrainingLength) -> float:
    """The official ``adjust_learning_rate`` at ``step`` optimizer steps done: linear warm-up from
    0, then half-cycle cosine from the peak to 0 at the last step."""
    return warmup_cosine_lr(step, length.steps, length.warmup_steps, length.peak_lr)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config key 'train.device': cuda requested but no GPU is visible")
        return torch.device("cuda", distributed.cuda_index(local_rank))
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


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW, no weight decay on biases and norms; the lr is set before every step (``lr_at``)."""
    from synrep.learning.models import parameter_groups

    t = cfg.train
    # fused: one kernel for every parameter instead of a dozen small ops each (CPU and CUDA)
    return torch.optim.AdamW(parameter_groups(model, t.weight_decay), lr=0.0, betas=tuple(t.betas), fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def checkpoint_path(out: Path) -> Path:
    return out / "checkpoints" / "last.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def training_data(cfg: DictConfig, length: TrainingLength):
    """The run's captions as a map-style dataset: the index's sample counts place every caption,
    a shard's member offsets are read when one of its captions is."""
    from synrep.data import stream as data
    from synrep.learning import augment

    t = cfg.train
    spec = methods.get(t.method).sample_spec(t.l, t.m)
    # augmented per image in the loader (uint8 out), or (None) a batch at a time in the loop
    # (augment.batch_augment); normalised on the device either way
    transform = None if augment.augments_batches(cfg) else augment.train_transform(cfg)
    index = data.shard_index(cfg, t.data)
    if t.data != "real":
        check_index(cfg, t.data, index, f"the shard index of source {t.data!r}")
    # a refreshing source: each pass reads one round of each caption's images (data/rounds.py)
    refresh = refresh_reading(cfg, t.data)
    return data.GroupDataset(index["path"].to_list(), spec, transform, seed=t.seed, max_samples=length.n_captions,
                             cache_decoded=t.cache_decoded, counts=index["samples"].to_list(),
                             kept=index["kept"].to_list() if "kept" in index.columns else None,
                             refresh=None if refresh is None else Refresh(*refresh))


def data_loader(cfg: DictConfig, dataset, length: TrainingLength, info: distributed.DistInfo,
                device: torch.device | None = None):
    """The official loader for the whole run: a seeded ``DistributedSampler`` shuffling the whole
    caption set, ``length.rows_per_rank`` captions a batch, ``drop_last``; call ``set_pass`` before
    each pass. Workers persist across passes (the pass travels with each index), batches come as
    uint8 (a quarter of float32's bytes through the worker queues), pinned for a GPU."""
    from synrep.data import stream as data

    workers = cfg.train.workers
    sampler = data.EpochIndices(data.group_sampler(dataset, cfg.train.seed, info.rank, info.world_size))
    # workers = 0 (the toy default): each pass's iterator draws its base seed from the global
    # generator, as before; with workers, the loader's own generator, so that the global draws of
    # a pass (the batched augmentation's) do not depend on whether the workers were just started
    generator = torch.Generator().manual_seed(cfg.train.seed) if workers > 0 else None
    return torch.utils.data.DataLoader(dataset, batch_size=length.rows_per_rank, sampler=sampler,
                                       collate_fn=data.collate_groups, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0, generator=generator,
                                       pin_memory=device is not None and device.type == "cuda",
                                       prefetch_factor=4 if workers > 0 else None)


def set_pass(loader, pass_index: int) -> None:
    """Point the run's loader (``data_loader``) at pass ``pass_index``."""
    loader.dataset.set_epoch(pass_index)
    loader.sampler.set_epoch(pass_index)


class OtherRunError(InputError):
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
        raise InputError(f"{path}: corrupt or truncated checkpoint ({str(err).splitlines()[0]})") from None


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
    torch.set_num_threads(cfg.threads)
    device = resolve_device(t.device, 0)
    info = distributed.init_distributed(device.type)
    device = resolve_device(t.device, info.local_rank)
    # Rank 0 alone judges and clears the folder (ranks removing one tree at once trip over each
    # other's deletions); the others wait for its verdict, so that every rank sees the same folder.
    refused = None
    if info.is_main:
        try:
            check_output_dir(cfg, out)
        except OtherRunError as err:
            if not restart_other:
                refused = err
            else:
                print(f"starting afresh: {err}", flush=True)
                import shutil

                shutil.rmtree(out)
    if distributed.broadcast_flag(refused is not None):
        raise refused or OtherRunError(f"{out}: rank 0 refused the folder (another config's run; see its log)")
    if distributed.broadcast_flag(final.exists() and (out / "train.json").exists()):
        return json.loads((out / "train.json").read_text())

    amp_dtype = autocast_dtype(t.precision, device)

    n_captions = data.count_captions(cfg, t.data)
    length = training_length(cfg, n_captions, info.world_size)
    torch.manual_seed(t.seed)
    # channels_last: oneDNN's and cuDNN's fast convolution layout (a quarter off the toy CNN's step)
    model = build_model(cfg).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    step, start_pass, history, elapsed = 0, 0, [], 0.0
    ckpt = checkpoint_path(out)
    # rank 0's view, so that ranks on other nodes (a file system's caches) resume alike
    if distributed.broadcast_flag(ckpt.exists()):
        state = load_state(ckpt, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, start_pass, history, elapsed = state["step"], state["pass"], state["history"], state["seconds"]
        if info.is_main:
            print(f"resuming {out} from pass {start_pass} (step {step}/{length.steps})", flush=True)
    model = distributed.wrap_model(model, device, info)
    active = mlflow.active_run() if info.is_main else None

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, out)
        write_json(out / "identity.json", training_identity(cfg))
    dataset = training_data(cfg, length)
    from synrep.learning import augment

    batch_augment = augment.batch_augment(cfg)
    if batch_augment is not None:
        batch_augment = batch_augment.to(device)
    normalize = augment.Normalize().to(device)
    device_augment = augment.DeviceAugment(t.image_size).to(device)
    loader = data_loader(cfg, dataset, length, info, device)
    bar = progress_bar(total=length.steps, initial=step, desc=f"train {t.method} {t.data}", unit="step",
                       disable=not (progress and info.is_main), interval=2)
    # where this process's training time goes (benchmarks/sweep_run.py): waiting for the loader
    # (reading, decoding, augmenting with workers = 0), the batched augmentation, and forward +
    # backward + optimizer
    timing = {"data": 0.0, "augment": 0.0, "compute": 0.0, "checkpoint": 0.0}
    try:
        started = time.time() - elapsed
        last_saved = time.perf_counter()
        model.train()
        for pass_index in range(start_pass, length.passes):
            seed_pass(t.seed, pass_index, info.rank)
            steps_now = min(length.steps_per_pass, length.steps - step)
            losses_now: list[float] = []
            made = 0
            fetched = time.perf_counter()
            set_pass(loader, pass_index)
            for batch in loader:
                if made == steps_now:
                    break
                computing = time.perf_counter()
                timing["data"] += computing - fetched
                images = batch["images"].to(device, non_blocking=True, memory_format=torch.channels_last)
                if batch_augment is not None:
                    images = batch_augment(images)
                    augmented = time.perf_counter()
                    timing["augment"] += augmented - computing
                    computing = augmented
                elif "draws" in batch:  # cropped in the workers; colour, blur and normalisation here
                    images = device_augment(images, batch["draws"])
                else:
                    images = normalize(images)
                group_ids = batch["group_ids"].to(device)
                set_lr(optimizer, lr_at(step, length))
                loss, parts = forward_loss(cfg, model, images, group_ids, batch["captions"], amp_dtype)
                optimizer_step(loss, optimizer, scaler)
                step += 1
                made += 1
                losses_now.append(float(loss.detach()))
                fetched = time.perf_counter()
                timing["compute"] += fetched - computing
                bar.update(1)
                bar.set_postfix(loss=f"{losses_now[-1]:.3f}", refresh=False)
            if made < steps_now:
                raise InputError(f"data source {t.data!r} ran out after {made} of {steps_now} steps in pass "
                                   f"{pass_index}; the shards hold fewer captions than the index says")
            mean_loss = distributed.all_reduce_mean(float(np.mean(losses_now)))
            history.append({"pass": pass_index + 1, "step": step, "loss": mean_loss,
                            "lr": optimizer.param_groups[0]["lr"]})
            if active is not None:
                mlflow.log_metric("train_loss", mean_loss, step=step)
            saving = time.perf_counter()
            if info.is_main and saving - last_saved >= t.checkpoint_seconds:
                save_checkpoint(ckpt, {
                    "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "step": step,
                    "pass": pass_index + 1, "history": history, "seconds": time.time() - started,
                })
                last_saved = time.perf_counter()
            distributed.barrier()
            timing["checkpoint"] += time.perf_counter() - saving
    finally:
        # an error mid-run prints on its own line, not after the bar
        bar.close()

    summary = {
        "method": t.method, "data": t.data, "l": t.l, "m": t.m, "seed": t.seed,
        "length": asdict(length), "world_size": info.world_size, "device": str(device),
        "seconds": round(time.time() - started, 2), "final_loss": history[-1]["loss"] if history else None,
        "history": history, "timing": {k: round(v, 3) for k, v in timing.items()},
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
    return model.to(memory_format=torch.channels_last).eval()


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep train``: the single run that ``train.*`` describes."""
    import contextlib

    cfg = method_train(cfg)
    # under torchrun or srun only rank 0 logs: one writer for the MLflow store
    tracked = distributed.detect().is_main
    with (mlflow_run(cfg, "train", sections=("train",), run_name=Path(cfg.train.output_dir).name) if tracked
          else contextlib.nullcontext()):
        train(cfg)
    out = Path(cfg.train.output_dir)
    return {"model": out / "model.pt", "summary": out / "train.json"}
