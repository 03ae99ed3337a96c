"""A domain classifier for the toy world: is an image a photo or one of the world's other domains
(``toyworld.domains``: line drawing, colour negative, pixelated)? It judges whether a generator
adapted by StyleGAN-NADA (generation/toy/nada.py) makes images of the target domain.

The attribute classifier's network (``AttributeClassifier``: the ``toy_cnn_wide`` trunk, here with one
``domain`` head) and recipe (AdamW, one-cycle, batches of 128 with flips), trained on real images
only: as many train photos as there are images of each other domain (``toyworld.n_domain_train``)
and the ``domains_train`` split; held out: as many test photos as ``toyworld.n_domain_test`` and
``domains_test``. The attribute classifier's training function reads the photo split and its four
attributes and takes no other data, so the short loop is written here.

Saved in ``nada.domain_classifier`` (``model.pt``, ``recipe.json`` with the held-out accuracy);
``load_or_train(cfg)`` loads it when its recipe is this config's and trains a new one otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.data import toyworld
from synrep.evaluation.attribute_classifier import AttributeClassifier, to_tensor

HEAD = "domain"
WEIGHTS = "model.pt"
RECIPE = "recipe.json"
BATCH = 128


def domain_names(cfg: DictConfig) -> list[str]:
    """The classes, in label order: photo, then ``toyworld.domains``."""
    return ["photo", *cfg.toyworld.domains]


def domain_data(cfg: DictConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, 3], domain labels [N]) of a split (train | test): the first
    ``n_domain_<split>`` photos and every image of ``domains_<split>``."""
    photos = toyworld.load_split(cfg, split)
    others = toyworld.load_split(cfg, f"domains_{split}")
    n = int(cfg.toyworld[f"n_domain_{split}"])
    images = np.concatenate([photos["images"][:n], others["images"]])
    labels = np.concatenate([np.zeros(min(n, len(photos["images"])), np.int64), others["domain"] + 1])
    return images, labels


@torch.no_grad()
def predict(model: AttributeClassifier, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """The predicted domain index (into ``domain_names``) of uint8 [N, H, W, 3] images."""
    return np.concatenate([model(to_tensor(images[i:i + batch]))[HEAD].argmax(1).numpy()
                           for i in range(0, len(images), batch)])


def accuracy(model: AttributeClassifier, cfg: DictConfig, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Overall accuracy and the recall of each domain."""
    predicted = predict(model, images)
    out = {"accuracy": float((predicted == labels).mean())}
    for i, name in enumerate(domain_names(cfg)):
        out[f"recall_{name}"] = float((predicted[labels == i] == i).mean())
    return out


def train_classifier(cfg: DictConfig, seed: int, epochs: int) -> tuple[AttributeClassifier, dict[str, float]]:
    """A domain classifier trained on real train images; returns it (eval mode) and its held-out accuracy."""
    images, labels = domain_data(cfg, "train")
    torch.manual_seed(seed)
    model = AttributeClassifier({HEAD: len(domain_names(cfg))}).to(memory_format=torch.channels_last)
    x = to_tensor(images).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels)
    steps = max(1, epochs * (len(x) // BATCH))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), desc="domain classifier", unit="step", mininterval=5):
        idx = torch.randint(0, len(x), (BATCH,), generator=gen)
        flip = torch.rand(BATCH, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx])
        loss = F.cross_entropy(model(xb)[HEAD], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model, accuracy(model, cfg, *domain_data(cfg, "test"))


def recipe(cfg: DictConfig) -> dict:
    """What a trained domain classifier depends on: its train data (hashed), epochs, seed, classes."""
    images, labels = domain_data(cfg, "train")
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    n = cfg.nada
    return {"train_sha256": digest.hexdigest(), "epochs": int(n.classifier_epochs), "seed": int(n.seed),
            "trunk": "toy_cnn_wide", "classes": domain_names(cfg)}


def save(model: AttributeClassifier, cfg: DictConfig, folder: Path, held_out: dict[str, float]) -> None:
    from synrep.fileio import atomic_dir, write_json

    with atomic_dir(folder) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        write_json(tmp / RECIPE, {**recipe(cfg), "test_accuracy": held_out})


def load_or_train(cfg: DictConfig) -> tuple[AttributeClassifier, dict[str, float], str]:
    """(classifier, its held-out accuracy, where it came from): the one in ``nada.domain_classifier``
    when its recipe is this config's, else one trained now and saved there."""
    folder = Path(cfg.nada.domain_classifier)
    wanted = recipe(cfg)
    if (folder / RECIPE).exists():
        stored = json.loads((folder / RECIPE).read_text())
        if all(stored.get(k) == v for k, v in wanted.items()):
            model = AttributeClassifier({HEAD: len(wanted["classes"])}).to(memory_format=torch.channels_last)
            model.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu"))
            return model.eval(), stored["test_accuracy"], str(folder)
    model, held_out = train_classifier(cfg, cfg.nada.seed, cfg.nada.classifier_epochs)
    save(model, cfg, folder, held_out)
    return model, held_out, "trained here"


def run(cfg: DictConfig) -> dict[str, Path]:
    """Train the domain classifier and save it into ``nada.domain_classifier``."""
    import mlflow

    from synrep.tracking import mlflow_run

    torch.set_num_threads(cfg.threads)
    folder = Path(cfg.nada.domain_classifier)
    with mlflow_run(cfg, "domain_classifier", sections=("toyworld",)):
        model, held_out = train_classifier(cfg, cfg.nada.seed, cfg.nada.classifier_epochs)
        save(model, cfg, folder, held_out)
        mlflow.log_metrics({f"test.{k}": v for k, v in held_out.items()})
        mlflow.log_artifact(str(folder / RECIPE))
    print("domain classifier, held-out real images: " + ", ".join(f"{k} {v:.3f}" for k, v in held_out.items()))
    return {"model": folder / WEIGHTS, "recipe": folder / RECIPE}
