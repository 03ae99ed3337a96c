"""Worst-group accuracy (eval.groups): the per-group table against a polars group-by of the probe's
own test predictions, the worst over groups with enough images, the probe's numbers unchanged, the
default run without it, and bad attribute names caught at load time."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from synrep.config import ConfigError
from synrep.evaluation import evaluate
from synrep.evaluation.features import SPLITS, EvalData, load_eval_data
from synrep.evaluation.linear_probe import ProbeHeads, linear_probe
from synrep.evaluation.settings import TOY_ATTRIBUTES
from synrep.evaluation.worst_group import group_accuracies

NAMES = {"shape": ["circle", "square", "ring", "star"], "background": ["dark", "light"],
         "colour": ["red", "green", "blue", "white"]}


def world(seed: int = 0):
    """Blob features of 4 shapes (overlapping, so that some predictions are wrong), and per test
    image a background and a colour; (star, white) is kept rare: 3 test images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 8)) * 1.5
    feats, labels = {}, {}
    for split in SPLITS:
        labels[split] = np.repeat(np.arange(4), 50)
        feats[split] = (centres[labels[split]] + rng.normal(size=(200, 8))).astype(np.float32)
    shape = labels["test"]
    colour = rng.integers(0, 3, size=len(shape))
    colour[np.flatnonzero(shape == 3)[:3]] = 3
    attributes = {"shape": shape, "background": rng.integers(0, 2, size=len(shape)), "colour": colour}
    return feats, labels, attributes


def reference_table(correct: np.ndarray, attributes: dict[str, np.ndarray], grouping: list[str]) -> dict:
    """{(value names): (accuracy, count)} by a polars group-by."""
    frame = pl.DataFrame({**{a: [NAMES[a][v] for v in attributes[a]] for a in grouping}, "correct": correct})
    rows = frame.group_by(grouping).agg(pl.col("correct").mean().alias("accuracy"), pl.len().alias("count"))
    return {tuple(r[a] for a in grouping): (r["accuracy"], r["count"]) for r in rows.iter_rows(named=True)}


def assert_table_matches(table: dict, correct: np.ndarray, attributes: dict[str, np.ndarray],
                         grouping: list[str]) -> dict:
    """Every group's accuracy and count as the polars group-by's; returns the reference."""
    expected = reference_table(correct, attributes, grouping)
    got = {tuple(g["group"][a] for a in grouping): (g["accuracy"], g["images"]) for g in table["groups"]}
    assert got.keys() == expected.keys()
    for key, (accuracy, count) in expected.items():
        assert got[key][0] == pytest.approx(accuracy, abs=1e-12) and got[key][1] == count
    return expected


def test_probe_accuracies_are_computed_as_before_whether_or_not_predictions_are_kept():
    """The heads' evaluation against the formula it had before it could keep predictions."""
    feats, labels, _ = world()
    x = {s: torch.from_numpy(feats[s]) for s in SPLITS}
    y = {s: torch.from_numpy(labels[s]) for s in SPLITS}
    for keep in (False, True):
        torch.manual_seed(0)
        probe = ProbeHeads(8, 4, [0.01, 0.1], total_steps=10, batchnorm=True, keep_test_predictions=keep)
        for _ in range(3):
            probe.step(x["train"], y["train"])
        probe.evaluate(1, x, y)
        with torch.no_grad():
            probe.norm.eval()
            before = {s: [float((head(probe.norm(x[s])).argmax(1) == y[s]).float().mean()) for head in probe.heads]
                      for s in x}
        record = probe.history[-1]
        assert {s: record[s] for s in SPLITS} == before
        assert ("test_predictions" in record) == keep


def test_group_accuracies_match_a_polars_group_by_and_the_worst_skips_small_groups():
    rng = np.random.default_rng(1)
    _, _, attributes = world()
    correct = rng.random(len(attributes["shape"])) < 0.7
    out = group_accuracies(correct, attributes, NAMES, ["shape", "colour"], min_images=5)
    expected = assert_table_matches(out, correct, attributes, ["shape", "colour"])
    rare = next(g for g in out["groups"] if g["group"] == {"shape": "star", "colour": "white"})
    assert rare["images"] == 3 and not rare["counted"]
    eligible = [acc for acc, count in expected.values() if count >= 5]
    assert out["worst"] == min(eligible) and out["mean"] == pytest.approx(np.mean(eligible))
    assert sum(g["images"] for g in out["groups"]) == len(correct)


def test_evaluation_splits_the_probes_own_predictions_and_leaves_its_numbers(make_cfg):
    feats, labels, attributes = world()
    settings = ("eval.probe_epochs=3", "eval.fewshot_episodes=5", "eval.probe_lrs=[0.01,0.1]")
    data = EvalData(datasets={}, labels={"shape": labels}, class_names={"shape": NAMES["shape"]},
                    test_attributes=attributes, attribute_names=NAMES)
    plain = evaluate.evaluate_features(feats, data, make_cfg(*settings))
    grouped = evaluate.evaluate_features(feats, data, make_cfg(*settings, "eval.groups=[[shape,background],"
                                                                           "[shape,colour]]"))
    assert grouped["linear_probe"] == plain["linear_probe"]  # no predictions left in the written result
    assert set(grouped["worst_group"]["shape"]) == {"shape_background", "shape_colour"}

    # the same probe, run again for its predictions: they give its test accuracy and the tables
    probe = linear_probe(feats, labels, 4, lrs=[0.01, 0.1], epochs=3, batch_size=256, batchnorm=True,
                         keep_test_predictions=True)
    correct = probe.pop("test_predictions") == labels["test"]
    assert probe == plain["linear_probe"]["shape"] and correct.mean() == pytest.approx(probe["test"])
    for grouping in (["shape", "background"], ["shape", "colour"]):
        table = grouped["worst_group"]["shape"]["_".join(grouping)]
        expected = assert_table_matches(table, correct, attributes, grouping)
        eligible = [acc for acc, count in expected.values() if count >= 5]
        assert table["worst"] == min(eligible)
    flat = evaluate.flat_metrics(grouped)
    assert flat["probe_shape_worst_shape_background"] == grouped["worst_group"]["shape"]["shape_background"]["worst"]
    assert set(flat) - set(evaluate.flat_metrics(plain)) == {f"probe_shape_{kind}_shape_{other}"
                                                            for kind in ("worst", "groupmean")
                                                            for other in ("background", "colour")}


def test_default_run_writes_no_worst_group_metric(small_world, make_cfg):
    settings = ("eval.probe_epochs=2", "eval.fewshot_episodes=5", "train.encoder_kwargs.width=8",
                "eval.raw_pixels_size=null")
    plain = evaluate.baselines(make_cfg(*settings, base=small_world), seed=0)["random_init"]
    assert "worst_group" not in plain
    assert not [k for k in evaluate.flat_metrics(plain) if "worst" in k or "groupmean" in k]
    cfg = make_cfg(*settings, "eval.groups=[[shape,background]]", base=small_world)
    grouped = evaluate.baselines(cfg, seed=0)["random_init"]
    assert grouped["linear_probe"] == plain["linear_probe"]
    table = grouped["worst_group"]["shape"]["shape_background"]
    assert sum(g["images"] for g in table["groups"]) == cfg.toyworld.n_test


def test_toy_world_test_attributes_are_every_attribute_of_the_test_split(small_world, make_cfg):
    from synrep.data import toy_vocabulary, toyworld

    cfg = make_cfg(base=small_world)
    data = load_eval_data(cfg)
    assert set(data.test_attributes) == set(TOY_ATTRIBUTES) == set(toy_vocabulary.attribute_names(cfg))
    test = toyworld.load_split(cfg.eval.root, "test")
    for name in TOY_ATTRIBUTES:
        assert np.array_equal(data.test_attributes[name], test[name])


def test_a_bad_attribute_name_is_one_line_naming_the_key(make_cfg):
    with pytest.raises(ConfigError) as err:
        make_cfg("eval.groups=[[shape,backgrund]]")
    message = str(err.value)
    assert "\n" not in message and message.startswith("config key 'eval.groups[0][1]'") and "backgrund" in message
    with pytest.raises(ConfigError, match=r"'eval.groups\[0\]'.*toy world"):
        make_cfg("eval.groups=[[shape]]", "eval.dataset=CIFAR10")
