"""An attribute classifier for the toy world: shape, colour, size and background heads on the small
classifier (small_classifier.py), trained on real train images only, so that it can judge generated
images independently of any model under study.

The judge of the default world ships in ``models/attribute_classifier/`` (weights, and a
``recipe.json`` naming the data it learnt from by its hash, its epochs and seed); ``judge(cfg)``
loads it when the config's world and settings are the ones it was trained with, and trains a new
one otherwise, so that a changed world is never judged by a classifier of another.
``python -m synrep attribute_classifier sample_quality.classifier=models/attribute_classifier``
retrains the shipped one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from synrep.data import toy_vocabulary, toyworld
from synrep.evaluation import small_classifier
from synrep.evaluation.small_classifier import RECIPE, WEIGHTS, SmallClassifier, predict

ATTRIBUTES = ("shape", "colour", "size", "background")


def train_classifier(cfg: DictConfig, seed: int, epochs: int) -> tuple[SmallClassifier, dict[str, float]]:
    """Train on the toy world's real train split (random horizontal flips); returns the model and
    its accuracy per attribute on the real test split (the ceiling for generated images)."""
    names = toy_vocabulary.attribute_names(cfg)
    train = toyworld.load_split(cfg, "train")
    model = small_classifier.train({k: len(names[k]) for k in ATTRIBUTES}, train["images"],
                                   {k: train[k] for k in ATTRIBUTES}, seed, epochs, desc="attribute classifier",
                                   fused=True)
    return model, test_accuracy(model, toyworld.load_split(cfg, "test"))


def test_accuracy(model: SmallClassifier, test: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy per attribute on a real split (the ceiling for generated images)."""
    predictions = predict(model, test["images"])
    return {k: float((predictions[k] == test[k]).mean()) for k in ATTRIBUTES}


def recipe(cfg: DictConfig) -> dict:
    """What a trained judge depends on: its train data (a hash of the real train split's images and
    labels), epochs, seed and architecture."""
    train = toyworld.load_split(cfg, "train")
    q = cfg.sample_quality
    return {"train_sha256": small_classifier.data_sha256(*(train[k] for k in ("images", *ATTRIBUTES))),
            "epochs": int(q.classifier_epochs), "seed": int(q.seed), "trunk": small_classifier.TRUNK,
            "classes": {k: len(v) for k, v in toy_vocabulary.attribute_names(cfg).items()}}


def save(model: SmallClassifier, cfg: DictConfig, folder: Path, accuracy: dict[str, float]) -> None:
    small_classifier.save(model, folder, recipe(cfg), accuracy)


def judge(cfg: DictConfig) -> tuple[SmallClassifier, dict[str, float], str]:
    """(classifier, its accuracy on the real test split, where it came from): the one in
    ``sample_quality.classifier`` when its recipe is this config's, else a newly trained one (never
    saved there: that folder may be the shipped judge)."""
    q = cfg.sample_quality
    folder = Path(q.classifier) if q.classifier else None
    wanted = recipe(cfg)
    model, accuracy, origin = small_classifier.load_or_train(
        folder, wanted, wanted["classes"], lambda: train_classifier(cfg, q.seed, q.classifier_epochs), "judge",
        keep=False)
    if origin != small_classifier.TRAINED_HERE:  # the recipe names the train split: measure on this world's test split
        accuracy = test_accuracy(model, toyworld.load_split(cfg, "test"))
    return model, accuracy, origin


def run(cfg: DictConfig) -> dict[str, Path]:
    """Train the judge and save it into ``sample_quality.classifier``."""
    torch.set_num_threads(cfg.threads)
    folder = Path(cfg.sample_quality.classifier)
    model, accuracy = train_classifier(cfg, cfg.sample_quality.seed, cfg.sample_quality.classifier_epochs)
    save(model, cfg, folder, accuracy)
    print("attribute classifier, accuracy on real test images: "
          + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    return {"model": folder / WEIGHTS, "recipe": folder / RECIPE}
