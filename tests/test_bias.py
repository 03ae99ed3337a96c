"""Bias and composition: a skewed caption set and held-out attribute pairs (synrep.data.caption_skew,
applied by the captions step), and compositional zero-shot on the held-out pairs
(synrep.evaluation.compositional)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import polars as pl
import pytest

from synrep.config import ConfigError, load_config
from synrep.data import captions, toy_vocabulary, toyworld
from synrep.evaluation import compositional
from synrep.evaluation.evaluate import flat_metrics
from tests.conftest import tmp_overrides

SKEW = "captions.skew=[{match: {shape: ring, background: light}, keep: 0.25}, {match: {caption: 'photo'}, keep: 0.5}]"
HELD_OUT = "captions.held_out=[{colour: red, shape: ring}, {size: small, shape: square}]"


def splitmix_uniform(row: int, seed: int) -> float:
    """The selection's draw, written out with Python integers (64-bit wrap by masking)."""
    mask = (1 << 64) - 1
    x = (row + seed * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    x ^= x >> 31
    return (x >> 11) / 2**53


@pytest.fixture(scope="module")
def selected(small_world, tmp_path_factory):
    """The small world's captions without and with the skew and the held-out pairs (no limit)."""
    out = {}
    for name, extra in (("plain", ()), ("skewed", (SKEW, HELD_OUT, "captions.skew_seed=3"))):
        results = tmp_path_factory.mktemp(name)
        cfg = load_config([*tmp_overrides(small_world), f"paths.results_dir={results}", "captions.limit=null", *extra])
        paths = captions.run(cfg)
        out[name] = (pl.read_parquet(paths["captions"]), json.loads(paths["stats"].read_text()))
    out["world"] = small_world / "data" / "toyworld"
    out["train"] = toyworld.load_split(out["world"], "train")
    return out


def test_skew_keeps_the_rows_a_hand_computed_rule_keeps(selected):
    plain, _ = selected["plain"]
    skewed, stats = selected["skewed"]
    train = selected["train"]
    names = json.loads((selected["world"] / "attributes.json").read_text())["attributes"]
    expected, matched = [], Counter()
    for row in plain.iter_rows(named=True):
        i = int(row["url"].rsplit("/", 1)[1])
        shape, colour = names["shape"][train["shape"][i]], names["colour"][train["colour"][i]]
        size, background = names["size"][train["size"][i]], names["background"][train["background"][i]]
        keep = 1.0
        if shape == "ring" and background == "light":
            keep *= 0.25
            matched["ring light"] += 1
        if "photo" in row["caption"]:
            keep *= 0.5
        if (colour, shape) == ("red", "ring") or (size, shape) == ("small", "square"):
            keep = 0.0
        if splitmix_uniform(row["source_line"], 3) < keep:
            expected.append(row["source_line"])
    assert skewed["source_line"].to_list() == expected
    rules = stats["selection"]["rules"]
    assert rules["skew[0] shape=ring, background=light keep 0.25"]["matched"] == matched["ring light"]
    assert stats["rows_out"] == len(expected) and stats["selection"]["seed"] == 3
    # the skew is a skew: rings on light backgrounds are a quarter as likely to stay as rings on dark
    index = skewed["url"].str.slice(len(toyworld.TRAIN_URL)).cast(pl.Int64).to_numpy()
    rings = train["shape"][index] == 1
    light = (train["background"][index] == 1) & rings
    assert light.sum() < 0.5 * (rings & ~light).sum()


def test_held_out_pairs_are_in_no_training_caption_and_in_the_test_set(selected, small_world):
    cfg = load_config(tmp_overrides(small_world))
    skewed, _ = selected["skewed"]
    named = [toy_vocabulary.parse_caption(c, cfg) for c in skewed["caption"].to_list()]
    assert not any(n["colour"] == 0 and n["shape"] == 1 for n in named)   # red ring
    assert not any(n["size"] == 0 and n["shape"] == 2 for n in named)     # small square
    # the plain set has them, so the selection removed them
    plain_named = [toy_vocabulary.parse_caption(c, cfg) for c in selected["plain"][0]["caption"].to_list()]
    assert any(n["colour"] == 0 and n["shape"] == 1 for n in plain_named)
    test = toyworld.load_split(small_world / "data" / "toyworld", "test")
    assert ((test["colour"] == 0) & (test["shape"] == 1)).sum() > 0
    assert ((test["size"] == 0) & (test["shape"] == 2)).sum() > 0


def test_selection_is_part_of_every_source_spec_that_reads_the_run_captions(small_world):
    from synrep.generation.sources import source_spec

    plain = load_config(tmp_overrides(small_world))
    skewed = load_config(tmp_overrides(small_world, SKEW))
    assert "caption_selection" not in source_spec(plain, "w2")   # the default's specs and hashes unchanged
    assert source_spec(skewed, "w2")["caption_selection"]["skew"][0]["keep"] == 0.25


def test_attribute_rules_refuse_captions_without_a_toy_url(tmp_path, small_world):
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("a red ring\thttp://example.com/1.jpg\na blue square\thttp://example.com/2.jpg\n")
    base = tmp_overrides(small_world, f"paths.results_dir={tmp_path}/results", f"captions.path={tsv}")
    with pytest.raises(ValueError, match=r"captions'.*toy://train/ url"):
        captions.run(load_config([*base, "captions.skew=[{match: {shape: ring}, keep: 0.5}]"]))
    # on text, any caption file: the real path
    paths = captions.run(load_config([*base, "captions.skew=[{match: {caption: 'ring'}, keep: 0}]"]))
    assert pl.read_parquet(paths["captions"])["caption"].to_list() == ["a blue square"]


@pytest.mark.parametrize("override, key", [
    ("captions.skew=[{match: {hue: red}, keep: 0.5}]", "captions.skew[0].match.hue"),
    ("captions.skew=[{match: {shape: hexagon}, keep: 0.5}]", "captions.skew[0].match.shape"),
    ("captions.skew=[{match: {shape: ring}, keep: 1.5}]", "captions.skew[0].keep"),
    ("captions.skew=[{match: {}, keep: 0.5}]", "captions.skew[0].match"),
    ("captions.skew=[{match: {caption: '(ring'}, keep: 0.5}]", "captions.skew[0].match.caption"),
    ("captions.held_out=[{colour: red}]", "captions.held_out[0]"),
    ("captions.held_out=[{colour: red, shape: [ring, square]}]", "captions.held_out[0]"),
    ("captions.held_out=[{colour: mauve, shape: ring}]", "captions.held_out[0].colour"),
])
def test_bad_selection_values_fail_at_load_with_their_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'".replace("[", r"\[").replace("]", r"\]")):
        load_config([override])


def test_pair_prompts_name_both_values_of_their_class(make_cfg):
    cfg = make_cfg()
    classes, prompts = compositional.pair_prompts(cfg, ("shape", "colour"))
    assert len(classes) == 6 * 8
    for (shape, colour), mine in zip(classes, prompts):
        for prompt in mine:
            named = toy_vocabulary.parse_caption(prompt, cfg)
            assert (cfg.toyworld.shapes[named["shape"]], cfg.toyworld.colours[named["colour"]]) == (shape, colour)


def test_compositional_metric_equals_a_hand_count_of_the_predictions(make_cfg, monkeypatch):
    cfg = make_cfg(HELD_OUT)
    rng = np.random.default_rng(0)
    n = 500
    attrs = {"shape": rng.integers(0, 6, n), "colour": rng.integers(0, 8, n), "size": rng.integers(0, 2, n),
             "background": rng.integers(0, 2, n)}
    shapes, colours, sizes = list(cfg.toyworld.shapes), list(cfg.toyworld.colours), ["small", "large"]
    predictions = {}

    def fake_predictions(model, cfg_, features, prompts):
        # right for about half the images, else a random class
        k = len(prompts)
        truth = (attrs["shape"] * 8 + attrs["colour"]) if k == 48 else (attrs["shape"] * 2 + attrs["size"])
        guess = np.where(rng.random(n) < 0.5, truth, rng.integers(0, k, n))
        predictions[k] = guess
        return guess

    monkeypatch.setattr(compositional, "zero_shot_predictions", fake_predictions)
    result = compositional.compositional_zero_shot(None, cfg, np.zeros((n, 4), np.float32), attrs)
    for name, k, classes, held_pair in (("shape_colour", 48, [(s, c) for s in shapes for c in colours], ("ring", "red")),
                                        ("shape_size", 12, [(s, z) for s in shapes for z in sizes], ("square", "small"))):
        hits = {"held": [], "seen": []}
        for i in range(n):
            other = attrs["colour"][i] if k == 48 else attrs["size"][i]
            true_pair = (shapes[attrs["shape"][i]], (colours if k == 48 else sizes)[other])
            right = classes[predictions[k][i]] == true_pair
            hits["held" if true_pair == held_pair else "seen"].append(right)
        r = result[name]
        assert r["held_out"] == pytest.approx(np.mean(hits["held"])) and r["images_held_out"] == len(hits["held"])
        assert r["seen"] == pytest.approx(np.mean(hits["seen"])) and r["images_seen"] == len(hits["seen"])
    flat = flat_metrics({"linear_probe": {}, "few_shot": {}, "zero_shot": {}, "compositional_zero_shot": result})
    assert flat["zeroshot_pair_shape_colour_heldout"] == result["shape_colour"]["held_out"]
    assert flat["zeroshot_pair_shape_size_seen"] == result["shape_size"]["seen"]


def test_captions_hash_leaves_the_selection_out_only_while_it_is_off(small_world):
    from synrep.settings import digest, section_hash, to_dict

    plain = load_config(tmp_overrides(small_world))
    section = {k: v for k, v in to_dict(plain.captions).items() if k not in ("skew", "skew_seed", "held_out")}
    # the hash a captions section had before the selection existed: Snakemake reruns nothing
    assert section_hash(plain, "captions") == digest({"captions": section})
    skewed = load_config(tmp_overrides(small_world, SKEW))
    seeded = load_config(tmp_overrides(small_world, SKEW, "captions.skew_seed=1"))
    assert len({section_hash(c, "captions") for c in (plain, skewed, seeded)}) == 3
