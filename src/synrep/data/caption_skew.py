"""A deliberately skewed caption set (``captions.skew``) and attribute pairs held out of it
(``captions.held_out``): which deduplicated captions the captions step keeps.

A rule matches a caption when every entry of its ``match`` does: a toy world attribute (shape,
colour, size, background) and a value or list of values, read from the caption's own image (the
train image its ``toy://train/<i>`` url names, whose attributes the caption is true of), or
``caption``, a regular expression searched in the text (any caption file, the real path). A caption
is kept with the product of the ``keep`` fractions of the rules it matches, by one uniform draw per
caption from (``skew_seed``, its row in the file), so that a caption's fate does not depend on the
rows around it. A held-out pair is a rule that keeps none: no training caption shows the pair.

The selection is applied after the dedup and before the limit, so that a limited caption set keeps
its size; it decides which captions exist, and so which real images the ``real`` source reads and
which captions every synthetic source generates from: both see the same skew. The evaluation set
(the toy world's val and test splits) is not touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl
from omegaconf import DictConfig

from synrep.data.settings import toy_attribute_values
from synrep.data.toyworld import TRAIN_URL, world_dir
from synrep.settings import ConfigError, InputError, to_dict

__all__ = ["CaptionSelection", "selection", "uniform_draws"]


@dataclass(frozen=True)
class Rule:
    match: dict[str, object]  # attribute -> tuple of value indices, or "caption" -> compiled pattern
    keep: float
    label: str  # what the stats and messages call it


def uniform_draws(source_lines: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row, from (seed, row) alone: splitmix64 of the two."""
    with np.errstate(over="ignore"):
        x = np.asarray(source_lines, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class CaptionSelection:
    """The rules of a captions section; ``keep(rows)`` says which rows of a block are kept and
    counts, per rule, the captions it matched and those kept."""

    def __init__(self, rules: list[Rule], seed: int, attributes: dict[str, np.ndarray] | None, key: str):
        self.rules, self.seed, self.attributes, self.key = rules, seed, attributes, key
        self.counts = {r.label: {"matched": 0, "kept": 0} for r in rules}

    def _image_attributes(self, rows: pl.DataFrame) -> dict[str, np.ndarray]:
        if self.attributes is None:
            return {}
        text = rows["url"].fill_null("") if "url" in rows.columns else pl.Series([""] * rows.height)
        toy = text.str.starts_with(TRAIN_URL)
        if not toy.all():
            bad = text.filter(~toy)[0]
            raise InputError(f"config key '{self.key}': a rule on toy world attributes reads each caption's image from "
                             f"its toy://train/ url; caption url {bad!r} is not one (match on 'caption' text instead)")
        index = text.str.slice(len(TRAIN_URL)).cast(pl.Int64).to_numpy()
        return {a: values[index] for a, values in self.attributes.items()}

    def keep(self, rows: pl.DataFrame) -> np.ndarray:
        """Bool per row of ``rows`` (source_line, caption[, url]): kept."""
        if not self.rules:
            return np.ones(rows.height, bool)
        attrs = self._image_attributes(rows)
        fraction = np.ones(rows.height)
        hits = []
        for rule in self.rules:
            hit = np.ones(rows.height, bool)
            for attribute, wanted in rule.match.items():
                if attribute == "caption":
                    hit &= np.array([wanted.search(t) is not None for t in rows["caption"].to_list()], bool)
                else:
                    hit &= np.isin(attrs[attribute], wanted)
            fraction[hit] *= rule.keep
            hits.append(hit)
        kept = uniform_draws(rows["source_line"].to_numpy(), self.seed) < fraction
        for rule, hit in zip(self.rules, hits):
            self.counts[rule.label]["matched"] += int(hit.sum())
            self.counts[rule.label]["kept"] += int((hit & kept).sum())
        return kept

    def record(self) -> dict:
        """What stats.json records: the rules, the seed and each rule's counts."""
        return {"seed": self.seed, "rules": self.counts}


def _describe(match: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in match.items())


def selection(cfg: DictConfig, ccfg: DictConfig, key: str) -> CaptionSelection | None:
    """The selection of a captions section (``ccfg`` at config key ``key``), or None when it has
    neither skew rules nor held-out pairs. Toy attributes are read from the toy world's train split."""
    if not ccfg.skew and not ccfg.held_out:
        return None
    values = toy_attribute_values(cfg.toyworld)
    rules: list[Rule] = []
    specs = [(to_dict(r.match), float(r.keep), f"skew[{i}] {_describe(to_dict(r.match))} keep {r.keep:g}")
             for i, r in enumerate(ccfg.skew)]
    specs += [(to_dict(p), 0.0, f"held_out[{i}] {_describe(to_dict(p))}") for i, p in enumerate(ccfg.held_out)]
    for match, keep, label in specs:
        compiled: dict[str, object] = {}
        for attribute, value in match.items():
            if attribute == "caption":
                compiled[attribute] = re.compile(str(value))
                continue
            if attribute not in values:
                raise ConfigError(f"config key '{key}': {attribute!r} is not a toy world attribute or 'caption'")
            wanted = value if isinstance(value, list) else [value]
            compiled[attribute] = np.array([values[attribute].index(v) for v in wanted], dtype=np.int64)
        rules.append(Rule(compiled, keep, label))
    attributes = None
    if any(a != "caption" for r in rules for a in r.match):
        path = world_dir(cfg) / "real" / "train.npz"
        if not path.exists():
            raise FileNotFoundError(f"toy world split 'train' not found at {path}; run `python -m synrep toyworld` "
                                    f"first (config key '{key}' reads the attributes of the captions' images)")
        with np.load(path, allow_pickle=False) as split:
            attributes = {a: split[a] for a in values}
    return CaptionSelection(rules, int(ccfg.skew_seed), attributes, key)
