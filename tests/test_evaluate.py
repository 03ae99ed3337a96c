"""Evaluation: the linear probe against scikit-learn and on separable / shuffled labels, few-shot
on clusters of known difficulty, zero-shot with a known text embedding, the feature cache,
baselines, dataset errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synrep.evaluation import evaluate
from synrep.evaluation.features import SPLITS, cached_features, load_eval_data
from synrep.evaluation.fewshot import few_shot
from synrep.evaluation.linear_probe import linear_probe
from synrep.evaluation.zeroshot import zero_shot


def blobs(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def splits(spread: float, seed: int = 0):
    feats, labels = {}, {}
    for i, split in enumerate(SPLITS):
        feats[split], labels[split] = blobs(60, 4, 10, spread, seed * 10 + i)
    # the same class centres in every split
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 10)) * 3
    for split in SPLITS:
        noise = feats[split] - feats[split].mean(0)
        feats[split] = (centres[labels[split]] + spread * noise / noise.std()).astype(np.float32)
    return feats, labels


# --------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spread", [0.5, 4.0])
def test_linear_probe_agrees_with_sklearn_logistic_regression(spread):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    feats, labels = splits(spread)
    ours = linear_probe(feats, labels, 4, lrs=[0.01, 0.1, 1.0], epochs=30, batch_size=32, batchnorm=True)
    scaler = StandardScaler().fit(feats["train"])
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(feats["train"]), labels["train"])
    expected = reference.score(scaler.transform(feats["test"]), labels["test"])
    assert ours["test"] == pytest.approx(expected, abs=0.06)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_linear_probe_separable_features_and_shuffled_labels(batchnorm):
    feats, labels = splits(0.05)
    separable = linear_probe(feats, labels, 4, lrs=[0.1], epochs=20, batch_size=32, batchnorm=batchnorm)
    assert separable["train"] == separable["val"] == separable["test"] == 1.0

    # labels shuffled in every split: the features say nothing about them, so test is at chance
    # (1/4; 240 test rows give a standard error of 0.028)
    rng = np.random.default_rng(5)
    shuffled = {s: rng.permutation(labels[s]) for s in SPLITS}
    chance = linear_probe(feats, shuffled, 4, lrs=[0.01, 0.1], epochs=20, batch_size=32, batchnorm=batchnorm)
    assert abs(chance["test"] - 0.25) < 0.12


def test_linear_probe_chooses_on_val_and_reports_on_test():
    """lr 0 leaves a head at its random initialisation; lr 0.1 learns the (separable) classes. The
    val labels are a derangement of the true ones, so the trained head scores 0 on val and loses
    to the untrained one: the reported head is the untrained one, at chance on test, although
    the trained head would score 1.0 there."""
    feats, labels = splits(0.05)
    deranged = dict(labels, val=(labels["val"] + 1) % 4)
    out = linear_probe(feats, deranged, 4, lrs=[0.0, 0.1], epochs=20, batch_size=32, batchnorm=True)
    assert out["val_by_lr"]["0.1"] == 0.0 and out["val_by_lr"]["0.0"] > 0.0
    assert out["lr"] == 0.0 and out["val"] == out["val_by_lr"]["0.0"]
    assert out["test"] < 0.6
    trained = linear_probe(feats, labels, 4, lrs=[0.1], epochs=20, batch_size=32, batchnorm=True)
    assert trained["test"] == 1.0


# --------------------------------------------------------------------------------------------
# Few-shot
# --------------------------------------------------------------------------------------------


def test_few_shot_on_separable_and_random_features():
    feats, labels = blobs(40, 6, 8, 0.05, 0)
    perfect = few_shot(feats, labels, ways=5, shots=5, queries=15, episodes=200)
    assert perfect["mean"] == 1.0 and perfect["ci95"] == 0.0
    rng = np.random.default_rng(1)
    noise = few_shot(rng.normal(size=(240, 8)), labels, ways=5, shots=5, queries=15, episodes=600)
    # chance is 1/5; the 95% interval of the mean over 600 episodes is narrow and covers it
    assert abs(noise["mean"] - 0.2) < 3 * noise["ci95"] + 0.01
    assert 0.002 < noise["ci95"] < 0.02


def test_few_shot_accuracy_of_a_mix_of_separable_and_identical_classes():
    """Classes 0-2 sit at separate directions, classes 3 and 4 share one. In a 2-way episode (10
    equally likely pairs), 9 pairs are told apart perfectly and the pair {3, 4} at chance, so the
    expected accuracy is (9 + 0.5) / 10 = 0.95."""
    rng = np.random.default_rng(0)
    directions = np.eye(8)[[0, 1, 2, 3, 3]] * 10
    labels = np.repeat(np.arange(5), 30)
    feats = directions[labels] + rng.normal(size=(len(labels), 8))
    out = few_shot(feats, labels, ways=2, shots=5, queries=10, episodes=2000, seed=1)
    assert out["mean"] == pytest.approx(0.95, abs=max(3 * out["ci95"], 0.01))
    assert out["ways"] == 2


def test_few_shot_ci_matches_the_spread_over_seeds():
    """ci95 is 1.96 standard errors of the mean episode accuracy: compare its implied standard
    error with the standard deviation of the mean over 40 independent seeds (which has a
    relative standard error of about 11%)."""
    feats, labels = blobs(20, 6, 8, 3.0, 2)
    runs = [few_shot(feats, labels, ways=5, shots=1, queries=5, episodes=100, seed=s) for s in range(40)]
    spread = np.std([r["mean"] for r in runs], ddof=1)
    implied = np.mean([r["ci95"] for r in runs]) / 1.96
    assert 0.5 < np.mean([r["mean"] for r in runs]) < 0.95  # neither trivial nor at chance
    assert spread == pytest.approx(implied, rel=0.35)


def test_few_shot_ways_capped_by_classes_and_needs_enough_images():
    feats, labels = blobs(20, 3, 8, 0.05, 0)
    out = few_shot(feats, labels, ways=10, shots=2, queries=3, episodes=20)
    assert out["ways"] == 3 and out["mean"] == 1.0
    feats, labels = blobs(3, 4, 8, 0.1, 0)
    with pytest.raises(ValueError, match="few-shot needs"):
        few_shot(feats, labels, ways=5, shots=5, queries=15, episodes=10)


# --------------------------------------------------------------------------------------------
# Zero-shot
# --------------------------------------------------------------------------------------------


class BagOfTokens(torch.nn.Module):
    """A stand-in for a model with a text tower: a text embeds as the sum of fixed random token
    vectors; an image feature is its own embedding."""

    has_text = True

    def __init__(self, dim: int = 16):
        super().__init__()
        table = torch.randn(49408, dim, generator=torch.Generator().manual_seed(0))
        table[0] = 0  # padding
        self.table = table

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens].sum(1)

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        return features


def test_zero_shot_picks_the_class_of_the_nearest_averaged_prompt(make_cfg):
    from synrep.learning.step import caption_tokens

    cfg = make_cfg()
    model = BagOfTokens()
    names = ["cat", "car", "tree", "boat"]
    prompts = [[f"a photo of a {n}.", f"a drawing of a {n}."] for n in names]
    # the reference class embedding, computed here: mean of the normalised prompt embeddings
    normalise = torch.nn.functional.normalize
    classes = torch.stack([normalise(normalise(model.embed_text(caption_tokens(cfg, p)), dim=1).mean(0), dim=0)
                           for p in prompts])
    labels = np.repeat(np.arange(4), 10)
    rng = np.random.default_rng(0)
    images = (classes.numpy()[labels] + 0.02 * rng.normal(size=(40, 16))).astype(np.float32)
    assert zero_shot(model, cfg, images, labels, prompts) == 1.0
    assert zero_shot(model, cfg, images, (labels + 1) % 4, prompts) == 0.0
    # one image per class at the embedding of a single prompt still lands on its class
    single = normalise(model.embed_text(caption_tokens(cfg, [p[0] for p in prompts])), dim=1).numpy()
    assert zero_shot(model, cfg, single, np.arange(4), prompts) == 1.0


# --------------------------------------------------------------------------------------------
# Features, baselines, datasets
# --------------------------------------------------------------------------------------------


def test_cached_features_recompute_only_for_another_key(tmp_path):
    calls = []

    def compute(split):
        calls.append(split)
        return np.full((2, 3), len(calls), dtype=np.float32)

    folder = tmp_path / "features"
    first = cached_features(folder, "model.pt:10:1", SPLITS, compute)
    again = cached_features(folder, "model.pt:10:1", SPLITS, compute)
    assert calls == list(SPLITS) and all(np.array_equal(first[s], again[s]) for s in SPLITS)
    changed = cached_features(folder, "model.pt:10:2", SPLITS, compute)
    assert len(calls) == 6 and changed["test"][0, 0] == 6.0
    assert cached_features(folder, "model.pt:10:2", SPLITS, compute)["test"][0, 0] == 6.0 and len(calls) == 6
    # the blocks of the old key are gone: one .npy a split
    assert len(list(folder.glob("*.npy"))) == len(SPLITS)


def test_baselines_sit_below_a_trained_probe_ceiling(small_world, make_cfg):
    cfg = make_cfg("eval.probe_epochs=5", "eval.fewshot_episodes=50", "train.encoder_kwargs.width=8",
                   base=small_world)
    results = evaluate.baselines(cfg, seed=0)
    n_shapes = len(cfg.toyworld.shapes)
    for name in ("random_init", "raw_pixels"):
        flat = evaluate.flat_metrics(results[name])
        # the toy evaluation is hard: neither baseline reads shape well, both beat nothing by much
        assert 0.8 / n_shapes < flat["probe_shape"] < 0.6, (name, flat)
        assert set(flat) >= {"probe_shape", "probe_size", "fewshot_shape", "fewshot_shape_ci95"}


def test_missing_datasets_say_where_they_were_looked_for(make_cfg, tmp_path):
    cfg = make_cfg("eval.dataset=imagefolder", f"eval.root={tmp_path}/imagenet")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/imagenet"):
        load_eval_data(cfg)
    (tmp_path / "cifar").mkdir()
    cfg = make_cfg("eval.dataset=CIFAR10", f"eval.root={tmp_path}/cifar")
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_eval_data(cfg)
    cfg = make_cfg("eval.dataset=NoSuchSet", f"eval.root={tmp_path}/cifar")
    with pytest.raises(ValueError, match="eval.dataset"):
        load_eval_data(cfg)


def test_raw_pixels_are_pooled_to_a_bounded_size():
    """224 px images would give 150,528 dims per image: the baseline pools them to eval.raw_pixels_size."""
    images = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).reshape(2, 3, 64, 64)
    pooled = evaluate.raw_pixels(images, 16)
    assert pooled.shape == (2, 3 * 16 * 16)
    # each value is the mean of a 4 x 4 block of the image
    assert pooled[0, 0].item() == images[0, 0, :4, :4].mean().item()
    small = torch.rand(2, 3, 16, 16)
    assert torch.equal(evaluate.raw_pixels(small, 16), small.flatten(1))  # the toy world: as it was


def test_raw_pixels_baseline_can_be_left_out(small_world, make_cfg):
    cfg = make_cfg("eval.probe_epochs=1", "eval.fewshot_episodes=5", "train.encoder_kwargs.width=8",
                   "eval.raw_pixels_size=null", base=small_world)
    assert set(evaluate.baselines(cfg, seed=0)) == {"random_init"}


def test_batched_few_shot_logistic_predicts_as_scikit_learn():
    """logistic_episodes solves RFS's scikit-learn model for many episodes at once: the same
    predictions (up to near-ties) on normalised features of overlapping classes."""
    from synrep.evaluation.fewshot import _logistic, logistic_episodes

    rng = np.random.default_rng(0)
    episodes, ways, shots, queries, dim = 40, 5, 5, 15, 32
    centres = rng.normal(size=(episodes, ways, 1, dim))
    support = (centres + 1.5 * rng.normal(size=(episodes, ways, shots, dim))).reshape(episodes, -1, dim)
    query = (centres + 1.5 * rng.normal(size=(episodes, ways, queries, dim))).reshape(episodes, -1, dim)
    support /= np.linalg.norm(support, axis=2, keepdims=True)
    query /= np.linalg.norm(query, axis=2, keepdims=True)
    labels = np.repeat(np.arange(ways), shots)
    batched = logistic_episodes(support, np.tile(labels, (episodes, 1)), query, ways)
    reference = np.stack([_logistic(s, labels, q) for s, q in zip(support, query)])
    assert (batched == reference).mean() > 0.995
    truth = np.repeat(np.arange(ways), queries)
    np.testing.assert_allclose((batched == truth).mean(1), (reference == truth).mean(1), atol=1 / queries / ways + 1e-9)
