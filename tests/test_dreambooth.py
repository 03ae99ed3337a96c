"""DreamBooth: the toy subject, the prior-preservation loss, cached class images with their
provenance, fine-tunes of the toy generator and of a Stable Diffusion pipeline that load and sample,
option errors that name their key, and the quality measure's tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synrep.data import toy_subject, toy_vocabulary
from synrep.diffusion.pipelines import load_pipeline
from synrep.recipes import dreambooth as db

# A run small enough for a test: two class images a call, two sampling steps, a few updates
TINY_RUN = ["dreambooth.max_train_steps=3", "dreambooth.num_class_images=4", "dreambooth.sample_batch_size=2",
            "dreambooth.steps=2", "dreambooth.train_batch_size=2", "dreambooth.log_every=1",
            "dreambooth.learning_rate=1e-3"]


def fresh(folder, sampler="ddim"):
    """A pipeline of its own (load_pipeline's cached one is shared by every test in the process)."""
    pipe = load_pipeline.__wrapped__(str(folder), sampler, "float32", "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


# --------------------------------------------------------------------------------------------
# The subject
# --------------------------------------------------------------------------------------------


def test_subject_renders_deterministically_and_differs_from_its_near_misses(make_cfg):
    cfg = make_cfg()
    a, attrs = toy_subject.render_subject(cfg, 6, 3)
    b, _ = toy_subject.render_subject(cfg, 6, 3)
    other_seed, _ = toy_subject.render_subject(cfg, 6, 4)
    assert a.dtype == np.uint8 and a.shape == (6, 16, 16, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, other_seed)
    ring = list(cfg.toyworld.shapes).index("ring")
    assert all(x.shape == ring for x in attrs)
    # equal streams: the near misses differ from the subject only where the notch or a tone is
    for variant in ("no_notch", "one_tone"):
        near, _ = toy_subject.render_subject(cfg, 6, 3, variant=variant)
        differs = (near != a).any(-1).sum(axis=(1, 2))
        assert (differs > 0).all() and (differs < 16 * 16 / 4).all(), (variant, differs)
    plain, plain_attrs = toy_subject.render_subject(cfg, 6, 3, variant="plain")
    assert not np.array_equal(plain, a) and all(x.shape == ring for x in plain_attrs)


def test_subject_takes_the_worlds_backgrounds_and_sizes(make_cfg):
    cfg = make_cfg()
    dark, dark_attrs = toy_subject.render_subject(cfg, 8, 0, background="dark", size="large")
    light, light_attrs = toy_subject.render_subject(cfg, 8, 0, background=1, size=0)
    assert {a.background for a in dark_attrs} == {0} and {a.size for a in dark_attrs} == {1}
    assert {a.background for a in light_attrs} == {1} and {a.size for a in light_attrs} == {0}
    # corners are background: dark ones stay below the light range
    corners = lambda x: x[:, [0, 0, -1, -1], [0, -1, 0, -1]].mean()  # noqa: E731
    assert corners(dark) < 110 < corners(light)
    drawn, drawn_attrs = toy_subject.render_subject(cfg, 32, 0)
    assert {a.background for a in drawn_attrs} == {0, 1} and {a.size for a in drawn_attrs} == {0, 1}
    with pytest.raises(ValueError, match="background 'grey'"):
        toy_subject.render_subject(cfg, 1, 0, background="grey")
    images, attrs, names = toy_subject.render_other_rings(cfg, 6, 0)
    assert names == list(toy_subject.NEAR_MISS_VARIANTS) * 2 and len(attrs) == 6 and images.shape[0] == 6


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def test_prior_preservation_loss_is_instance_mse_plus_weighted_class_mse(tiny_toy_pipeline_dir):
    from diffusers import DDPMScheduler

    pipe = fresh(tiny_toy_pipeline_dir)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1  # 2 instance images, then 2 class images
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([10, 500, 900, 250])
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    xt = scheduler.add_noise(x0, noise, t)
    ids, mask = db.prompt_ids(pipe, ["a sks ring"] * 2 + ["a ring"] * 2)
    with torch.no_grad():
        states, pooled = db.encode_text(pipe, ids, mask)
        pred = pipe.unet(xt, t, encoder_hidden_states=states, class_labels=pooled).sample
        # by hand: each half through the UNet on its own, mean squared error of each
        inst = pipe.unet(xt[:2], t[:2], encoder_hidden_states=states[:2], class_labels=pooled[:2]).sample
        cls = pipe.unet(xt[2:], t[2:], encoder_hidden_states=states[2:], class_labels=pooled[2:]).sample
    mse_inst = ((inst - noise[:2]) ** 2).mean()
    mse_cls = ((cls - noise[2:]) ** 2).mean()
    for weight in (1.0, 0.3):
        loss, instance, prior = db.dreambooth_loss(pred, noise, x0, t, scheduler, True, weight)
        assert torch.allclose(instance, mse_inst, atol=1e-6) and torch.allclose(prior, mse_cls, atol=1e-6)
        assert torch.allclose(loss, mse_inst + weight * mse_cls, atol=1e-6)
    loss, instance, prior = db.dreambooth_loss(pred, noise, x0, t, scheduler, False, 1.0)
    assert prior is None and torch.allclose(loss, ((pred - noise) ** 2).mean(), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Class images
# --------------------------------------------------------------------------------------------


def test_class_images_are_cached_with_provenance_and_reused(tmp_path, make_cfg, tiny_toy_pipeline_dir, monkeypatch):
    cfg = make_cfg(*TINY_RUN)
    pipe = fresh(tiny_toy_pipeline_dir)
    settings = db.sampling_settings(cfg.dreambooth, cfg.generation)
    calls = []
    real_sample = db.sample_images
    monkeypatch.setattr(db, "sample_images", lambda *a, **k: calls.append(len(a[1])) or real_sample(*a, **k))

    first, info = db.class_images(pipe, cfg.dreambooth, tmp_path / "class", settings)
    assert first.shape == (4, 16, 16, 3) and info["generated"] == 4 and calls == [4]
    provenance = json.loads((tmp_path / "class" / info["folder"].split("/")[-1] / db.PROVENANCE).read_text())
    assert provenance["class_prompt"] == "a ring" and provenance["seed"] == 0
    assert provenance["model_fingerprint"] == db.weights_fingerprint(pipe)
    assert provenance["noise_seeds"] == [db.class_image_seed(0, i) for i in range(4)]

    again, info = db.class_images(pipe, cfg.dreambooth, tmp_path / "class", settings)
    assert info["generated"] == 0 and info["reused"] == 4 and calls == [4]
    assert np.array_equal(first, again)

    # more wanted: only the missing ones are made, and the first are kept
    more = make_cfg(*TINY_RUN, "dreambooth.num_class_images=6")
    topped, info = db.class_images(pipe, more.dreambooth, tmp_path / "class", settings)
    assert info["generated"] == 2 and calls == [4, 2] and np.array_equal(topped[:4], first)
    # another prompt or another model is another set
    other = make_cfg(*TINY_RUN, "dreambooth.class_prompt=a hoop")
    _, info = db.class_images(pipe, other.dreambooth, tmp_path / "class", settings)
    assert info["generated"] == 4
    with torch.no_grad():
        pipe.unet.conv_in.bias.add_(0.1)
    _, info = db.class_images(pipe, cfg.dreambooth, tmp_path / "class", settings)
    assert info["generated"] == 4


# --------------------------------------------------------------------------------------------
# Fine-tunes that save, load and sample
# --------------------------------------------------------------------------------------------


def test_toy_run_saves_a_loadable_pipeline_and_reuses_class_images(make_cfg, tiny_toy_pipeline_dir):
    from omegaconf import OmegaConf

    cfg = make_cfg(*TINY_RUN, f"dreambooth.generator={tiny_toy_pipeline_dir}")
    base = fresh(tiny_toy_pipeline_dir)
    outputs = db.run(cfg)
    out = outputs["model"]
    summary = json.loads((out / db.SUMMARY).read_text())
    assert summary["class_images"]["generated"] == 4 and summary["steps"] == 3
    assert len(summary["loss_curve"]) == 3 and {"instance_loss", "prior_loss"} <= set(summary["final"])
    assert OmegaConf.load(out / "config.yaml").dreambooth.instance_prompt == "a sks ring"

    tuned = load_pipeline(str(out), "ddim", "float32", "cpu")
    assert changed(state(base.unet), tuned.unet)
    assert not changed(state(base.text_encoder), tuned.text_encoder)  # frozen by default
    images = tuned("a sks ring", num_inference_steps=2, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()

    again = db.run(make_cfg(*TINY_RUN, f"dreambooth.generator={tiny_toy_pipeline_dir}"))
    assert json.loads((again["model"] / db.SUMMARY).read_text())["class_images"]["generated"] == 0


def test_real_photos_of_a_subject_train_a_stable_diffusion_pipeline(tmp_path, make_cfg, tiny_sd_pipeline_dir):
    """dreambooth.instance_data_dir (diffusers' --instance_data_dir): a folder of photos instead of
    the toy subject; an empty folder is one error naming the key."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (3, 24, 24, 3), dtype=np.uint8)
    for i, im in enumerate(raw):
        Image.fromarray(im).save(photos / f"{i}.png")
    (photos / "notes.txt").write_text("not an image")
    side = fresh(tiny_sd_pipeline_dir).unet.config.sample_size * 2
    loaded = db.load_instance_images(photos, side)
    assert loaded.shape == (3, side, side, 3)
    np.testing.assert_array_equal(loaded[1], np.asarray(Image.fromarray(raw[1]).resize((side, side), Image.Resampling.BILINEAR)))
    cfg = make_cfg(*TINY_RUN, f"dreambooth.generator={tiny_sd_pipeline_dir}", f"dreambooth.instance_data_dir={photos}",
                   "dreambooth.with_prior_preservation=false", "dreambooth.train_batch_size=1",
                   f"dreambooth.output_dir={tmp_path}/out")
    out = db.run(cfg)["model"]
    assert type(load_pipeline(str(out), "ddim", "float32", "cpu")).__name__ == "StableDiffusionPipeline"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="dreambooth.instance_data_dir"):
        db.run(make_cfg(*TINY_RUN, f"dreambooth.generator={tiny_sd_pipeline_dir}", f"dreambooth.instance_data_dir={empty}"))


def test_stable_diffusion_fine_tune_trains_the_unet_through_the_vae(tmp_path, make_cfg, tiny_sd_pipeline_dir):
    cfg = make_cfg(*TINY_RUN, "dreambooth.train_batch_size=1", "dreambooth.num_class_images=2",
                   "dreambooth.max_train_steps=2", "dreambooth.train_text_encoder=true")
    pipe = fresh(tiny_sd_pipeline_dir)
    before = {name: state(getattr(pipe, name)) for name in ("unet", "text_encoder", "vae")}
    images, _ = toy_subject.render_subject(cfg, 2, 0)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor  # SD's own size (16 px for the tiny one)
    summary = db.train_dreambooth(pipe, images[:, ::2, ::2], cfg.dreambooth, tmp_path / "class",
                                  db.sampling_settings(cfg.dreambooth, cfg.generation), progress=False)
    assert summary["resolution"] == side  # 8 px instance images resized to it
    assert summary["class_images"]["generated"] == 2
    assert changed(before["unet"], pipe.unet) and changed(before["text_encoder"], pipe.text_encoder)
    assert not changed(before["vae"], pipe.vae)
    out = db.save_model(pipe, tmp_path / "sd_dreambooth", cfg, summary)
    loaded = load_pipeline(str(out), "ddim", "float32", "cpu")
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    assert not changed(state(pipe.unet), loaded.unet)
    sample = loaded("a sks ring", num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    assert sample.shape == (1, side, side, 3) and np.isfinite(sample).all()


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def test_bad_options_fail_with_their_config_key(make_cfg, capsys):
    from synrep.__main__ import main
    from synrep.config import ConfigError

    with pytest.raises(ConfigError, match="dreambooth.prior_loss_weigth"):
        make_cfg("dreambooth.prior_loss_weigth=1")
    with pytest.raises(ConfigError, match="dreambooth.with_prior_preservation"):
        make_cfg("dreambooth.with_prior_preservation=maybe")
    for override, key in (("dreambooth.lr_scheduler=cosine_annealing", "dreambooth.lr_scheduler"),
                          ("dreambooth.class_prompt=' '", "dreambooth.class_prompt"),
                          ("dreambooth.prior_loss_weight=-1", "dreambooth.prior_loss_weight"),
                          ("dreambooth.max_train_steps=0", "dreambooth.max_train_steps")):
        with pytest.raises(ValueError, match=f"config key '{key}'"):
            db.check_options(make_cfg(override).dreambooth)
    # without prior preservation the class prompt is not needed
    db.check_options(make_cfg("dreambooth.class_prompt=' '", "dreambooth.with_prior_preservation=false").dreambooth)
    # the command line: one line naming the key, exit status 1, before any model is loaded
    tmp = make_cfg().paths.results_dir
    assert main(["train_dreambooth", f"paths.results_dir={tmp}", "dreambooth.lr_scheduler=cosine_annealing"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config key 'dreambooth.lr_scheduler'" in err[0]


# --------------------------------------------------------------------------------------------
# The quality measure
# --------------------------------------------------------------------------------------------


def test_quality_prompt_sets_ask_for_both_values():
    from synrep.evaluation.dreambooth_quality import prompt_set

    prompts, wanted = prompt_set("background", "a sks ring", "a ring", 4)
    assert prompts == ["a sks ring on a dark background"] * 2 + ["a sks ring on a light background"] * 2
    assert wanted.tolist() == [0, 0, 1, 1]
    prompts, wanted = prompt_set("size", "a sks ring", "a ring", 2)
    assert prompts == ["a sks ring, small", "a sks ring, big"] and wanted.tolist() == [0, 1]
    assert toy_vocabulary.parse_caption(prompts[1], _world_cfg())["size"] == 1


def _world_cfg():
    from synrep.config import load_config

    return load_config(["threads=1"])


def test_quality_step_writes_tables_with_intervals_over_seeds(make_cfg, small_world, tiny_toy_pipeline_dir,
                                                             tiny_clip_dir, tmp_path):
    from synrep.evaluation import dreambooth_quality

    common = [*TINY_RUN, f"dreambooth.generator={tiny_toy_pipeline_dir}", "sample_quality.classifier_epochs=2",
              f"paths.data_dir={small_world}/data", "dreambooth.max_train_steps=1"]
    for name, prior in (("p", "true"), ("n", "false")):
        # the fine-tunes as the train step saves them (its MLflow run left out, for time)
        train_cfg = make_cfg(*common, f"dreambooth.with_prior_preservation={prior}")
        pipe = fresh(tiny_toy_pipeline_dir)
        images, _ = toy_subject.render_subject(train_cfg, 2, 0)
        summary = db.train_dreambooth(pipe, images, train_cfg.dreambooth, tmp_path / "class",
                                      db.sampling_settings(train_cfg.dreambooth, train_cfg.generation), progress=False)
        db.save_model(pipe, tmp_path / name, train_cfg, summary)
    cfg = make_cfg(*common, f"dreambooth.quality.models=[{tmp_path}/p,{tmp_path}/n]",
                   f"dreambooth.quality.clip_model={tiny_clip_dir}", "dreambooth.quality.images=4",
                   "dreambooth.quality.seeds=[0,1]", "dreambooth.quality.reference_images=6",
                   "dreambooth.quality.encoder=null")  # the default's names a sweep run
    outputs = dreambooth_quality.run(cfg)
    result = json.loads(outputs["json"].read_text())
    rows = result["rows"]
    assert sorted({(r["model"], r["prior"]) for r in rows}, key=str) == sorted(
        {("real", None), ("base", None), ("prior", True), ("no_prior", False)}, key=str)
    assert len(rows) == 4 * 2
    for r in rows:  # every measure for every model and seed
        assert all(r[k] is not None for k in ("prompt_background", "class_ring_accuracy", "fidelity_clip",
                                                "class_diversity")), r
    real = [r for r in rows if r["model"] == "real"]
    # real renders are what the judge learnt from: it reads the asked background on nearly all
    assert np.mean([r["prompt_background"] for r in real]) >= 0.75
    table = outputs["table"].read_text().strip().splitlines()
    assert len(table) == 2 + 4 and any(line.startswith("| prior | True | ") for line in table)
    assert all("±" in line for line in table[2:])  # two seeds: an interval in every cell


def test_subject_probe_compares_the_sweeps_runs_by_source(learning_world):
    """DreamBooth as a source is judged by a 4-way probe (subject and its near misses) on real renders,
    per training source and seed: each run's row is the probe on that run's encoder."""
    from synrep.config import load_config, run_dir
    from synrep.evaluation.linear_probe import linear_probe
    from synrep.experiments import subject_probe, sweep, sweep_run

    cfg = load_config(learning_world("sweep.grids=[{method:[stablerep],data:[w2,w4]}]", "sweep.seeds=[0,1]",
                                     "train.epochs=1", "dreambooth.probe.sources=[w2,w4]",
                                     "dreambooth.probe.images=24"))
    runs = sweep.expand(cfg)
    for spec in runs:
        sweep_run.run_one(cfg, spec.run_id)
    out = subject_probe.run(cfg)
    data = json.loads(out["json"].read_text())
    assert sorted((r["source"], r["run"]) for r in data["runs"]) == sorted((s.data, s.run_id) for s in runs)
    images, labels = subject_probe.probe_images(cfg, 24, cfg.dreambooth.probe.seed)
    assert [len(labels[s]) for s in subject_probe.SPLITS] == [96] * 3
    probe = dict(n_classes=4, lrs=list(cfg.eval.probe_lrs), epochs=cfg.eval.probe_epochs,
                 batch_size=cfg.eval.probe_batch_size, batchnorm=False, seed=cfg.dreambooth.probe.seed)
    for row in data["runs"]:
        features = subject_probe.encoder_features(run_dir(cfg, "runs", row["run"]), images)
        assert row["accuracy"] == pytest.approx(linear_probe(features, labels, **probe)["test"])
    for row in data["summary"]:
        accs = [r["accuracy"] for r in data["runs"] if r["source"] == row["source"]]
        assert row["n"] == 2 and row["mean"] == pytest.approx(np.mean(accs))
    assert "| w2 | 2 |" in out["table"].read_text()
    # the four classes are the subject and its near misses, in equal numbers, renders of their own
    assert (labels["test"] == np.repeat(np.arange(4), 24)).all()
    np.testing.assert_array_equal(images["test"][:24], toy_subject.render_subject(
        cfg, 24, [cfg.dreambooth.probe.seed, 2, 0], variant="subject")[0])


def test_subject_diversity_is_measured_on_the_instance_prompts_samples(monkeypatch):
    """The paper's DIV: pairwise distances among samples of one subject under one prompt (the
    instance group), not among class-prompt samples; checked against explicit pair loops."""
    from synrep.evaluation import dreambooth_quality as dq

    rng = np.random.default_rng(0)
    images = {g: rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8) for g in dq.GROUPS}
    images["class"][:] = images["class"][0]  # identical class samples: class diversity 0, instance not
    wanted = {g: np.zeros(4, np.int64) for g in ("background", "size")}
    monkeypatch.setattr(dq, "predict", lambda classifier, x: {a: np.zeros(len(x), np.int64)
                                                              for a in ("shape", "colour", "size", "background")})

    def embed(x):  # a stand-in image tower: the flattened pixels, unit norm
        e = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))
        return {"clip": torch.nn.functional.normalize(e, dim=-1)}

    refs = {"subject": embed(images["instance"][:2]), "near_miss": embed(images["class"][:2])}
    row = dq.score(images, wanted, None, embed, refs, ring=0)
    pixels = images["instance"].reshape(4, -1).astype(np.float64) / 255
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    rms = np.mean([np.sqrt(np.mean((pixels[a] - pixels[b]) ** 2)) for a, b in pairs])
    unit = pixels / np.linalg.norm(pixels, axis=1, keepdims=True)
    cos = np.mean([1 - unit[a] @ unit[b] for a, b in pairs])
    assert row["instance_diversity"] == pytest.approx(rms)
    assert row["instance_diversity_clip"] == pytest.approx(cos, abs=1e-6)
    assert row["class_diversity"] == 0 and row["instance_diversity"] > 0
