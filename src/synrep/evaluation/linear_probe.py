"""Linear probe on a frozen encoder, as the official ``main_linear.py`` (google-research/syn-rep-learn):
optional BatchNorm without affine (eps 1e-6) in front of the linear heads, one head per learning
rate trained at once, SGD momentum 0.9, no weight decay, cosine schedule per step. The learning
rate, and with ``eval_every`` the epoch, are chosen on the selection split (``val``); the reported
number is that head's accuracy on ``test``. (The official script picks the best head on the split
it reports; here the two never coincide.)

Two ways to feed it: cached features of centre crops (``linear_probe``, the toy default), or the
official training transform, RandomResizedCrop + flip through the frozen encoder every epoch
(``linear_probe_augmented``, on the job's device; with several ranks each encodes its share of
every batch and rank 0 steps the heads on the gathered features).

Both resume: with a ``ProbeCheckpoint`` the heads, optimizer, schedule, shuffling generator, the
accuracies so far and the epoch are saved (atomically, every ``seconds``), and a rerun with the same
key carries on after the saved epoch, to the same heads an uninterrupted run gives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from synrep.evaluation.features import SPLITS
from synrep.fileio import atomic_path
from synrep.settings import InputError
from synrep.tracking import progress as progress_bar


class ProbeHeads(nn.Module):
    """The heads of every learning rate, their optimizer and schedule, and their accuracies at the
    checkpoints where they are evaluated."""

    def __init__(self, dim: int, n_classes: int, lrs: list[float], total_steps: int, batchnorm: bool,
                 eval_every: int | None = None, keep_test_predictions: bool = False):
        super().__init__()
        self.lrs, self.eval_every, self.keep_test_predictions = list(lrs), eval_every, keep_test_predictions
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if batchnorm else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(dim, n_classes) for _ in lrs)
        self.optimizer = torch.optim.SGD([{"params": h.parameters(), "lr": lr} for h, lr in zip(self.heads, lrs)],
                                         momentum=0.9, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, total_steps))
        self.loss_fn = nn.CrossEntropyLoss()
        # {"epoch", "val": [per lr], "test": [...], "train": [...], "test_predictions": [...] if kept}
        self.history: list[dict] = []

    def step(self, z: torch.Tensor, y: torch.Tensor) -> None:
        self.norm.train()
        z = self.norm(z)
        loss = sum(self.loss_fn(head(z), y) for head in self.heads)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()

    @torch.no_grad()
    def evaluate(self, epoch: int, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> None:
        self.norm.eval()
        record = {"epoch": epoch}
        for s in x:
            predictions = [head(self.norm(x[s])).argmax(1) for head in self.heads]
            record[s] = [float((p == y[s]).float().mean()) for p in predictions]
            if s == "test" and self.keep_test_predictions:
                record["test_predictions"] = [p.cpu() for p in predictions]
        self.history.append(record)

    def state(self) -> dict:
        return {"modules": self.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "history": self.history}

    def load(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.history = list(state["history"])

    def result(self) -> dict:
        """The (lr, epoch) with the best selection accuracy (on ties, the earliest epoch, then the first lr)."""
        best_score, best = -1.0, None
        for record in self.history:
            for i, acc in enumerate(record["val"]):
                if acc > best_score:
                    best_score, best = acc, (record, i)
        record, i = best
        out = {"test": record["test"][i], "val": record["val"][i], "lr": self.lrs[i], "epoch": record["epoch"],
               "epochs_compared": len(self.history), "eval_every": self.eval_every,
               "val_by_lr": dict(zip(map(str, self.lrs), self.history[-1]["val"]))}
        if "train" in record:
            out["train"] = record["train"][i]
        if "test_predictions" in record:  # the chosen head's, for worst-group accuracy (not written out)
            out["test_predictions"] = record["test_predictions"][i].numpy()
        return out


def _checkpoints(epochs: int, eval_every: int | None) -> set[int]:
    if not eval_every:
        return {epochs}
    return set(range(eval_every, epochs + 1, eval_every)) | {epochs}


@dataclass
class ProbeCheckpoint:
    """Where a probe saves its state (``path``), what the state is valid for (``key``: the features
    and the probe's settings) and how often it is saved (``seconds`` since the last save; 0: every
    epoch)."""

    path: Path
    key: str
    seconds: float = 0.0

    def __post_init__(self):
        self.path = Path(self.path)
        self._saved = time.perf_counter()

    def load(self) -> dict | None:
        """The saved state for this key, or None (none saved, or one of another key: started over)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as err:  # truncated zip, unpickling errors
            raise InputError(f"{self.path}: corrupt or truncated probe checkpoint "
                             f"({str(err).splitlines()[0]}); delete it to start the probe over") from None
        return state if state.get("key") == self.key else None

    def due(self, epoch: int, epochs: int) -> bool:
        return epoch < epochs and time.perf_counter() - self._saved >= self.seconds

    def save(self, state: dict) -> None:
        with atomic_path(self.path) as tmp:
            torch.save({"key": self.key, **state}, tmp)
        self._saved = time.perf_counter()


def _resume(checkpoint: ProbeCheckpoint | None, probe: ProbeHeads, gen: torch.Generator | None) -> int:
    """The last epoch done by an earlier attempt (0: none), its state loaded into ``probe`` and ``gen``."""
    state = checkpoint.load() if checkpoint is not None else None
    if state is None:
        return 0
    probe.load(state["probe"])
    if gen is not None:
        gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    print(f"resuming the probe from {checkpoint.path} after epoch {state['epoch']}", flush=True)
    return int(state["epoch"])


def _save(checkpoint: ProbeCheckpoint | None, probe: ProbeHeads, gen: torch.Generator | None, epoch: int,
          epochs: int) -> None:
    if checkpoint is not None and checkpoint.due(epoch, epochs):
        checkpoint.save({"epoch": epoch, "probe": probe.state(), "torch_rng": torch.get_rng_state(),
                         "generator": gen.get_state() if gen is not None else None})


def linear_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], n_classes: int,
                 lrs: list[float], epochs: int, batch_size: int, batchnorm: bool, seed: int = 0,
                 eval_every: int | None = None, device: str | torch.device = "cpu",
                 checkpoint: ProbeCheckpoint | None = None, on_epoch: Callable[[int], None] | None = None,
                 keep_test_predictions: bool = False) -> dict:
    """The probe on cached features ({train, val, test}); choose on val, report on test.
    ``on_epoch(epoch)`` is called after each epoch (and its checkpoint). ``keep_test_predictions``:
    the result also holds the chosen head's test predictions (``test_predictions``)."""
    torch.manual_seed(seed)
    x = {s: torch.from_numpy(features[s]).float().to(device) for s in SPLITS}
    y = {s: torch.from_numpy(labels[s]).long().to(device) for s in SPLITS}
    n = len(x["train"])
    probe = ProbeHeads(x["train"].shape[1], n_classes, lrs, epochs * math.ceil(n / batch_size), batchnorm,
                       eval_every, keep_test_predictions).to(device)
    gen = torch.Generator().manual_seed(seed)
    checkpoints = _checkpoints(epochs, eval_every)
    start = _resume(checkpoint, probe, gen)
    for epoch in progress_bar(range(start + 1, epochs + 1), desc="linear probe", unit="epoch", total=epochs,
                              initial=start):
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            probe.step(x["train"][idx], y["train"][idx])
        if epoch in checkpoints:
            probe.evaluate(epoch, x, y)
        _save(checkpoint, probe, gen, epoch, epochs)
        if on_epoch is not None:
            on_epoch(epoch)
    return probe.result()


class _Augmented(torch.utils.data.Dataset):
    """Training crops (uint8) indexed by (epoch, image): each drawn from its own seed, so that a crop
    does not depend on which worker, rank or attempt makes it."""

    def __init__(self, images: torch.utils.data.Dataset, transform: Callable, seed: int):
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, i = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
            return self.transform(self.images[i]), i


class _ProbeBatches(torch.utils.data.Sampler):
    """This rank's share (``rank_rows``) of every batch of an epoch's shuffle, the shuffle drawn from
    (seed, epoch) alone, as (epoch, image) items; ``set_epoch`` picks the epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[torch.Tensor]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        return list(order.split(self.batch_size))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        from synrep.evaluation.features import rank_rows

        for batch in self.global_batches():
            mine = rank_rows(len(batch), self.rank, self.world_size)
            # a batch smaller than the world leaves some ranks no rows: they encode a stand-in,
            # which the gather drops, so that every rank takes part in every step
            rows = batch[mine.start:mine.stop] if len(mine) else batch[:1]
            yield [(self.epoch, int(i)) for i in rows]


def _gather_to_main(local: torch.Tensor, sizes: list[int], rank: int, world_size: int) -> torch.Tensor | None:
    """Rank 0: the rows of every rank, in rank order (the first ``sizes[rank]`` rows of each)."""
    if world_size == 1:
        return local
    import torch.distributed as dist

    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:k] for p, k in zip(parts, sizes)]) if rank == 0 else None


def linear_probe_augmented(encode: Callable[[torch.Tensor], torch.Tensor], train_images: torch.utils.data.Dataset,
                           image_size: int, features: dict[str, np.ndarray] | None, labels: dict[str, np.ndarray],
                           n_classes: int, lrs: list[float], epochs: int, batch_size: int, batchnorm: bool,
                           seed: int = 0, eval_every: int | None = None, workers: int = 0,
                           progress: Iterable | None = None, device: str | torch.device = "cpu",
                           amp_dtype: torch.dtype | None = None, normalise: Callable | None = None,
                           rank: int = 0, world_size: int = 1, checkpoint: ProbeCheckpoint | None = None,
                           on_epoch: Callable[[int], None] | None = None,
                           keep_test_predictions: bool = False) -> dict | None:
    """The official probe: every epoch, RandomResizedCrop(image_size) + flip of each training image
    through the frozen ``encode`` (normalised float images on ``device`` in, features out);
    ``features`` holds the val and test features (centre crops, extracted once).

    Crops are cut in ``workers`` loader processes (kept across epochs) and travel as uint8;
    ``normalise`` (default: the training mean and std) runs on the device. With ``world_size`` > 1
    (every rank calls it) each rank encodes its share of each batch and rank 0, which alone needs
    ``features`` and ``checkpoint``, steps the heads on the gathered features and returns the
    result; the other ranks return None. ``keep_test_predictions`` as ``linear_probe``."""
    from torchvision.transforms import v2

    from synrep.evaluation.features import rank_rows
    from synrep.learning.augment import MEAN, STD

    device = torch.device(device)
    if normalise is None:
        normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    torch.manual_seed(seed)
    main = rank == 0
    data = _Augmented(train_images, v2.Compose([v2.RandomResizedCrop(image_size, antialias=True),
                                                v2.RandomHorizontalFlip()]), seed)
    sampler = _ProbeBatches(len(data), batch_size, seed, rank, world_size)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    n = len(data)
    probe = x = y = None
    start = 0
    if main:
        y_train = torch.from_numpy(labels["train"]).long().to(device)
        x = {s: torch.from_numpy(features[s]).float().to(device) for s in ("val", "test")}
        y = {s: torch.from_numpy(labels[s]).long().to(device) for s in ("val", "test")}
        probe = ProbeHeads(x["val"].shape[1], n_classes, lrs, epochs * math.ceil(n / batch_size), batchnorm,
                           eval_every, keep_test_predictions).to(device)
        start = _resume(checkpoint, probe, None)
    if world_size > 1:  # every rank starts where rank 0's checkpoint says
        box = [start]
        torch.distributed.broadcast_object_list(box, src=0)
        start = box[0]
    checkpoints = _checkpoints(epochs, eval_every)
    for epoch in progress_bar(range(start + 1, epochs + 1), desc="linear probe (augmented)", unit="epoch", total=epochs,
                              initial=start, disable=not main):
        sampler.set_epoch(epoch)
        sizes = [[len(rank_rows(len(b), r, world_size)) for r in range(world_size)] for b in sampler.global_batches()]
        for step, (images, index) in enumerate(loader):
            images = images.to(device, non_blocking=True)
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                z = encode(normalise(images)).float()
            z = _gather_to_main(z, sizes[step], rank, world_size)
            index = _gather_to_main(index.to(device), sizes[step], rank, world_size)
            if main:
                probe.step(z, y_train[index])
        if main:
            if epoch in checkpoints:
                probe.evaluate(epoch, x, y)
            _save(checkpoint, probe, None, epoch, epochs)
        if on_epoch is not None:
            on_epoch(epoch)
    return probe.result() if main else None
