"""Linear probe on a frozen encoder, as the official ``main_linear.py`` (google-research/syn-rep-learn):
optional BatchNorm without affine (eps 1e-6) in front of the linear heads, one head per learning
rate trained at once, SGD momentum 0.9, no weight decay, cosine schedule per step. The learning
rate, and with ``eval_every`` the epoch, are chosen on the selection split (``val``); the reported
number is that head's accuracy on ``test``. (The official script picks the best head on the split
it reports; here the two never coincide.)

Two ways to feed it: cached features of centre crops (``linear_probe``, the toy default), or the
official training transform, RandomResizedCrop + flip through the frozen encoder every epoch
(``linear_probe_augmented``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from synrep.evaluation.features import SPLITS


class ProbeHeads(nn.Module):
    """The heads of every learning rate, their optimizer and schedule, and their accuracies at the
    checkpoints where they are evaluated."""

    def __init__(self, dim: int, n_classes: int, lrs: list[float], total_steps: int, batchnorm: bool,
                 eval_every: int | None = None):
        super().__init__()
        self.lrs, self.eval_every = list(lrs), eval_every
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if batchnorm else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(dim, n_classes) for _ in lrs)
        self.optimizer = torch.optim.SGD([{"params": h.parameters(), "lr": lr} for h, lr in zip(self.heads, lrs)],
                                         momentum=0.9, weight_decay=0.0)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, total_steps))
        self.loss_fn = nn.CrossEntropyLoss()
        self.history: list[dict] = []  # {"epoch", "val": [per lr], "test": [...], "train": [...]}

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
        self.history.append({"epoch": epoch, **{s: [float((head(self.norm(x[s])).argmax(1) == y[s]).float().mean())
                                                     for head in self.heads] for s in x}})

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
        return out


def _checkpoints(epochs: int, eval_every: int | None) -> set[int]:
    if not eval_every:
        return {epochs}
    return set(range(eval_every, epochs + 1, eval_every)) | {epochs}


def linear_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], n_classes: int,
                 lrs: list[float], epochs: int, batch_size: int, batchnorm: bool, seed: int = 0,
                 eval_every: int | None = None) -> dict:
    """The probe on cached features ({train, val, test}); choose on val, report on test."""
    torch.manual_seed(seed)
    x = {s: torch.from_numpy(features[s]).float() for s in SPLITS}
    y = {s: torch.from_numpy(labels[s]).long() for s in SPLITS}
    n = len(x["train"])
    probe = ProbeHeads(x["train"].shape[1], n_classes, lrs, epochs * math.ceil(n / batch_size), batchnorm,
                       eval_every)
    gen = torch.Generator().manual_seed(seed)
    checkpoints = _checkpoints(epochs, eval_every)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            probe.step(x["train"][idx], y["train"][idx])
        if epoch in checkpoints:
            probe.evaluate(epoch, x, y)
    return probe.result()


class _Augmented(torch.utils.data.Dataset):
    def __init__(self, images: torch.utils.data.Dataset, transform: Callable):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), i


def linear_probe_augmented(encode: Callable[[torch.Tensor], torch.Tensor], train_images: torch.utils.data.Dataset,
                           image_size: int, features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                           n_classes: int, lrs: list[float], epochs: int, batch_size: int, batchnorm: bool,
                           seed: int = 0, eval_every: int | None = None, workers: int = 0,
                           progress: Iterable | None = None) -> dict:
    """The official probe: every epoch, RandomResizedCrop(image_size) + flip of each training image
    through the frozen ``encode`` (normalised float images in, features out); ``features`` holds the
    val and test features (centre crops, extracted once)."""
    from torchvision.transforms import v2

    from synrep.learning.augment import MEAN, STD

    torch.manual_seed(seed)
    transform = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    data = _Augmented(train_images, transform)
    y_train = torch.from_numpy(labels["train"]).long()
    x = {s: torch.from_numpy(features[s]).float() for s in ("val", "test")}
    y = {s: torch.from_numpy(labels[s]).long() for s in ("val", "test")}
    n = len(data)
    probe = None
    checkpoints = _checkpoints(epochs, eval_every)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen,
                                             num_workers=workers)
        for images, index in loader:
            with torch.no_grad():
                z = encode(images).float()
            if probe is None:
                probe = ProbeHeads(z.shape[1], n_classes, lrs, epochs * math.ceil(n / batch_size), batchnorm,
                                   eval_every)
            probe.step(z, y_train[index])
        if epoch in checkpoints:
            probe.evaluate(epoch, x, y)
    return probe.result()
