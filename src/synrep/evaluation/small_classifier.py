"""The small image classifier that the judge (attribute_classifier.py) and the domain classifier
(domain_classifier.py) both are: linear heads on a shared timm-registered ``toy_cnn_wide`` trunk,
trained with one recipe (AdamW, one-cycle, batches of 128 with random horizontal flips), saved as
``model.pt`` beside a ``recipe.json`` naming what it was trained from, and loaded only when that
recipe is the one wanted. Each classifier keeps its own classes, data and held-out measure.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import synrep.learning.encoders  # noqa: F401  (registers toy_cnn with timm)
from synrep.fileio import atomic_dir, write_json
from synrep.pixels import unit_range

TRUNK = "toy_cnn_wide"
WEIGHTS = "model.pt"
RECIPE = "recipe.json"
BATCH = 128
TRAINED_HERE = "trained here"


class SmallClassifier(nn.Module):
    """One linear head per label on a shared ``toy_cnn_wide`` trunk; float images in [0, 1]."""

    def __init__(self, n_classes: dict[str, int]):
        super().__init__()
        self.trunk = timm.create_model(TRUNK, num_classes=0)
        self.heads = nn.ModuleDict({k: nn.Linear(self.trunk.num_features, n) for k, n in n_classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {k: head(z) for k, head in self.heads.items()}


def train(n_classes: dict[str, int], images: np.ndarray, labels: dict[str, np.ndarray], seed: int, epochs: int,
          desc: str, fused: bool = False) -> SmallClassifier:
    """A classifier (eval mode) trained on uint8 images [N, H, W, 3] and their class labels per head,
    the loss the sum of the heads' cross-entropies. ``fused``: AdamW's fused kernel, which the judge
    was trained with (its updates differ from the plain one's in the last bits)."""
    torch.manual_seed(seed)
    model = SmallClassifier(n_classes).to(memory_format=torch.channels_last)
    x = unit_range(images).contiguous(memory_format=torch.channels_last)
    y = {k: torch.from_numpy(v) for k, v in labels.items()}
    steps = max(1, epochs * (len(x) // BATCH))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4, fused=fused)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), desc=desc, unit="step", mininterval=5):
        idx = torch.randint(0, len(x), (BATCH,), generator=gen)
        flip = torch.rand(BATCH, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx])
        out = model(xb)
        loss = sum(F.cross_entropy(out[k], y[k][idx]) for k in y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: SmallClassifier, images: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """The predicted class index per head of uint8 [N, H, W, 3] images."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in model.heads}
    for start in range(0, len(images), batch):
        logits = model(unit_range(images[start:start + batch]))
        for k in out:
            out[k].append(logits[k].argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def data_sha256(*arrays: np.ndarray) -> str:
    """One hash of the arrays' bytes, in turn: the train data a recipe names."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def save(model: SmallClassifier, folder: Path, recipe: dict, held_out: dict[str, float]) -> None:
    with atomic_dir(folder) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        write_json(tmp / RECIPE, {**recipe, "test_accuracy": held_out})


def load_or_train(folder: Path | None, recipe: dict, n_classes: dict[str, int],
                  train_new: Callable[[], tuple[SmallClassifier, dict[str, float]]], name: str, keep: bool
                  ) -> tuple[SmallClassifier, dict[str, float], str]:
    """(classifier, its held-out accuracy as recorded, where it came from): the one saved in ``folder``
    when its recipe has every key of ``recipe`` equal, else ``train_new()``, saved into ``folder``
    when ``keep``."""
    if folder is not None and (folder / RECIPE).exists():
        stored = json.loads((folder / RECIPE).read_text())
        differs = sorted(k for k, v in recipe.items() if stored.get(k) != v)
        if not differs:
            model = SmallClassifier(n_classes).to(memory_format=torch.channels_last)
            model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu"))
            return model.eval(), stored["test_accuracy"], str(folder)
        print(f"{folder} was trained on another world or recipe ({', '.join(differs)}): training a new {name}",
              flush=True)
    model, held_out = train_new()
    if keep:
        save(model, folder, recipe, held_out)
    return model, held_out, TRAINED_HERE
