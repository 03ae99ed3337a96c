"""Few-shot evaluation: N-way K-shot episodes, nearest-prototype classifier on l2-normalised features."""

from __future__ import annotations

import math

import numpy as np


def few_shot(features: np.ndarray, labels: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
             seed: int = 0) -> dict:
    """N-way K-shot episodes with a nearest-prototype classifier (cosine); mean and 95% CI."""
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= shots + queries]
    ways = min(ways, len(classes))
    if ways < 2:
        raise ValueError(f"few-shot needs 2 classes with {shots + queries} images each; found {len(classes)}")
    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    rng = np.random.default_rng(seed)
    accuracies = np.empty(episodes)
    for e in range(episodes):
        chosen = rng.choice(classes, size=ways, replace=False)
        picks = [rng.choice(by_class[c], size=shots + queries, replace=False) for c in chosen]
        support = np.stack([z[p[:shots]] for p in picks])  # [ways, shots, d]
        query = np.concatenate([z[p[shots:]] for p in picks])  # [ways*queries, d]
        truth = np.repeat(np.arange(ways), queries)
        prototypes = support.mean(axis=1)
        prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
        accuracies[e] = ((query @ prototypes.T).argmax(1) == truth).mean()
    return {"mean": float(accuracies.mean()),
            "ci95": float(1.96 * accuracies.std(ddof=1) / math.sqrt(episodes)) if episodes > 1 else 0.0,
            "ways": int(ways), "shots": int(shots), "queries": int(queries), "episodes": int(episodes)}
