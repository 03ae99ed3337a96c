"""Compositional zero-shot: can a text tower name an attribute pair that no training caption showed
together (``captions.held_out``, e.g. red rings), as well as the pairs it saw?

For each pair of attributes that a held-out pair names (e.g. colour and shape) every combination
of their values is a class ("a red ring", "a blue square", ...), its prompts the toy world's
caption templates that name both, with the pair's words (every paraphrase) and every value of the
other attributes they name. Each test image goes to the class whose averaged prompt embedding is
nearest; the accuracy (both attributes right) is reported apart on the test images of the held-out
pairs and on those of the seen ones.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
from omegaconf import DictConfig

from synrep.data import toy_vocabulary
from synrep.data.settings import TOY_ATTRIBUTES, toy_attribute_values
from synrep.evaluation.zeroshot import zero_shot_predictions
from synrep.settings import to_dict

# Each attribute's slot in the toy world's caption templates, and its words
_SLOTS = {"size": "s", "colour": "c", "shape": "o", "background": "b"}


def _words(attribute: str, value: str) -> list[str]:
    return {"shape": toy_vocabulary.SHAPE_WORDS, "size": toy_vocabulary.SIZE_WORDS,
            "background": toy_vocabulary.BACKGROUND_WORDS}.get(attribute, {value: [value]})[value]


def pair_name(attributes: tuple[str, str]) -> str:
    """``shape_colour``: a grouping's part of its metric names."""
    return "_".join(attributes)


def held_out_pairs(held_out) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``captions.held_out`` by attribute pair (in the toy world's attribute order): the value
    pairs held out, e.g. {("shape", "colour"): [("ring", "red")]}."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for pair in to_dict(held_out):
        attributes = tuple(sorted(pair, key=TOY_ATTRIBUTES.index))
        out.setdefault(attributes, []).append(tuple(pair[a] for a in attributes))
    return out


def pair_prompts(cfg: DictConfig, attributes: tuple[str, str]) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Every value combination of ``attributes`` and its prompts (module docstring)."""
    values = toy_attribute_values(cfg.toyworld)
    templates = [t for t in toy_vocabulary.TEMPLATES_PLAIN + toy_vocabulary.TEMPLATES_SIZE + toy_vocabulary.TEMPLATES_BACKGROUND
                 if all("{" + _SLOTS[a] + "}" in t for a in attributes)]
    classes = list(itertools.product(values[attributes[0]], values[attributes[1]]))
    prompts = []
    for combo in classes:
        mine = []
        for template in templates:
            slots = re.findall(r"\{(\w)\}", template)
            choices = []
            for slot in slots:
                attribute = next(a for a, s in _SLOTS.items() if s == slot)
                if attribute in attributes:
                    choices.append(_words(attribute, combo[attributes.index(attribute)]))
                else:  # another attribute the template names: each value, in its first word
                    choices.append([_words(attribute, v)[0] for v in values[attribute]])
            for words in itertools.product(*choices):
                mine.append(toy_vocabulary.with_articles(template.format(**dict(zip(slots, words)))))
        prompts.append(mine)
    return classes, prompts


def pair_accuracy(predicted: np.ndarray, truth: np.ndarray, held: np.ndarray) -> dict:
    """Accuracy of ``predicted`` class against ``truth`` on the images ``held`` marks (the held-out
    pairs') and on the others (the seen pairs'), with their counts; None where there is no image."""
    correct = np.asarray(predicted) == np.asarray(truth)
    held = np.asarray(held, bool)
    return {"held_out": float(correct[held].mean()) if held.any() else None,
            "seen": float(correct[~held].mean()) if (~held).any() else None,
            "images_held_out": int(held.sum()), "images_seen": int((~held).sum())}


def compositional_zero_shot(model, cfg: DictConfig, test_features: np.ndarray, test_attributes: dict[str, np.ndarray]
                            ) -> dict[str, dict]:
    """Per attribute pair of ``captions.held_out``, by ``pair_name``: ``pair_accuracy`` of the
    zero-shot pair classes, the held-out pairs and the number of classes."""
    values = toy_attribute_values(cfg.toyworld)
    out = {}
    for attributes, held_values in held_out_pairs(cfg.captions.held_out).items():
        classes, prompts = pair_prompts(cfg, attributes)
        a, b = (np.asarray(test_attributes[x]) for x in attributes)
        truth = a * len(values[attributes[1]]) + b  # the index of the image's combination in classes
        held = np.zeros(len(truth), bool)
        for va, vb in held_values:
            held |= (a == values[attributes[0]].index(va)) & (b == values[attributes[1]].index(vb))
        predicted = zero_shot_predictions(model, cfg, test_features, prompts)
        out[pair_name(attributes)] = {**pair_accuracy(predicted, truth, held), "classes": len(classes),
                                      "held_out_pairs": [dict(zip(attributes, v)) for v in held_values]}
    return out
