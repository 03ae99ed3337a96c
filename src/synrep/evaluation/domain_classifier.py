"""A domain classifier for the toy world: is an image a photo, one of the world's other domains
(``toyworld.domains``: line drawing, colour negative, pixelated), or none of these? It judges whether a generator
adapted by StyleGAN-NADA (recipes/nada.py) makes images of the target domain.

The small classifier the attribute classifier is too (small_classifier.py: the ``toy_cnn_wide`` trunk,
here with one ``domain`` head, and its recipe), trained on real images and the negatives below: as
many train photos as there are images of each other domain (``toyworld.n_domain_train``) and the
``domains_train`` split; held out: as many test photos as ``toyworld.n_domain_test`` and
``domains_test``.

A last class, ``none`` ("none of these"), is trained on generated negatives (``negatives``): pixel
noise (white and smoothed), blanks (one flat colour, plain or with faint noise) and mixtures of two
real images of different domains (a blend with weight 0.3 to 0.7, or the halves of two images side
by side), as many as there are photos. Without it every image is some domain, and noise that an
adaptation drifts into can count as the target domain.

Saved in ``nada.domain_classifier`` (``model.pt``, ``recipe.json`` with the held-out accuracy);
``load_or_train(cfg)`` loads it when its recipe is this config's and trains a new one otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from synrep.data import toyworld
from synrep.evaluation import small_classifier
from synrep.evaluation.small_classifier import RECIPE, WEIGHTS, SmallClassifier
from synrep.tracking import mlflow_run

HEAD = "domain"

REJECT = "none"
NEGATIVE_KINDS = ("noise", "smooth_noise", "blank", "blank_noise", "blend", "halves")


def domain_names(cfg: DictConfig) -> list[str]:
    """The classes, in label order: photo, then ``toyworld.domains``, then ``none`` (the reject class)."""
    return ["photo", *cfg.toyworld.domains, REJECT]


def negatives(images: np.ndarray, labels: np.ndarray, n: int, seed: int,
              kinds: tuple[str, ...] = NEGATIVE_KINDS) -> np.ndarray:
    """``n`` uint8 images [n, H, W, 3] that are no domain, the kinds in turn (``NEGATIVE_KINDS``):
    uniform pixel noise; Gaussian noise blurred at 1-3 px; one flat colour; a flat colour with
    faint noise (sd 4 to 16 of 255); a blend, weight 0.3-0.7, of two of ``images`` of different
    ``labels``; the left half of one and the right half of another of a different label."""
    rng = np.random.default_rng(seed)
    h, w = images.shape[1:3]
    out = np.empty((n, h, w, 3), np.uint8)

    def other_pair():
        i = rng.integers(len(images))
        j = rng.choice(np.flatnonzero(labels != labels[i]))
        return images[i].astype(np.float32), images[j].astype(np.float32)

    for k in range(n):
        kind = kinds[k % len(kinds)]
        if kind == "noise":
            img = rng.uniform(0, 255, (h, w, 3))
        elif kind == "smooth_noise":
            from scipy.ndimage import gaussian_filter

            sigma = rng.uniform(1, 3)
            field = gaussian_filter(rng.normal(size=(h, w, 3)), (sigma, sigma, 0), mode="wrap")
            img = 127.5 + 127.5 * field / max(float(np.abs(field).max()), 1e-6)
        elif kind == "blank":
            img = np.broadcast_to(rng.uniform(0, 255, 3), (h, w, 3))
        elif kind == "blank_noise":
            img = rng.uniform(0, 255, 3) + rng.normal(0, rng.uniform(4, 16), (h, w, 3))
        elif kind == "blend":
            a, b = other_pair()
            t = rng.uniform(0.3, 0.7)
            img = t * a + (1 - t) * b
        elif kind == "halves":
            a, b = other_pair()
            img = np.concatenate([a[:, : w // 2], b[:, w // 2:]], axis=1)
        else:
            raise ValueError(f"unknown negative kind {kind!r}; known: {', '.join(NEGATIVE_KINDS)}")
        out[k] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def domain_data(cfg: DictConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, 3], class labels [N]) of a split (train | test): the first
    ``n_domain_<split>`` photos, every image of ``domains_<split>``, and as many negatives as photos
    (``negatives``, made from this split's images, seeded by ``nada.seed`` and the split)."""
    photos = toyworld.load_split(cfg, split)
    others = toyworld.load_split(cfg, f"domains_{split}")
    n = min(int(cfg.toyworld[f"n_domain_{split}"]), len(photos["images"]))
    images = np.concatenate([photos["images"][:n], others["images"]])
    labels = np.concatenate([np.zeros(n, np.int64), others["domain"] + 1])
    rejects = negatives(images, labels, n, seed=int(np.random.SeedSequence([cfg.nada.seed, 3, split == "test"])
                                                    .generate_state(1)[0]))
    reject = len(domain_names(cfg)) - 1
    return np.concatenate([images, rejects]), np.concatenate([labels, np.full(n, reject, np.int64)])


def predict(model: SmallClassifier, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """The predicted domain index (into ``domain_names``) of uint8 [N, H, W, 3] images."""
    return small_classifier.predict(model, images, batch)[HEAD]


def accuracy(model: SmallClassifier, cfg: DictConfig, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Overall accuracy and the recall of each domain."""
    predicted = predict(model, images)
    out = {"accuracy": float((predicted == labels).mean())}
    for i, name in enumerate(domain_names(cfg)):
        out[f"recall_{name}"] = float((predicted[labels == i] == i).mean())
    return out


def train_classifier(cfg: DictConfig, seed: int, epochs: int) -> tuple[SmallClassifier, dict[str, float]]:
    """A domain classifier trained on real train images; returns it (eval mode) and its held-out accuracy."""
    images, labels = domain_data(cfg, "train")
    model = small_classifier.train({HEAD: len(domain_names(cfg))}, images, {HEAD: labels}, seed, epochs,
                                   desc="domain classifier")
    return model, accuracy(model, cfg, *domain_data(cfg, "test"))


def recipe(cfg: DictConfig) -> dict:
    """What a trained domain classifier depends on: its train data (hashed), epochs, seed, classes."""
    n = cfg.nada
    return {"train_sha256": small_classifier.data_sha256(*domain_data(cfg, "train")),
            "epochs": int(n.classifier_epochs), "seed": int(n.seed), "trunk": small_classifier.TRUNK,
            "classes": domain_names(cfg), "negatives": list(NEGATIVE_KINDS)}


def load_or_train(cfg: DictConfig, keep: bool = True) -> tuple[SmallClassifier, dict[str, float], str]:
    """(classifier, its held-out accuracy, where it came from): the one in ``nada.domain_classifier``
    when its recipe is this config's, else one trained now and saved there when ``keep`` (a
    diagnostic passes False: it must not replace the classifier a run was measured with)."""
    wanted = recipe(cfg)
    return small_classifier.load_or_train(
        Path(cfg.nada.domain_classifier), wanted, {HEAD: len(wanted["classes"])},
        lambda: train_classifier(cfg, cfg.nada.seed, cfg.nada.classifier_epochs), "domain classifier", keep=keep)


def run(cfg: DictConfig) -> dict[str, Path]:
    """Train the domain classifier and save it into ``nada.domain_classifier``."""
    import mlflow

    torch.set_num_threads(cfg.threads)
    folder = Path(cfg.nada.domain_classifier)
    with mlflow_run(cfg, "domain_classifier", sections=("toyworld",)):
        model, held_out = train_classifier(cfg, cfg.nada.seed, cfg.nada.classifier_epochs)
        small_classifier.save(model, folder, recipe(cfg), held_out)
        mlflow.log_metrics({f"test.{k}": v for k, v in held_out.items()})
        mlflow.log_artifact(str(folder / RECIPE))
    print("domain classifier, held-out real images: " + ", ".join(f"{k} {v:.3f}" for k, v in held_out.items()))
    return {"model": folder / WEIGHTS, "recipe": folder / RECIPE}
