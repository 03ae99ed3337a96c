"""An attribute classifier for the toy world: shape, colour, size and background heads on a
timm-registered toy CNN, trained on real train images only, so that it can judge generated images
independently of any model under study.

The judge of the default world ships in ``models/attribute_classifier/`` (weights, and a
``recipe.json`` naming the data it learnt from by its hash, its epochs and seed); ``judge(cfg)``
loads it when the config's world and settings are the ones it was trained with, and trains a new
one otherwise, so that a changed world is never judged by a classifier of another.
``python -m synrep attribute_classifier sample_quality.classifier=models/attribute_classifier``
retrains the shipped one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from synrep.data import toyworld
from synrep.fileio import atomic_dir, write_json
import synrep.learning.encoders  # noqa: F401  (registers toy_cnn with timm)

ATTRIBUTES = ("shape", "colour", "size", "background")


class AttributeClassifier(nn.Module):
    """One linear head per attribute on a shared ``toy_cnn_wide`` trunk; float images in [0, 1]."""

    def __init__(self, n_classes: dict[str, int]):
        super().__init__()
        self.trunk = timm.create_model("toy_cnn_wide", num_classes=0)
        self.heads = nn.ModuleDict({k: nn.Linear(self.trunk.num_features, n) for k, n in n_classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {k: head(z) for k, head in self.heads.items()}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def train_classifier(cfg: DictConfig, seed: int, epochs: int) -> tuple[AttributeClassifier, dict[str, float]]:
    """Train on the toy world's real train split (random horizontal flips); returns the model and
    its accuracy per attribute on the real test split (the ceiling for generated images)."""
    names = toyworld.attribute_names(cfg)
    train = toyworld.load_split(cfg, "train")
    test = toyworld.load_split(cfg, "test")
    torch.manual_seed(seed)
    model = AttributeClassifier({k: len(names[k]) for k in ATTRIBUTES}).to(memory_format=torch.channels_last)
    x = to_tensor(train["images"]).contiguous(memory_format=torch.channels_last)
    y = {k: torch.from_numpy(train[k]) for k in ATTRIBUTES}
    steps = epochs * (len(x) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), desc="attribute classifier", unit="step", mininterval=5):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        xb = x[idx]
        flip = torch.rand(128, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        out = model(xb)
        loss = sum(F.cross_entropy(out[k], y[k][idx]) for k in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model, test_accuracy(model, test)


def test_accuracy(model: "AttributeClassifier", test: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy per attribute on a real split (the ceiling for generated images)."""
    predictions = predict(model, test["images"])
    return {k: float((predictions[k] == test[k]).mean()) for k in ATTRIBUTES}


@torch.no_grad()
def predict(model: AttributeClassifier, images: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """The predicted class index per attribute of uint8 [N, H, W, 3] images."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ATTRIBUTES}
    for start in range(0, len(images), batch):
        logits = model(to_tensor(images[start:start + batch]))
        for k in ATTRIBUTES:
            out[k].append(logits[k].argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


WEIGHTS = "model.pt"
RECIPE = "recipe.json"


def recipe(cfg: DictConfig) -> dict:
    """What a trained judge depends on: its train data (a hash of the real train split's images and
    labels), epochs, seed and architecture."""
    train = toyworld.load_split(cfg, "train")
    digest = hashlib.sha256()
    for key in ("images", *ATTRIBUTES):
        digest.update(np.ascontiguousarray(train[key]).tobytes())
    q = cfg.sample_quality
    return {"train_sha256": digest.hexdigest(), "epochs": int(q.classifier_epochs), "seed": int(q.seed),
            "trunk": "toy_cnn_wide", "classes": {k: len(v) for k, v in toyworld.attribute_names(cfg).items()}}


def save(model: AttributeClassifier, cfg: DictConfig, folder: Path, accuracy: dict[str, float]) -> None:
    with atomic_dir(folder) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        write_json(tmp / RECIPE, {**recipe(cfg), "test_accuracy": accuracy})


def judge(cfg: DictConfig) -> tuple[AttributeClassifier, dict[str, float], str]:
    """(classifier, its accuracy on the real test split, where it came from): the one in
    ``sample_quality.classifier`` when its recipe is this config's, else a newly trained one."""
    q = cfg.sample_quality
    folder = Path(q.classifier) if q.classifier else None
    if folder is not None and (folder / RECIPE).exists():
        stored = json.loads((folder / RECIPE).read_text())
        wanted = recipe(cfg)
        if all(stored.get(k) == v for k, v in wanted.items()):
            model = AttributeClassifier(wanted["classes"]).to(memory_format=torch.channels_last)
            model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu"))
            model.eval()
            return model, test_accuracy(model, toyworld.load_split(cfg, "test")), str(folder)
        differs = sorted(k for k, v in wanted.items() if stored.get(k) != v)
        print(f"{folder} was trained on another world or recipe ({', '.join(differs)}): training a new judge",
              flush=True)
    model, accuracy = train_classifier(cfg, q.seed, q.classifier_epochs)
    return model, accuracy, "trained here"


def run(cfg: DictConfig) -> dict[str, Path]:
    """Train the judge and save it into ``sample_quality.classifier``."""
    torch.set_num_threads(cfg.threads)
    folder = Path(cfg.sample_quality.classifier)
    model, accuracy = train_classifier(cfg, cfg.sample_quality.seed, cfg.sample_quality.classifier_epochs)
    save(model, cfg, folder, accuracy)
    print("attribute classifier, accuracy on real test images: "
          + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    return {"model": folder / WEIGHTS, "recipe": folder / RECIPE}
