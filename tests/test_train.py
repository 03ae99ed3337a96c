"""The trainer: its training length, every method on CPU, resume, and DDP under torchrun (gloo)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from synrep.config import load_config
from synrep.learning import methods
from synrep.learning import trainer as train
from synrep.learning.step import caption_tokens
from tests.conftest import REPO


def test_plan_counts_simclr_equivalent_epochs(make_cfg):
    n = 1000
    for method, m, crops in (("stablerep", 6, 6), ("simclr", 6, 2), ("clip", 6, 1), ("stablerep_plus", 4, 4)):
        cfg = make_cfg(f"train.method={method}", f"train.m={m}", "train.epochs=3", "train.batch_images=240")
        plan = train.training_length(cfg, n)
        rows = 240 // crops
        assert plan.rows_per_step == rows and plan.crops_per_step == rows * crops
        # every method sees epochs * 2 crops per caption in all
        assert plan.steps == round(3 * 2 * n / (rows * crops))
        assert plan.steps_per_pass == n // rows
        assert plan.passes * plan.steps_per_pass >= plan.steps > (plan.passes - 1) * plan.steps_per_pass
    # one StableRep epoch at m = 6 costs what 3 SimCLR epochs cost
    sr = train.training_length(make_cfg("train.m=6", "train.epochs=6", "train.batch_images=240"), n)
    assert sr.steps * sr.crops_per_step == 6 * 2 * n
    assert round(sr.steps / sr.steps_per_pass) == 2  # 2 passes over the captions = 2 StableRep epochs


def test_plan_errors_name_the_key(make_cfg):
    with pytest.raises(ValueError, match="train.batch_images"):
        train.training_length(make_cfg("train.batch_images=256"), n_captions=10)
    with pytest.raises(ValueError, match="fewer than 2 rows"):
        train.training_length(make_cfg("train.batch_images=4", "train.m=4"), n_captions=1000, world_size=2)


def test_batch_rounds_down_to_whole_rows_on_every_rank(make_cfg):
    """m at a fixed batch: rows = batch / m, whole rows per rank (the official --batch_size counts
    captions per GPU), so every m of the paper's ablation runs on any world size."""
    for m in (1, 2, 3, 4, 6, 8, 10):
        length = train.training_length(make_cfg(f"train.m={m}", "train.batch_images=8256"), 10**6, world_size=32)
        k = 2 if m == 1 else m  # m = 1 is SimCLR: one image, two crops
        assert length.rows_per_rank == 8256 // (32 * k) and length.rows_per_step == 32 * length.rows_per_rank
        assert 8256 - 32 * k < length.crops_per_step <= 8256


def test_pass_unit_counts_the_official_loader(make_cfg):
    """epoch_unit=pass: steps a pass = len(DataLoader(DistributedSampler(N), rows, drop_last=True))."""
    n, world = 1003, 4
    cfg = make_cfg("train.epoch_unit=pass", "train.epochs=3", "train.warmup_epochs=0.5", "train.m=4",
                   "train.batch_images=160")
    length = train.training_length(cfg, n, world_size=world)
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=0)
    loader = torch.utils.data.DataLoader(range(n), batch_size=length.rows_per_rank, sampler=sampler, drop_last=True)
    assert length.rows_per_rank == 10 and length.steps_per_pass == len(loader)
    assert length.steps == 3 * len(loader) and length.warmup_steps == 0.5 * len(loader)


def official_lr(epoch_float: float, lr: float, warmup_epochs: float, epochs: float) -> float:
    """``util/misc.py: adjust_learning_rate`` of google-research/syn-rep-learn (StableRep), min_lr 0."""
    if epoch_float < warmup_epochs:
        return lr * epoch_float / warmup_epochs
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch_float - warmup_epochs) / (epochs - warmup_epochs)))


def test_lr_schedule_is_the_official_one(make_cfg):
    """The official loop sets lr = f(it / len(loader) + epoch) before every step: warm-up from 0,
    cosine to 0 at the end; the peak is base_lr x images / 256 x crops per image / 2."""
    n = 1000
    cfg = make_cfg("train.epoch_unit=pass", "train.epochs=4", "train.warmup_epochs=0.5", "train.m=6",
                   "train.batch_images=120", "train.base_lr=2e-4")
    length = train.training_length(cfg, n)
    per_epoch = length.steps_per_pass
    assert length.peak_lr == pytest.approx(2e-4 * 120 / 256 / 2)
    for step in range(length.steps):
        epoch, it = divmod(step, per_epoch)
        assert train.lr_at(step, length) == pytest.approx(
            official_lr(it / per_epoch + epoch, length.peak_lr, 0.5, 4), abs=1e-15)
    # SimCLR: one image, two crops per caption: the rule gives base_lr x crops / 512 as well
    simclr = train.training_length(make_cfg("train.method=simclr", "train.batch_images=120", "train.base_lr=2e-4"), n)
    assert simclr.peak_lr == pytest.approx(2e-4 * 60 / 256 * 2 / 2)
    assert train.training_length(make_cfg("train.lr=1e-3"), n).peak_lr == 1e-3


@pytest.mark.parametrize("method", ["stablerep", "simclr", "clip", "stablerep_plus"])
def test_every_method_trains_and_evaluates(learning_world, tmp_path, method, monkeypatch):
    import numpy as np

    from synrep.data import toyworld
    from synrep.evaluation import evaluate
    from synrep.evaluation.features import load_features
    from synrep.learning.augment import MEAN, STD

    data = "real" if method == "simclr" else "w2"
    cfg = load_config(learning_world(f"train.method={method}", f"train.data={data}", "train.epochs=1",
                                     f"train.l={1 if data == 'real' else 4}", f"train.output_dir={tmp_path}/run"))
    # the lr each optimizer step is taken at, as the optimizer holds it
    taken = []
    step_as_trained = train.optimizer_step

    def recording_step(loss, optimizer, scaler):
        taken.append([group["lr"] for group in optimizer.param_groups])
        step_as_trained(loss, optimizer, scaler)

    monkeypatch.setattr(train, "optimizer_step", recording_step)
    torch.manual_seed(cfg.train.seed)  # the trainer's seed before it builds the model: its initial weights
    initial = train.build_model(cfg).state_dict()
    summary = train.train(cfg, progress=False)
    plan = summary["length"]
    assert summary["history"][-1]["step"] == plan["steps"] > 0
    length = train.TrainingLength(**plan)
    assert len(taken) == plan["steps"]
    for step, lrs in enumerate(taken):  # every parameter group gets the schedule's lr at that step
        assert lrs == pytest.approx([train.lr_at(step, length)] * len(lrs))
    trained = torch.load(tmp_path / "run" / "model.pt")["model"]
    assert trained.keys() == initial.keys()
    moved = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, trained[k])]
    weights = [k for k, v in initial.items() if v.is_floating_point() and k.endswith("weight")]
    assert set(weights) <= set(moved), sorted(set(weights) - set(moved))  # every layer's weights trained
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in summary["history"])
    assert json.loads((tmp_path / "run" / "train.json").read_text()) == summary
    assert load_config(config_file=tmp_path / "run" / "config.yaml").train.method == method
    metrics = evaluate.evaluate_run(cfg)
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == metrics
    flat = evaluate.flat_metrics(metrics)
    assert ("zeroshot_shape" in flat) == (method in ("clip", "stablerep_plus"))

    # The evaluation scores this run's trained weights: features computed here from model.pt and
    # the toy world's arrays, normalised by hand, are the ones it used, and give its accuracies.
    model = train.build_model(cfg)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt")["model"])
    model.eval()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    splits = {s: toyworld.load_split(cfg.eval.root, s) for s in ("train", "val", "test")}
    with torch.no_grad():
        features = {s: model.features((torch.from_numpy(d["images"]).permute(0, 3, 1, 2) / 255.0 - mean) / std).numpy()
                    for s, d in splits.items()}
    used = load_features(tmp_path / "run" / "features")
    for s in splits:
        np.testing.assert_allclose(used[s], features[s], rtol=1e-4, atol=1e-5)
    labels = {s: d["shape"] for s, d in splits.items()}
    e, n_test = cfg.eval, len(labels["test"])
    probe = evaluate.linear_probe(features, labels, len(cfg.toyworld.shapes), list(e.probe_lrs), e.probe_epochs,
                                  e.probe_batch_size, e.probe_batchnorm, seed=cfg.train.seed)
    assert flat["probe_shape"] == pytest.approx(probe["test"], abs=1.5 / n_test)  # one test image may flip
    few = evaluate.few_shot(features["test"], labels["test"], e.fewshot_ways, e.fewshot_shots, e.fewshot_queries,
                            e.fewshot_episodes, seed=cfg.train.seed)
    # features recomputed another way differ by float rounding: a query or two may flip
    queries = e.fewshot_episodes * e.fewshot_ways * e.fewshot_queries
    assert flat["fewshot_shape"] == pytest.approx(few["mean"], abs=2.5 / queries)


def test_resume_gives_the_uninterrupted_result(learning_world, tmp_path, monkeypatch):
    overrides = learning_world("train.epochs=6", "train.checkpoint_seconds=0")  # a checkpoint every pass
    whole = load_config(overrides + [f"train.output_dir={tmp_path}/whole"])
    expected = train.train(whole, progress=False)
    assert expected["length"]["passes"] >= 3

    parted = load_config(overrides + [f"train.output_dir={tmp_path}/parted"])
    real_save = train.save_checkpoint
    saves = []

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state["pass"])
        if len(saves) == 2:
            raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.train(parted, progress=False)
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert not (tmp_path / "parted" / "model.pt").exists()
    # how often it checkpoints is not part of a run's identity: the run resumes under another
    # cadence, which here saves nothing more before the end
    ckpt = tmp_path / "parted" / "checkpoints" / "last.pt"
    stamp = ckpt.stat().st_mtime_ns
    resumed = train.train(load_config(overrides + [f"train.output_dir={tmp_path}/parted", "train.checkpoint_seconds=3600"]),
                          progress=False)
    assert ckpt.stat().st_mtime_ns == stamp and torch.load(ckpt)["pass"] == 2

    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in expected["history"]]
    a = torch.load(tmp_path / "whole" / "model.pt")["model"]
    b = torch.load(tmp_path / "parted" / "model.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_cached_tokens_are_open_clips(make_cfg):
    """The training step's tokens (each caption tokenized once per process) are what open_clip's
    tokenizer gives the whole batch: padding, truncation at the context length, repeats."""
    from open_clip.tokenizer import SimpleTokenizer

    cfg = make_cfg("train.text.context_length=12")
    captions = ["a big red ring", "", "a small green square on a dark background in the top left corner",
                "a big red ring", "A  Big, red RING!"]
    for _ in range(2):  # the second time from the cache
        tokens = caption_tokens(cfg, captions)
        assert torch.equal(tokens, SimpleTokenizer(context_length=12)(captions))


def _fixed_batch(cfg, rows: int, per_row: int):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(rows * per_row, 3, cfg.train.image_size, cfg.train.image_size, generator=gen)
    captions = [f"a {c} circle" for c in ["red", "blue", "green", "pink"] * (rows // 4)]
    return {"images": images, "captions": captions}


def reference_step(cfg, batch, world):
    """One process on the concatenated batch: with synchronised BatchNorm (per view in the head) a
    DDP step over ``world`` ranks must compute exactly this; candidates over the whole batch, group
    ids per batch row."""
    torch.manual_seed(cfg.train.seed)
    model = train.build_model(cfg)
    rows = len(batch["captions"])
    per_row = batch["images"].shape[0] // rows
    tokens = caption_tokens(cfg, batch["captions"]) if model.has_text else None
    outputs = model(batch["images"], tokens, views=per_row)
    loss, _ = methods.get(cfg.train.method).loss(cfg, outputs, torch.arange(rows).repeat_interleave(per_row))
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# A model small enough for a 2-process step in seconds (also tests/test_slurm.py's srun test)
DDP_OVERRIDES = ["train.m=3", "train.encoder_kwargs.width=8", "train.head_hidden=32", "train.head_out=16",
                 "train.text.width=16", "train.text.layers=1", "train.text.embed_dim=16",
                 "train.text.context_length=16"]


def assert_matches_reference(result, cfg, batch, world):
    """A DDP step's mean loss and averaged gradients equal one process's on the whole batch."""
    loss, grads = reference_step(cfg, batch, world=world)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert set(result["grads"]) == set(grads)
    # float32 sums in another order: compare against the gradients' scale (a bias in front of a
    # BatchNorm has a true gradient of 0, so its own scale is rounding noise)
    scale = max(grad.abs().max().item() for grad in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4,
                                   atol=max(1e-5 * grad.abs().max().item(), 1e-6 * scale), msg=name)


@pytest.mark.parametrize("method", ["stablerep", "stablerep_plus"])
def test_ddp_under_torchrun_matches_one_process(make_cfg, tmp_path, method):
    overrides = [f"train.method={method}", *DDP_OVERRIDES]
    cfg = make_cfg(*overrides)
    batch = _fixed_batch(cfg, rows=8, per_row=3)
    torch.save(batch, tmp_path / "batch.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "ddp_step.py"), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt"),
           *[o for o in (f"paths.results_dir={tmp_path}",) + tuple(overrides)]]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt")
    assert result["world_size"] == 2 and result["source"] == "torchrun"
    assert_matches_reference(result, cfg, batch, world=2)


def test_batched_augmentation_cuts_as_torchvision_does():
    """BatchAugment (the toy's crop + flip, a batch at a time): torchvision's RandomResizedCrop
    box distribution, and a whole-image box gives back the image itself (or its mirror), normalised."""
    import numpy as np
    import torch
    from torchvision.transforms import RandomResizedCrop, v2

    from synrep.config import load_config
    from synrep.learning import augment

    torch.manual_seed(0)
    boxes = augment.crop_boxes(40000, 16, 12, (0.3, 1.0))
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (16 * 12)).numpy()
    image = torch.zeros(3, 16, 12)
    reference = []
    for _ in range(40000):
        _, _, h, w = RandomResizedCrop.get_params(image, (0.3, 1.0), (3 / 4, 4 / 3))
        reference.append(h * w / (16 * 12))
    assert abs(areas.mean() - np.mean(reference)) < 0.005 and abs(areas.std() - np.std(reference)) < 0.005
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 12 and boxes[:, 3].max() <= 16

    cfg = load_config(["train.image_size=16", "train.augment.crop_scale=[1.0,1.0]", "train.augment.downsample_p=0",
                       "train.augment.color_jitter_p=0", "train.augment.grayscale_p=0", "train.augment.blur_p=0"])
    batch = augment.batch_augment(cfg)
    assert batch is not None
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    out = batch(images)
    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(augment.MEAN, augment.STD)])
    expected = normalise(images)
    same = (out - expected).abs().amax((1, 2, 3)) < 1e-4
    mirrored = (out - expected.flip(-1)).abs().amax((1, 2, 3)) < 1e-4
    assert bool((same | mirrored).all()) and 4 < int(same.sum()) < 28
    assert augment.batch_augment(load_config(["train.augment.color_jitter_p=0.8"])) is None


@pytest.mark.timeout(300)
def test_loader_workers_train_as_one_another(learning_world, tmp_path):
    """Forked DataLoader workers (the real runs' loader) get through training, and the batches do
    not depend on how many there are: each index carries its own draws. (A worker once hung at its
    first batch: polars' thread pool, busy in the parent, is not usable in a forked child.)"""
    losses = []
    for workers in (1, 2):
        cfg = load_config(learning_world(f"train.workers={workers}",
                                         f"train.output_dir={tmp_path}/w{workers}"))
        losses.append([h["loss"] for h in train.train(cfg, progress=False)["history"]])
    assert len(losses[0]) > 1 and losses[0] == losses[1], losses
