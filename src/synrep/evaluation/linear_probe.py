"""Linear probe on frozen features (papers.md): optional BatchNorm without affine in front of a
linear head, SGD with momentum 0.9, no weight decay, cosine schedule, one head per learning rate."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from synrep.evaluation.features import SPLITS


def linear_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], n_classes: int,
                 lrs: list[float], epochs: int, batch_size: int, batchnorm: bool, seed: int = 0) -> dict:
    """Train one linear head per learning rate at once; choose on val, report on test."""
    torch.manual_seed(seed)
    x = {s: torch.from_numpy(features[s]).float() for s in SPLITS}
    y = {s: torch.from_numpy(labels[s]).long() for s in SPLITS}
    dim = x["train"].shape[1]
    norm = nn.BatchNorm1d(dim, affine=False) if batchnorm else nn.Identity()
    heads = nn.ModuleList(nn.Linear(dim, n_classes) for _ in lrs)
    optimizer = torch.optim.SGD([{"params": h.parameters(), "lr": lr} for h, lr in zip(heads, lrs)],
                                momentum=0.9, weight_decay=0.0)
    n = len(x["train"])
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        norm.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            z = norm(x["train"][idx])
            loss = sum(loss_fn(head(z), y["train"][idx]) for head in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    norm.eval()
    with torch.no_grad():
        acc = {s: [float((head(norm(x[s])).argmax(1) == y[s]).float().mean()) for head in heads] for s in SPLITS}
    best = int(np.argmax(acc["val"]))
    return {"test": acc["test"][best], "val": acc["val"][best], "train": acc["train"][best], "lr": lrs[best],
            "val_by_lr": dict(zip(map(str, lrs), acc["val"]))}
