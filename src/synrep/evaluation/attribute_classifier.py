"""An attribute classifier for the toy world: shape, colour, size and background heads on a
timm-registered toy CNN, trained on real train images only, so that it can judge generated images
independently of any model under study."""

from __future__ import annotations

import numpy as np
import timm
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

import synrep.learning.encoders  # noqa: F401  (registers toy_cnn with timm)
from synrep.data import toyworld

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
    predictions = predict(model, test["images"])
    accuracy = {k: float((predictions[k] == test[k]).mean()) for k in ATTRIBUTES}
    return model, accuracy


@torch.no_grad()
def predict(model: AttributeClassifier, images: np.ndarray, batch: int = 512) -> dict[str, np.ndarray]:
    """The predicted class index per attribute of uint8 [N, H, W, 3] images."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ATTRIBUTES}
    for start in range(0, len(images), batch):
        logits = model(to_tensor(images[start:start + batch]))
        for k in ATTRIBUTES:
            out[k].append(logits[k].argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}
