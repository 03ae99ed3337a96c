"""Worst-group accuracy: a probe's test predictions split by groups of toy world attributes
(``eval.groups``, e.g. every (shape, background) pair), to see whether a skewed training set leaves
some combinations behind where the overall accuracy hides it.

Groups with fewer than ``eval.group_min_images`` test images are listed with their count but left
out of the worst and of the mean: the accuracy of two images says little.
"""

from __future__ import annotations

import numpy as np

from synrep.evaluation.features import EvalData


def group_accuracies(correct: np.ndarray, attributes: dict[str, np.ndarray], names: dict[str, list[str]],
                     grouping: list[str], min_images: int) -> dict:
    """Per group of ``grouping`` (attributes whose integer values ``attributes`` holds per test
    image, ``names`` their value names), the accuracy of ``correct`` (bool per image) and the image
    count; ``worst`` and ``mean`` over the groups with at least ``min_images`` images (None when
    there are none). Groups with no test image are not listed."""
    keys = np.stack([np.asarray(attributes[a]) for a in grouping], axis=1)
    combos, which, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    hits = np.bincount(which.reshape(-1), weights=np.asarray(correct, dtype=np.float64), minlength=len(combos))
    groups = []
    for combo, hit, count in zip(combos, hits, counts):
        groups.append({"group": {a: names[a][int(v)] for a, v in zip(grouping, combo)},
                       "accuracy": float(hit / count), "images": int(count), "counted": bool(count >= min_images)})
    eligible = [g["accuracy"] for g in groups if g["counted"]]
    return {"worst": min(eligible) if eligible else None, "mean": float(np.mean(eligible)) if eligible else None,
            "min_images": int(min_images), "groups": groups}


def grouping_name(grouping: list[str]) -> str:
    """``shape_background``: the grouping's part of its metric names."""
    return "_".join(grouping)


def probe_worst_groups(probe: dict, test_labels: np.ndarray, data: EvalData, groups: list[list[str]],
                       min_images: int) -> dict[str, dict]:
    """``group_accuracies`` of a probe result for each grouping, by ``grouping_name``; takes the
    result's ``test_predictions`` out of it (they are not written with the probe's numbers)."""
    correct = probe.pop("test_predictions") == np.asarray(test_labels)
    return {grouping_name(g): group_accuracies(correct, data.test_attributes, data.attribute_names, list(g),
                                               min_images) for g in groups}
