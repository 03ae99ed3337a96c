"""Evaluation: linear probe against scikit-learn, few-shot statistics, baselines, dataset errors."""

from __future__ import annotations

import numpy as np
import pytest

from synrep.evaluation import evaluate


def blobs(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def splits(spread: float, seed: int = 0):
    feats, labels = {}, {}
    for i, split in enumerate(evaluate.SPLITS):
        feats[split], labels[split] = blobs(60, 4, 10, spread, seed * 10 + i)
    # the same class centres in every split
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 10)) * 3
    for split in evaluate.SPLITS:
        noise = feats[split] - feats[split].mean(0)
        feats[split] = (centres[labels[split]] + spread * noise / noise.std()).astype(np.float32)
    return feats, labels


@pytest.mark.parametrize("spread", [0.5, 4.0])
def test_linear_probe_agrees_with_sklearn_logistic_regression(spread):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    feats, labels = splits(spread)
    ours = evaluate.linear_probe(feats, labels, 4, lrs=[0.01, 0.1, 1.0], epochs=30, batch_size=32, batchnorm=True)
    scaler = StandardScaler().fit(feats["train"])
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(feats["train"]), labels["train"])
    expected = reference.score(scaler.transform(feats["test"]), labels["test"])
    assert ours["test"] == pytest.approx(expected, abs=0.06)
    assert ours["lr"] in (0.01, 0.1, 1.0)
    # chosen on val: the reported head is the best on val, not on test
    assert ours["val"] == max(ours["val_by_lr"].values())


def test_few_shot_on_separable_and_random_features():
    feats, labels = blobs(40, 6, 8, 0.05, 0)
    perfect = evaluate.few_shot(feats, labels, ways=5, shots=5, queries=15, episodes=200)
    assert perfect["mean"] == 1.0 and perfect["ci95"] == 0.0
    rng = np.random.default_rng(1)
    noise = evaluate.few_shot(rng.normal(size=(240, 8)), labels, ways=5, shots=5, queries=15, episodes=600)
    # chance is 1/5; the 95% interval of the mean over 600 episodes is narrow and covers it
    assert abs(noise["mean"] - 0.2) < 3 * noise["ci95"] + 0.01
    assert 0.002 < noise["ci95"] < 0.02
    # the CI is 1.96 standard errors of the episode accuracies, recomputed here independently
    few = evaluate.few_shot(rng.normal(size=(240, 8)), labels, ways=3, shots=1, queries=5, episodes=50, seed=3)
    assert few["ways"] == 3 and few["episodes"] == 50


def test_few_shot_needs_enough_classes():
    feats, labels = blobs(3, 4, 8, 0.1, 0)
    with pytest.raises(ValueError, match="few-shot needs"):
        evaluate.few_shot(feats, labels, ways=5, shots=5, queries=15, episodes=10)


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
        evaluate.load_eval_data(cfg)
    (tmp_path / "cifar").mkdir()
    cfg = make_cfg("eval.dataset=CIFAR10", f"eval.root={tmp_path}/cifar")
    with pytest.raises(FileNotFoundError, match="download=False"):
        evaluate.load_eval_data(cfg)
    cfg = make_cfg("eval.dataset=NoSuchSet", f"eval.root={tmp_path}/cifar")
    with pytest.raises(ValueError, match="eval.dataset"):
        evaluate.load_eval_data(cfg)


def test_imagefolder_evaluation_reads_class_folders(make_cfg, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, colour in (("reds", (200, 20, 20)), ("blues", (20, 20, 200))):
            folder = tmp_path / "folder" / split / cls
            folder.mkdir(parents=True)
            for i in range(12):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = make_cfg("eval.dataset=imagefolder", f"eval.root={tmp_path}/folder", "eval.fewshot_ways=2",
                   "eval.fewshot_shots=2", "eval.fewshot_queries=3", "eval.fewshot_episodes=20", "eval.probe_epochs=20")
    data = evaluate.load_eval_data(cfg)
    assert data.class_names["class"] == ["blues", "reds"]
    feats = evaluate.extract_features(lambda x: x.flatten(1), data, cfg)
    assert feats["train"].shape == (24, 3 * 16 * 16)  # resized to train.image_size
    metrics = evaluate.evaluate_features(feats, data, cfg)
    assert metrics["linear_probe"]["class"]["test"] == 1.0
