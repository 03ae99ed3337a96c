"""The evaluation protocol: nothing is chosen on the reported split (ImageNet's val is
reported, a stratified hold-out of train selects), the official linear probe's options (lr and epoch
chosen every probe_eval_every epochs, RandomResizedCrop + flip through the frozen encoder,
Resize/CenterCrop by crop_pct, BatchNorm without affine, eps 1e-6), zero-shot with ImageNet's class
names and CLIP's templates, few-shot by RFS's logistic regression. Everything runs on random arrays,
tiny PNG folders and toy encoders, never through training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synrep.config import ConfigError
from synrep.evaluation import evaluate
from synrep.evaluation.features import extract_features, load_eval_data, stratified_holdout
from synrep.evaluation.linear_probe import ProbeHeads, linear_probe, linear_probe_augmented

# --------------------------------------------------------------------------------------------
# Splits: select on val (or a stratified hold-out of train), report test
# --------------------------------------------------------------------------------------------


def _image_folder(root, splits=("train", "val"), classes=(("reds", (200, 20, 20)), ("blues", (20, 20, 200))),
                  per_class=12, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for cls, colour in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_stratified_holdout_keeps_class_shares_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    kept, held = stratified_holdout(labels, 16, seed=0)
    assert np.bincount(labels[held]).tolist() == [10, 5, 1]
    assert np.bincount(labels[kept]).tolist() == [90, 45, 9]
    assert len(kept) + len(held) == 160 and not set(kept) & set(held)
    assert np.array_equal(np.union1d(kept, held), np.arange(160))
    again_kept, again_held = stratified_holdout(labels, 16, seed=0)
    assert np.array_equal(again_held, held) and np.array_equal(again_kept, kept)  # deterministic
    assert not np.array_equal(stratified_holdout(labels, 16, seed=1)[1], held)  # and seeded
    # a fraction in (0, 1): of all training images, stratified the same way
    assert np.bincount(labels[stratified_holdout(labels, 0.5)[1]]).tolist() == [50, 25, 5]
    # shuffled labels: the per-class counts do not depend on the order of the images
    shuffled = np.random.default_rng(0).permutation(labels)
    assert np.bincount(shuffled[stratified_holdout(shuffled, 16)[1]]).tolist() == [10, 5, 1]


@pytest.mark.parametrize("holdout, why", [(160, "holds out 160 of 160"), (500, "holds out 500 of 160"),
                                          (0.001, "holds out 0 of 160"), (0.97, "leave class 2 no training image")])
def test_stratified_holdout_fails_naming_the_config_key(holdout, why):
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    with pytest.raises(ValueError, match=why) as err:
        stratified_holdout(labels, holdout)
    message = str(err.value)
    assert "config key 'eval.holdout'" in message and "\n" not in message


def test_imagefolder_train_val_reports_val_and_selects_on_held_out_train_images(make_cfg, tmp_path):
    """ImageNet's layout ({train, val}): val is reported, and the probe's lr is chosen on train
    images held out per class, never on val."""
    _image_folder(tmp_path / "folder")
    cfg = make_cfg("eval.dataset=imagefolder", f"eval.root={tmp_path}/folder", "eval.fewshot_ways=2",
                   "eval.fewshot_shots=2", "eval.fewshot_queries=3", "eval.fewshot_episodes=20", "eval.probe_epochs=20",
                   "eval.holdout=6")
    data = load_eval_data(cfg)
    assert data.class_names["class"] == ["blues", "reds"]
    y = data.labels["class"]
    assert len(y["test"]) == 24 and np.bincount(y["test"]).tolist() == [12, 12]  # the val folder
    assert data.datasets["test"].dataset.root.endswith("val")
    assert np.bincount(y["val"]).tolist() == [3, 3] and np.bincount(y["train"]).tolist() == [9, 9]
    held, kept = data.datasets["val"].indices, data.datasets["train"].indices
    assert data.datasets["val"].dataset is data.datasets["train"].dataset  # both from the train folder
    assert not set(held) & set(kept) and len(set(held) | set(kept)) == 24
    assert np.array_equal(load_eval_data(cfg).datasets["val"].indices, held)  # seeded
    feats = extract_features(lambda x: x.flatten(1), data, cfg)
    assert feats["train"].shape == (18, 3 * 16 * 16)  # resized to train.image_size
    metrics = evaluate.evaluate_features(feats, data, cfg)
    assert metrics["linear_probe"]["class"]["test"] == 1.0
    assert metrics["few_shot"]["class"]["mean"] == 1.0
    # a fraction of train; too many held out; a class left without training images
    frac = load_eval_data(make_cfg("eval.dataset=imagefolder", f"eval.root={tmp_path}/folder", "eval.holdout=0.25"))
    assert np.bincount(frac.labels["class"]["val"]).tolist() == [3, 3]
    for bad in ("24", "100", "0.99"):
        with pytest.raises(ValueError, match="eval.holdout"):
            load_eval_data(make_cfg("eval.dataset=imagefolder", f"eval.root={tmp_path}/folder", f"eval.holdout={bad}"))


def test_imagefolder_train_val_test_selects_on_val_and_reports_test(make_cfg, tmp_path):
    _image_folder(tmp_path / "folder", splits=("train", "val", "test"), per_class=4)
    data = load_eval_data(make_cfg("eval.dataset=imagefolder", f"eval.root={tmp_path}/folder"))
    for split in ("train", "val", "test"):
        assert data.datasets[split].indices is None and data.datasets[split].dataset.root.endswith(split)
        assert np.bincount(data.labels["class"][split]).tolist() == [4, 4]


def test_torchvision_dataset_holds_out_from_train_and_reports_test(make_cfg, tmp_path, monkeypatch):
    import torchvision
    from PIL import Image

    class Tiny(torch.utils.data.Dataset):
        classes = ["cat", "dog", "fish"]

        def __init__(self, root, train, download):
            assert not download
            self.targets = list(np.repeat([0, 1, 2], 20 if train else 5))

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return Image.new("RGB", (16, 16), (self.targets[i] * 80, 0, 0)), self.targets[i]

    monkeypatch.setattr(torchvision.datasets, "Tiny", Tiny, raising=False)
    (tmp_path / "tiny").mkdir()
    data = load_eval_data(make_cfg("eval.dataset=Tiny", f"eval.root={tmp_path}/tiny", "eval.holdout=0.1"))
    y = data.labels["class"]
    assert np.bincount(y["test"]).tolist() == [5, 5, 5]
    assert np.bincount(y["val"]).tolist() == [2, 2, 2] and np.bincount(y["train"]).tolist() == [18, 18, 18]
    assert data.prompts["class"][2][0] == "a bad photo of a fish."


def test_toy_world_keeps_its_own_three_splits(small_world, make_cfg):
    from synrep.data import toyworld

    cfg = make_cfg(base=small_world)
    data = load_eval_data(cfg)
    for split in ("train", "val", "test"):
        assert np.array_equal(data.labels["shape"][split], toyworld.load_split(cfg.eval.root, split)["shape"])
    assert cfg.eval.holdout == 10000 and cfg.eval.crop_pct == 1.0 and cfg.eval.probe_eval_every is None


def test_eval_config_keys_are_checked(make_cfg):
    cfg = make_cfg()
    e = cfg.eval
    assert (e.holdout, e.probe_eval_every, e.probe_augment, e.crop_pct, e.class_names, e.fewshot_classifier) == (
        10000, None, False, 1.0, None, "logistic")
    assert "val_fraction" not in e
    for bad, key in (("eval.holdout=0", "eval.holdout"), ("eval.holdout=-3", "eval.holdout"),
                     ("eval.probe_eval_every=0", "eval.probe_eval_every"), ("eval.crop_pct=0", "eval.crop_pct"),
                     ("eval.crop_pct=1.2", "eval.crop_pct"), ("eval.fewshot_classifier=svm", "eval.fewshot_classifier")):
        with pytest.raises(ConfigError, match=key):
            make_cfg(bad)
    with pytest.raises(ConfigError, match="val_fraction"):
        make_cfg("eval.val_fraction=0.1")


# --------------------------------------------------------------------------------------------
# Linear probe: selection, epochs, BatchNorm, augmented training
# --------------------------------------------------------------------------------------------


def test_probe_chooses_the_lr_on_the_selection_split_not_the_reported_one():
    """Selection and test labels disagree: test would pick the untrained head (lr 0, chance), val
    the trained one (lr 1); the reported number is the trained head's test accuracy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    feats = {"train": x, "val": x, "test": x}
    result = linear_probe(feats, {"train": y, "val": y, "test": 1 - y}, 2, [0.0, 1.0], 6, 50, False, eval_every=2)
    assert result["lr"] == 1.0 and result["val"] > 0.95 and result["test"] < 0.05
    assert result["epochs_compared"] == 3 and result["epoch"] in (2, 4, 6)


def test_probe_chooses_the_epoch_on_the_selection_split():
    heads = ProbeHeads(4, 2, [0.1, 1.0], 10, batchnorm=False, eval_every=10)
    heads.history = [{"epoch": 10, "val": [0.9, 0.5], "test": [0.2, 0.99]},
                     {"epoch": 20, "val": [0.7, 0.8], "test": [0.95, 0.3]},
                     {"epoch": 30, "val": [0.85, 0.6], "test": [0.99, 0.99]}]
    result = heads.result()
    assert (result["lr"], result["epoch"], result["val"], result["test"]) == (0.1, 10, 0.9, 0.2)
    flat = evaluate.flat_metrics({"linear_probe": {"shape": result}, "few_shot": {}, "zero_shot": {}})
    assert flat == {"probe_shape": 0.2, "probe_shape_val": 0.9, "probe_shape_epoch": 10}


def test_probe_epoch_is_recorded_only_with_probe_eval_every():
    feats = {s: np.random.default_rng(i).normal(size=(40, 3)).astype(np.float32) for i, s in enumerate(("train", "val", "test"))}
    labels = {s: (f[:, 0] > 0).astype(int) for s, f in feats.items()}
    final = linear_probe(feats, labels, 2, [0.1, 1.0], 4, 16, True)
    chosen = linear_probe(feats, labels, 2, [0.1, 1.0], 4, 16, True, eval_every=10)  # only the last epoch
    assert final["epoch"] == chosen["epoch"] == 4 and final["epochs_compared"] == 1
    flat = evaluate.flat_metrics({"linear_probe": {"a": final, "b": chosen}, "few_shot": {}, "zero_shot": {}})
    assert "probe_a_epoch" not in flat and flat["probe_b_epoch"] == 4
    assert set(flat) == {"probe_a", "probe_a_val", "probe_b", "probe_b_val", "probe_b_epoch"}


def test_probe_batchnorm_has_no_affine_and_eps_1e_6():
    heads = ProbeHeads(8, 3, [0.1], 10, batchnorm=True)
    assert isinstance(heads.norm, torch.nn.BatchNorm1d)
    assert not heads.norm.affine and heads.norm.eps == 1e-6 and not list(heads.norm.parameters())
    assert isinstance(ProbeHeads(8, 3, [0.1], 10, batchnorm=False).norm, torch.nn.Identity)


def _colour_images(rng, n, colours, size=20):
    y = rng.integers(0, len(colours), n)
    return np.clip(colours[y][:, None, None, :] + rng.normal(0, 20, (n, size, size, 3)), 0, 255).astype(np.uint8), y


def test_augmented_probe_trains_through_the_encoder():
    from synrep.evaluation.features import ArrayImages

    rng = np.random.default_rng(0)
    colours = np.array([[220, 20, 20], [20, 20, 220]])
    images, labels = {}, {}
    for s, n in (("train", 64), ("val", 32), ("test", 32)):
        images[s], labels[s] = _colour_images(rng, n, colours)
    seen = []

    def encode(x):  # a frozen "encoder": mean colour; records the crops it is given
        seen.append(tuple(x.shape))
        return x.mean(dim=(2, 3))

    feats = {s: encode(torch.from_numpy(images[s]).permute(0, 3, 1, 2).float() / 255).numpy() for s in ("val", "test")}
    seen.clear()
    result = linear_probe_augmented(encode, ArrayImages(images["train"]), 16, feats, labels, 2, [0.1, 1.0], 4, 16,
                                    batchnorm=True, eval_every=2)
    assert result["test"] == 1.0 and result["epochs_compared"] == 2 and result["eval_every"] == 2
    assert len(seen) == 4 * 4 and set(seen) == {(16, 3, 16, 16)}  # 4 epochs x 4 batches of 16 px crops


def test_augmented_probe_needs_no_train_features(small_world, make_cfg):
    """eval.probe_augment: only val and test features are extracted; the probe trains on crops of
    the uncropped train images through the encoder."""
    cfg = make_cfg("eval.probe_augment=true", "eval.probe_epochs=1", "eval.fewshot_episodes=5",
                   "eval.targets=[shape]", base=small_world)
    data = load_eval_data(cfg)
    assert evaluate.feature_splits(cfg) == ("val", "test")
    calls = []

    def encode(x):
        calls.append(len(x))
        return x.mean(dim=(2, 3))

    feats = extract_features(encode, data, cfg, splits=evaluate.feature_splits(cfg))
    assert set(feats) == {"val", "test"}
    calls.clear()
    evaluate.evaluate_features(feats, data, cfg, encode=encode)
    assert sum(calls) == len(data.labels["shape"]["train"])  # one epoch of training crops


# --------------------------------------------------------------------------------------------
# Evaluation transform, zero-shot names, few-shot classifier
# --------------------------------------------------------------------------------------------


def test_evaluation_crop_is_the_official_resize_and_centre_crop(make_cfg):
    from torchvision.transforms import v2

    from synrep.evaluation.features import eval_transform

    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    got = eval_transform(make_cfg("eval.crop_pct=0.875"))(image)
    want = v2.CenterCrop(16)(v2.Resize(18, antialias=True)(image))  # 16 / 0.875 = 18.3: 256 / 224 at 16 px
    assert torch.equal(got, want) and not torch.equal(got, image)
    assert torch.equal(eval_transform(make_cfg())(image), image)  # the toy default: as it was
    # 224 px: Resize(256) + CenterCrop(224), the official evaluation transform
    big = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    got = eval_transform(make_cfg("eval.crop_pct=0.875", "train.image_size=224"))(big)
    assert torch.equal(got, v2.CenterCrop(224)(v2.Resize(256, antialias=True)(big)))


def test_zero_shot_prompts_use_imagenet_names_and_clip_templates(make_cfg, tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    from timm.data import ImageNetInfo

    from synrep.evaluation.features import class_prompts

    wnids = sorted(ImageNetInfo("imagenet-1k").label_names())  # ImageNet's train/ folders, sorted
    prompts = class_prompts(make_cfg(), wnids)
    assert len(prompts) == 1000 and all(len(p) == len(OPENAI_IMAGENET_TEMPLATES) == 80 for p in prompts)
    assert prompts[0][0] == f"a bad photo of a {IMAGENET_CLASSNAMES[0]}." == "a bad photo of a tench."
    assert prompts[999][-1] == f"a tattoo of the {IMAGENET_CLASSNAMES[999]}."
    assert not any(w in p for w in wnids[:5] for p in prompts[0])
    assert class_prompts(make_cfg(), ["golden_retriever"])[0][0] == "a bad photo of a golden retriever."
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    assert class_prompts(make_cfg(f"eval.class_names={names}"), ["a", "b"])[1][0] == "a bad photo of a dog."
    with pytest.raises(ValueError, match="2 class names for 3 class folders") as err:
        class_prompts(make_cfg(f"eval.class_names={names}"), ["a", "b", "c"])
    assert str(names) in str(err.value)


def test_imagefolder_of_wnids_gets_imagenet_prompts(make_cfg, tmp_path):
    """The folder names reach the prompts as ImageNet's names, also for a subset of ImageNet's wnids
    (ImageNet-100 style); a class names file overrides them; an unknown wnid asks for one."""
    from synrep.evaluation.features import wnid_names

    _image_folder(tmp_path / "folder", classes=(("n01440764", (200, 20, 20)), ("n01443537", (20, 20, 200))),
                  per_class=4)
    cfg = ("eval.dataset=imagefolder", f"eval.root={tmp_path}/folder", "eval.holdout=2")
    data = load_eval_data(make_cfg(*cfg))
    assert data.class_names["class"] == ["n01440764", "n01443537"]
    assert [p[0] for p in data.prompts["class"]] == ["a bad photo of a tench.", "a bad photo of a goldfish."]
    names = tmp_path / "names.txt"
    names.write_text("red fish\nblue fish\n")
    data = load_eval_data(make_cfg(*cfg, f"eval.class_names={names}"))
    assert data.prompts["class"][1][0] == "a bad photo of a blue fish."
    assert wnid_names(["reds", "n01440764"]) is None
    with pytest.raises(ValueError, match="eval.class_names"):
        wnid_names(["n99999999"])


def test_few_shot_logistic_is_rfs_logistic_regression():
    """One 3-way 2-shot episode equals scikit-learn's LogisticRegression (l2, C=1, lbfgs, multinomial)
    on the l2-normalised support set, query for query."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    features = rng.normal(size=(30, 6)) + np.repeat(np.eye(6)[:3] * 1.5, 10, axis=0)
    labels = np.repeat(np.arange(3), 10)
    got = evaluate.few_shot(features, labels, ways=3, shots=2, queries=8, episodes=1, seed=5)
    # the same episode drawn by hand
    z = features / np.linalg.norm(features, axis=1, keepdims=True)
    rng = np.random.default_rng(5)
    chosen = rng.choice(np.unique(labels), size=3, replace=False)
    picks = [rng.choice(np.flatnonzero(labels == c), size=10, replace=False) for c in chosen]
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, random_state=0)
    clf.fit(np.concatenate([z[p[:2]] for p in picks]), np.repeat(range(3), 2))
    want = (clf.predict(np.concatenate([z[p[2:]] for p in picks])) == np.repeat(range(3), 8)).mean()
    assert got["mean"] == want and got["classifier"] == "logistic"
    proto = evaluate.few_shot(features, labels, ways=3, shots=2, queries=8, episodes=1, seed=5, classifier="prototype")
    assert proto["classifier"] == "prototype"
