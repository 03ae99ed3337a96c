"""The domain classifier (evaluation/domain_classifier.py) and its reject class."""

from __future__ import annotations

import numpy as np

from tests.conftest import tmp_overrides


def test_negatives_are_each_kind_as_documented(small_world):
    from synrep.config import load_config
    from synrep.data import toyworld
    from synrep.evaluation.domain_classifier import NEGATIVE_KINDS, negatives

    cfg = load_config(tmp_overrides(small_world))
    photos = toyworld.load_split(cfg, "train")["images"][:20]
    drawings = toyworld.load_split(cfg, "domains_train")["images"][:20]
    images, labels = np.concatenate([photos, drawings]), np.repeat([0, 1], 20)
    made = negatives(images, labels, 60, seed=5)
    assert made.shape == (60, *photos.shape[1:]) and made.dtype == np.uint8
    assert np.array_equal(made, negatives(images, labels, 60, seed=5))  # deterministic
    kind = {k: made[i::len(NEGATIVE_KINDS)].astype(float) for i, k in enumerate(NEGATIVE_KINDS)}
    assert all(img.std(axis=(0, 1)).max() == 0 for img in kind["blank"])  # one flat colour each
    assert all(0 < img.std(axis=(0, 1)).max() < 20 for img in kind["blank_noise"])
    # white noise: neighbouring pixels uncorrelated; smoothed noise: strongly correlated
    def neighbour_corr(batch):
        return np.corrcoef(batch[:, :, :-1].ravel(), batch[:, :, 1:].ravel())[0, 1]
    assert abs(neighbour_corr(kind["noise"])) < 0.1 < 0.5 < neighbour_corr(kind["smooth_noise"])
    # a half is a real image's half: the left of a photo and the right of a drawing, or the reverse
    left = {img[:, :8].tobytes() for img in images}
    right = {img[:, 8:].tobytes() for img in images}
    assert all(img[:, :8].astype(np.uint8).tobytes() in left and img[:, 8:].astype(np.uint8).tobytes() in right
               for img in kind["halves"])


def test_noise_and_blanks_are_rejected_and_real_domain_images_are_not(small_world):
    """Trained on the small world with its negatives; judged on held-out images: fresh negatives of
    another seed and the real test photos and domain images."""
    import torch

    from synrep.config import load_config
    from synrep.evaluation import domain_classifier as dc

    torch.set_num_threads(1)
    cfg = load_config(tmp_overrides(small_world))
    model, held_out = dc.train_classifier(cfg, seed=0, epochs=40)
    names = dc.domain_names(cfg)
    assert names[-1] == "none" and "recall_none" in held_out
    images, labels = dc.domain_data(cfg, "test")
    real = labels != names.index("none")
    predicted = dc.predict(model, images[real])
    assert (predicted != names.index("none")).mean() >= 0.9  # real images are some domain
    noise = dc.negatives(images[real], labels[real], 60, seed=123, kinds=("noise", "smooth_noise", "blank"))
    # (the small world trains 40 steps on 40 images a class: most, not all; the study's classifier: docs/nada.md)
    assert (dc.predict(model, noise) == names.index("none")).mean() >= 0.8


def test_a_stored_classifier_of_another_recipe_is_retrained(small_world, tmp_path):
    """A classifier saved before the reject class (its classes lack 'none') is not loaded."""
    import json

    from synrep.config import load_config
    from synrep.evaluation import domain_classifier as dc
    from synrep.evaluation import small_classifier

    cfg = load_config(tmp_overrides(small_world, f"nada.domain_classifier={tmp_path}/dc", "nada.classifier_epochs=1"))
    recipe = dc.recipe(cfg)
    assert recipe["classes"][-1] == "none"
    (tmp_path / "dc").mkdir()
    (tmp_path / "dc" / dc.RECIPE).write_text(json.dumps({**recipe, "classes": recipe["classes"][:-1],
                                                          "test_accuracy": {}}))
    stored = (tmp_path / "dc" / dc.RECIPE).read_text()
    # a diagnostic (keep=False) trains its own and leaves the folder as it was
    _, _, origin = dc.load_or_train(cfg, keep=False)
    assert origin == "trained here" and (tmp_path / "dc" / dc.RECIPE).read_text() == stored
    assert not (tmp_path / "dc" / small_classifier.WEIGHTS).exists()
    _, _, origin = dc.load_or_train(cfg)
    assert origin == "trained here"
    _, _, origin = dc.load_or_train(cfg)
    assert origin == str(tmp_path / "dc")
