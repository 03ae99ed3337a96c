"""Evaluation that survives a requeue and uses every rank of its job: probes interrupted after an
epoch resume at the next one and end where an uninterrupted probe ends; a finished evaluation is
returned, not redone; features and the augmented probe split over two gloo ranks (torchrun) give
what one process gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from synrep.evaluation import evaluate
from synrep.evaluation.features import SPLITS, ArrayImages, extract_features, load_eval_data, load_features, rank_rows
from synrep.evaluation.linear_probe import ProbeCheckpoint, linear_probe, linear_probe_augmented
from tests.conftest import REPO, tmp_overrides


class Requeued(Exception):
    """Stands for the job's end (time limit, preemption) after an epoch."""


def stop_after(k: int, seen: list[int]):
    def on_epoch(epoch: int) -> None:
        seen.append(epoch)
        if epoch == k:
            raise Requeued(epoch)
    return on_epoch


def stop_at_call(n: int, seen: list[int]):
    """Stop at the n-th epoch done, counting across probes (a baseline runs one probe after another)."""
    def on_epoch(epoch: int) -> None:
        seen.append(epoch)
        if len(seen) == n:
            raise Requeued(epoch)
    return on_epoch


def blob_features(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 2
    feats, labels = {}, {}
    for split, n in (("train", 90), ("val", 45), ("test", 45)):
        labels[split] = rng.integers(0, 3, n)
        feats[split] = (centres[labels[split]] + 1.5 * rng.normal(size=(n, 8))).astype(np.float32)
    return feats, labels


def assert_same_state(a: dict, b: dict) -> None:
    """Two saved probe states, tensor for tensor, bit for bit."""
    for part in ("modules", "optimizer", "schedule"):
        flat_a, flat_b = _tensors(a["probe"][part]), _tensors(b["probe"][part])
        assert flat_a.keys() == flat_b.keys()
        for name in flat_a:
            assert torch.equal(flat_a[name], flat_b[name]) if isinstance(flat_a[name], torch.Tensor) \
                else flat_a[name] == flat_b[name], (part, name)
    assert a["probe"]["history"] == b["probe"]["history"] and a["epoch"] == b["epoch"]


def _tensors(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}{i}.").items()}
    return {prefix: tree}


def test_probe_on_cached_features_resumes_after_the_saved_epoch(tmp_path):
    feats, labels = blob_features()
    args = dict(n_classes=3, lrs=[0.03, 0.3], epochs=6, batch_size=16, batchnorm=True, seed=1, eval_every=2)
    reference = ProbeCheckpoint(tmp_path / "reference.pt", "k")
    whole = linear_probe(feats, labels, **args, checkpoint=reference)

    checkpoint = ProbeCheckpoint(tmp_path / "probe.pt", "k")
    first: list[int] = []
    with pytest.raises(Requeued):
        linear_probe(feats, labels, **args, checkpoint=checkpoint, on_epoch=stop_after(4, first))
    assert first == [1, 2, 3, 4] and torch.load(checkpoint.path, weights_only=False)["epoch"] == 4
    second: list[int] = []
    resumed = linear_probe(feats, labels, **args, checkpoint=checkpoint, on_epoch=stop_after(-1, second))
    assert second == [5, 6]  # carried on after epoch 4
    assert resumed == whole
    # the state after epoch 5 (the last one saved) is the uninterrupted run's, bit for bit
    assert_same_state(torch.load(checkpoint.path, weights_only=False), torch.load(reference.path, weights_only=False))
    # and the probe without any checkpoint gives the same: saving changes nothing
    assert linear_probe(feats, labels, **args) == whole


def test_a_checkpoint_of_another_key_is_not_resumed(tmp_path):
    feats, labels = blob_features()
    args = dict(n_classes=3, lrs=[0.1], epochs=3, batch_size=16, batchnorm=False, seed=0)
    with pytest.raises(Requeued):
        linear_probe(feats, labels, **args, checkpoint=ProbeCheckpoint(tmp_path / "p.pt", "old"),
                     on_epoch=stop_after(2, []))
    seen: list[int] = []
    linear_probe(feats, labels, **args, checkpoint=ProbeCheckpoint(tmp_path / "p.pt", "new"), on_epoch=seen.append)
    assert seen == [1, 2, 3]


def _colour_world(seed=0, size=20):
    rng = np.random.default_rng(seed)
    colours = np.array([[200, 40, 40], [40, 40, 200], [40, 200, 40]])
    images, labels = {}, {}
    for split, n in (("train", 48), ("val", 24), ("test", 24)):
        labels[split] = rng.integers(0, 3, n)
        images[split] = np.clip(colours[labels[split]][:, None, None, :] + rng.normal(0, 60, (n, size, size, 3)),
                                0, 255).astype(np.uint8)
    return images, labels


def mean_colour(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


def test_augmented_probe_resumes_and_its_crops_do_not_depend_on_workers(tmp_path):
    """Crops are drawn per (epoch, image): a resumed probe, whose second attempt cuts them in two
    loader workers, ends with the uninterrupted one-process probe's heads and accuracies."""
    images, labels = _colour_world()
    feats = {s: mean_colour(torch.from_numpy(images[s]).permute(0, 3, 1, 2).float() / 255).numpy()
             for s in ("val", "test")}
    args = dict(n_classes=3, lrs=[0.1, 1.0], epochs=4, batch_size=16, batchnorm=True, seed=2, eval_every=1)
    reference = ProbeCheckpoint(tmp_path / "reference.pt", "k")
    whole = linear_probe_augmented(mean_colour, ArrayImages(images["train"]), 12, feats, labels, **args,
                                   checkpoint=reference)
    checkpoint = ProbeCheckpoint(tmp_path / "probe.pt", "k")
    with pytest.raises(Requeued):
        linear_probe_augmented(mean_colour, ArrayImages(images["train"]), 12, feats, labels, **args,
                               checkpoint=checkpoint, on_epoch=stop_after(2, []))
    second: list[int] = []
    resumed = linear_probe_augmented(mean_colour, ArrayImages(images["train"]), 12, feats, labels, **args,
                                     checkpoint=checkpoint, on_epoch=second.append, workers=2)
    assert second == [3, 4] and resumed == whole
    assert_same_state(torch.load(checkpoint.path, weights_only=False), torch.load(reference.path, weights_only=False))


@pytest.fixture
def trained_run(small_world, make_cfg, tmp_path):
    """A run folder holding a model.pt (random weights: evaluation reads only the file)."""
    from synrep.learning.trainer import build_model

    def make(name: str, *extra: str):
        cfg = make_cfg(*extra, base=small_world)
        out = tmp_path / name
        out.mkdir()
        torch.manual_seed(0)
        torch.save({"model": build_model(cfg).state_dict(), "method": cfg.train.method}, out / "model.pt")
        return cfg, out

    return make


def _without_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


@pytest.mark.parametrize("augment", [False, True])
def test_a_requeued_evaluation_resumes_and_a_finished_one_is_not_redone(trained_run, augment):
    settings = ("eval.probe_epochs=4", "eval.probe_eval_every=2", "eval.fewshot_episodes=20", "eval.targets=[shape]",
                "train.checkpoint_seconds=0", "train.encoder_kwargs.width=8", f"eval.probe_augment={augment}")
    cfg, whole_dir = trained_run("whole", *settings)
    whole = evaluate.evaluate_run(cfg, whole_dir)

    _, out = trained_run("requeued", *settings)
    with pytest.raises(Requeued):
        evaluate.evaluate_run(cfg, out, on_epoch=stop_after(3, []))
    assert not (out / "eval.json").exists() and (out / "eval_state" / "probe_shape.pt").exists()
    manifest = (out / "features" / "manifest.json").stat().st_mtime_ns
    second: list[int] = []
    resumed = evaluate.evaluate_run(cfg, out, on_epoch=second.append)
    assert second == [4]  # epoch 4 only; the features were not extracted again
    assert (out / "features" / "manifest.json").stat().st_mtime_ns == manifest
    assert _without_seconds(resumed) == _without_seconds(whole)
    assert json.loads((out / "eval.json").read_text()) == resumed and not (out / "eval_state").exists()
    third: list[int] = []
    assert evaluate.evaluate_run(cfg, out, on_epoch=third.append) == resumed and third == []
    # another evaluation setting is another evaluation: computed again
    other = cfg.copy()
    other.eval.probe_epochs = 2
    fourth: list[int] = []
    evaluate.evaluate_run(other, out, on_epoch=fourth.append)
    assert fourth == [1, 2]


def test_requeued_baselines_keep_what_they_finished(small_world, make_cfg):
    cfg = make_cfg("eval.probe_epochs=3", "eval.fewshot_episodes=20", "eval.targets=[shape]",
                   "train.checkpoint_seconds=0", "train.encoder_kwargs.width=8", base=small_world)
    whole = evaluate.baselines(cfg, seed=0)
    state = evaluate.baselines_path(cfg, 0).parent / "state"
    shutil.rmtree(state, ignore_errors=True)
    first: list[int] = []
    with pytest.raises(Requeued):  # random_init done, raw_pixels stopped after its epoch 2
        evaluate.baselines(cfg, seed=0, state=state, on_epoch=stop_at_call(5, first))
    assert first == [1, 2, 3, 1, 2]
    second: list[int] = []
    resumed = evaluate.baselines(cfg, seed=0, state=state, on_epoch=second.append)
    assert second == [3]
    assert {k: _without_seconds(v) for k, v in resumed.items()} == {k: _without_seconds(v) for k, v in whole.items()}


def test_rank_rows_are_contiguous_blocks_covering_the_split():
    for n in (0, 1, 7, 100):
        for world in (1, 2, 3, 8):
            blocks = [rank_rows(n, r, world) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert [len(b) for b in blocks] == [len(a) for a in np.array_split(np.arange(n), world)]


def test_two_ranks_extract_features_and_probe_as_one_process(small_world, make_cfg, tmp_path):
    overrides = tmp_overrides(small_world, "eval.probe_epochs=2", "eval.probe_eval_every=1", "eval.probe_batch_size=64",
                              "eval.batch_size=96", "train.encoder_kwargs.width=8")
    from synrep.learning.trainer import build_model

    cfg = make_cfg(*overrides[2:], base=small_world)
    for run in ("run", "alone"):
        (tmp_path / run).mkdir()
        torch.manual_seed(0)
        torch.save({"model": build_model(cfg).state_dict(), "method": cfg.train.method}, tmp_path / run / "model.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "eval_ranks.py"), str(tmp_path), *overrides]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "ranks.pt", weights_only=False)
    assert result["world_size"] == 2
    # each rank wrote its own block of each split; rank 0 read both
    assert sorted(p.name.split(".")[1] for p in (tmp_path / "features").glob("train.*.npy")) == ["0000-of-0002",
                                                                                                "0001-of-0002"]

    data = load_eval_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    alone = extract_features(model.features, data, cfg)
    for split in SPLITS:
        np.testing.assert_allclose(result["features"][split], alone[split], rtol=1e-5, atol=1e-6)
    assert load_features(tmp_path / "features", "key")["train"].shape == alone["train"].shape

    colours = extract_features(mean_colour, data, cfg, splits=("val", "test"))
    target = next(iter(data.labels))
    e = cfg.eval
    probe = linear_probe_augmented(mean_colour, data.train_images, cfg.train.image_size, colours, data.labels[target],
                                   len(data.class_names[target]), list(e.probe_lrs), e.probe_epochs,
                                   e.probe_batch_size, e.probe_batchnorm, seed=3, eval_every=e.probe_eval_every)
    assert result["probe"] == probe  # every crop, every step: the same as one process

    # the whole evaluation of a run, on two ranks and in one process: features that differ in float
    # rounding (other batches) may move an image or two across a boundary, no more
    augmented = cfg.copy()
    augmented.eval.probe_augment = True
    ranks = json.loads((tmp_path / "run" / "eval.json").read_text())
    single = evaluate.evaluate_run(augmented, tmp_path / "alone")
    n_test, n_val = (len(data.labels[target][s]) for s in ("test", "val"))
    for target in data.labels:
        for split, n in (("test", n_test), ("val", n_val)):
            assert ranks["linear_probe"][target][split] == pytest.approx(single["linear_probe"][target][split],
                                                                         abs=2.5 / n)
    assert ranks["few_shot"].keys() == single["few_shot"].keys()


def test_probe_batches_share_every_batch_among_ranks_in_order():
    """Each rank gets its block of every batch of the epoch's shuffle, in rank order, and a step
    for every batch even where a batch is smaller than the world (a stand-in row, dropped)."""
    from synrep.evaluation.linear_probe import _ProbeBatches

    n, batch, world = 21, 10, 3  # the last batch holds one image: two ranks have none of it
    samplers = [_ProbeBatches(n, batch, seed=5, rank=r, world_size=world) for r in range(world)]
    for epoch in (1, 2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(5 * 1_000_003 + epoch)).tolist()
        per_rank = [list(s) for s in samplers]
        assert all(len(steps) == 3 for steps in per_rank)
        for step, start in enumerate(range(0, n, batch)):
            want = shuffle[start:start + batch]
            got = []
            for r in range(world):
                rows = per_rank[r][step]
                assert all(e == epoch for e, _ in rows)
                got += [i for _, i in rows][:len(rank_rows(len(want), r, world))]
            assert got == want
