"""DALL-E 2 / unCLIP: the toy pipeline (prior, decoder, variations) and diffusers' real unCLIP
pipelines through the same two calls, ``unclip_images`` and ``variation_images``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from synrep.diffusion.toy import unclip as U

from .conftest import SMALL_WORLD, TINY_GENERATOR, assert_regenerated

PROMPTS = ["a red circle", "a large blue square on a dark background", "a small green ring"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _generators(n: int, seed: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _images(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 16, 16, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from synrep.diffusion.clip_guidance import load_guide

    return load_guide(str(tiny_clip_dir))


def _build(glide_dir, clip, conditioned: bool):
    """A tiny toy unCLIP from the tiny toy generator; ``conditioned``: the image embedding's zero-initialised
    projections given random weights, as training would, so that the decoder depends on the embedding."""
    from synrep.diffusion.pipelines import make_scheduler
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    glide = ToyGlidePipeline.from_pretrained(glide_dir)
    text = U.clip_text(clip, [""])
    torch.manual_seed(0)
    pipe = U.build_toy_unclip(glide, text.embeds.shape[-1], text.states.shape[1], prior_layers=1, prior_heads=2,
                              prior_head_dim=8)
    if conditioned:
        with torch.no_grad():
            for layer in (pipe.text_proj.clip_image_embeddings_project_to_time_embeddings,
                          pipe.text_proj.clip_extra_context_tokens_proj):
                layer.weight.normal_(0, 2.0)
            pipe.text_proj.learned_classifier_free_guidance_embeddings.normal_(0, 0.3)
    # the project's sampler (DPM-Solver++ with the clamp that stands for clip_sample)
    pipe.scheduler = make_scheduler("dpmsolver", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def toy(tiny_toy_pipeline_dir, clip):
    return _build(tiny_toy_pipeline_dir, clip, conditioned=True)


def _unclip(pipe, clip, seed=100, **kwargs):
    args = dict(w=3.0, steps=3, prior_steps=3, prior_w=2.0) | kwargs
    return U.unclip_images(pipe, clip, PROMPTS, _generators(len(PROMPTS), seed), **args)


def test_clip_token_states_are_those_clip_pools(clip):
    text = U.clip_text(clip, PROMPTS + [""])
    tokens = clip.tokenizer(PROMPTS + [""])
    eot = tokens.argmax(-1)  # open_clip pools at the end-of-text token, the largest id
    pooled = torch.nn.functional.normalize(text.states[torch.arange(len(eot)), eot], dim=-1)
    torch.testing.assert_close(pooled, text.embeds, atol=1e-5, rtol=0)
    assert text.mask.sum(1).tolist() == (tokens != 0).sum(1).tolist()
    assert text.mask[-1].sum() == 2  # the empty caption: start and end of text


def test_decoder_starts_as_the_toy_generator(tiny_toy_pipeline_dir, clip):
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    pipe = _build(tiny_toy_pipeline_dir, clip, conditioned=False)
    glide = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    states, pooled = pipe.encode_caption(PROMPTS)
    context, added = pipe.decoder_inputs(states, pooled, U.clip_text(clip, PROMPTS).embeds)
    glide_states, glide_pooled = glide.encode_prompt(PROMPTS)
    extra = pipe.text_proj.config.clip_extra_context_tokens
    torch.testing.assert_close(context[:, extra:], glide_states, atol=1e-6, rtol=0)
    assert context[:, :extra].abs().max() == 0
    torch.testing.assert_close(added, glide_pooled, atol=1e-6, rtol=0)
    # and the image embedding has no effect until training gives it one
    a = U.variation_images(pipe, clip, _images(3, 0), _generators(3), w=3.0, steps=3)
    b = U.variation_images(pipe, clip, _images(3, 1), _generators(3), w=3.0, steps=3)
    np.testing.assert_array_equal(a, b)


def test_save_load_round_trip_gives_identical_images(toy, clip, tmp_path):
    toy.save_pretrained(tmp_path / "unclip")
    loaded = U.load_toy_unclip(tmp_path / "unclip")
    assert type(loaded.scheduler).__name__ == "DPMSolverMultistepScheduler"
    for kwargs in ({}, {"use_prior": False}):
        np.testing.assert_array_equal(_unclip(loaded, clip, **kwargs), _unclip(toy, clip, **kwargs))
    images = _images(2)
    np.testing.assert_array_equal(U.variation_images(loaded, clip, images, _generators(2), 3.0, 3),
                                  U.variation_images(toy, clip, images, _generators(2), 3.0, 3))


def test_seeds_decide_the_images_and_the_prior_matters(toy, clip):
    a = _unclip(toy, clip)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, _unclip(toy, clip))
    other = _unclip(toy, clip, seed=200)
    assert (np.abs(a - other).reshape(3, -1).max(1) > 1e-3).all()
    # image i comes from generator i alone, whatever else is in the batch: the prior's embedding, then
    # the decoder's image (separately: the random decoder amplifies float noise in its embedding)
    text, empty = U.clip_text(clip, PROMPTS), U.clip_text(clip, [""])
    batch = toy.sample_prior(text, empty, _generators(3), 3, 2.0)
    alone = toy.sample_prior(U.ClipText(*(x[1:2] for x in text)), empty, _generators(1, 101), 3, 2.0)
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=0)
    images = _images(3)
    batch = U.variation_images(toy, clip, images, _generators(3), 3.0, 3, prompts=PROMPTS)
    alone = U.variation_images(toy, clip, images[1:2], _generators(1, 101), 3.0, 3, prompts=PROMPTS[1:2])
    np.testing.assert_allclose(alone[0], batch[1], atol=1e-4)
    # DALL-E 2's ablation: the caption's CLIP text embedding in place of the prior's image embedding
    no_prior = _unclip(toy, clip, use_prior=False)
    assert (np.abs(a - no_prior).reshape(3, -1).max(1) > 1e-3).all()
    # the prior's guidance scale reaches the prior
    assert np.abs(_unclip(toy, clip, prior_w=1.0) - a).max() > 1e-3


def test_the_priors_rerank_keeps_the_draw_nearer_the_caption_and_the_decoders_noise(toy, clip):
    """DALL-E 2's rerank: of two prior draws per image (the first the one-sample draw, the second
    from a generator seeded off the image's), the one with the higher z_i . z_t is decoded, with the
    decoder noise of one-sample sampling."""
    text, empty = U.clip_text(clip, PROMPTS), U.clip_text(clip, [""])
    first = toy.sample_prior(text, empty, _generators(3), 3, 2.0)
    second = toy.sample_prior(text, empty, U.rerank_generators(_generators(3), 1), 3, 2.0)
    assert (first - second).abs().max() > 0  # (the tiny untrained prior's draws lie close together)
    keep_second = (second * text.embeds).sum(-1) > (first * text.embeds).sum(-1)
    wanted = torch.where(keep_second[:, None], second, first)
    torch.testing.assert_close(toy.sample_prior(text, empty, _generators(3), 3, 2.0, samples=2), wanted)
    # the decoder gets the kept embedding and the generators' state after one prior draw
    generators = _generators(3)
    toy.sample_prior(text, empty, generators, 3, 2.0)
    decoded = toy(PROMPTS, image_embeddings=wanted, num_inference_steps=3, guidance_scale=3.0,
                  generator=generators).images
    np.testing.assert_allclose(_unclip(toy, clip, prior_samples=2), decoded, atol=1e-5)
    np.testing.assert_array_equal(_unclip(toy, clip, prior_samples=1), _unclip(toy, clip))


def test_variations_are_conditioned_on_the_image_and_guided_against_the_null_embedding(toy, clip):
    images = _images(3)
    a = U.variation_images(toy, clip, images, _generators(3), w=3.0, steps=3)
    np.testing.assert_array_equal(a, U.variation_images(toy, clip, images, _generators(3), w=3.0, steps=3))
    others = U.variation_images(toy, clip, _images(3, seed=1), _generators(3), w=3.0, steps=3)
    assert (np.abs(a - others).reshape(3, -1).max(1) > 1e-3).all()
    captioned = U.variation_images(toy, clip, images, _generators(3), w=3.0, steps=3, prompts=PROMPTS)
    assert np.abs(a - captioned).max() > 1e-3
    # decoding the null embedding itself with the empty caption: conditional = unconditional pass,
    # so guidance changes nothing
    null = toy.text_proj.learned_classifier_free_guidance_embeddings.detach().expand(3, -1)
    plain, guided = (toy([""] * 3, image_embeddings=null, num_inference_steps=3, guidance_scale=w,
                         generator=_generators(3)).images for w in (1.0, 5.0))
    np.testing.assert_allclose(plain, guided, atol=1e-5)
    # the unconditional pass uses the null embedding: changing it changes guided images only
    saved = toy.text_proj.learned_classifier_free_guidance_embeddings.detach().clone()
    try:
        with torch.no_grad():
            toy.text_proj.learned_classifier_free_guidance_embeddings.add_(1.0)
        moved = U.variation_images(toy, clip, images, _generators(3), w=3.0, steps=3)
        unguided = U.variation_images(toy, clip, images, _generators(3), w=1.0, steps=3)
    finally:
        with torch.no_grad():
            toy.text_proj.learned_classifier_free_guidance_embeddings.copy_(saved)
    assert np.abs(moved - a).max() > 1e-3
    np.testing.assert_array_equal(unguided, U.variation_images(toy, clip, images, _generators(3), w=1.0, steps=3))


def test_bad_calls_say_what_is_wrong(toy, clip):
    with pytest.raises(ValueError, match="one generator per image"):
        U.unclip_images(toy, clip, PROMPTS, _generators(2), 2.0, 3)
    with pytest.raises(ValueError, match="toy CLIP"):
        U.unclip_images(toy, None, PROMPTS, _generators(3), 2.0, 3)
    with pytest.raises(ValueError, match="uint8"):
        U.variation_images(toy, clip, _images(3).astype(np.float32), _generators(3), 2.0, 3)
    with pytest.raises(ValueError, match=">= 2"):
        U.unclip_images(toy, clip, PROMPTS, _generators(3), 2.0, 3, prior_steps=1)


def test_training_writes_a_loadable_pipeline(small_world, tiny_toy_pipeline_dir, tiny_clip_dir, tmp_path, clip):
    from synrep.config import load_config
    from synrep.recipes import toy_unclip as train_unclip

    out = tmp_path / "toy_unclip"
    overrides = [f"paths.data_dir={small_world}/data", f"paths.results_dir={tmp_path}/results", "threads=1",
                 *SMALL_WORLD, *TINY_GENERATOR, f"toy_unclip.output_dir={out}",
                 f"toy_unclip.generator={tiny_toy_pipeline_dir}", f"toy_unclip.clip_model={tiny_clip_dir}",
                 "toy_unclip.prior_layers=1", "toy_unclip.prior_head_dim=8", "toy_unclip.prior_steps=4",
                 "toy_unclip.prior_batch_size=8", "toy_unclip.decoder_steps=3", "toy_unclip.decoder_batch_size=4",
                 "toy_unclip.warmup_steps=1", "toy_unclip.log_every=2"]
    outputs = train_unclip.run(load_config(overrides))
    assert outputs["model"] == out
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == {"prior": 4, "decoder": 3}
    assert len(summary["loss_curve"]["prior"]) == 2 and len(summary["loss_curve"]["decoder"]) == 2
    assert all(np.isfinite(v) for v in summary["final_loss"].values())
    assert summary["seconds"]["total"] > 0
    recipe = (out / "recipe.yaml").read_text()
    assert f"output_dir: {out}" in recipe and "decoder_steps: 3" in recipe
    pipe = U.load_toy_unclip(out)
    # the prior learnt the train embeddings' statistics
    assert not torch.equal(pipe.prior.clip_std, torch.ones_like(pipe.prior.clip_std))
    images = U.unclip_images(pipe, clip, PROMPTS, _generators(3), 2.0, 2, prior_steps=2, prior_w=2.0)
    assert images.shape == (3, 16, 16, 3)

    with pytest.raises(ValueError, match="toy_unclip.caption_dropout"):
        train_unclip.run(load_config(overrides + ["toy_unclip.caption_dropout=1.5"]))
    with pytest.raises(FileNotFoundError, match="toy_unclip.clip_model"):
        train_unclip.run(load_config(overrides + [f"toy_unclip.clip_model={tmp_path}/none"]))


# ---------------------------------------------------------------------------------------------
# diffusers' real unCLIP pipelines, random weights
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_unclip():
    from tests.random_unclip import random_unclip_pipeline, random_unclip_variation_pipeline

    return random_unclip_pipeline(), random_unclip_variation_pipeline()


def test_diffusers_unclip_runs_through_unclip_images(diffusers_unclip):
    pipe, variation = diffusers_unclip
    a = _unclip(pipe, None)
    assert a.shape == (3, 16, 16, 3) and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, _unclip(pipe, None))
    assert (np.abs(a - _unclip(pipe, None, seed=200)).reshape(3, -1).max(1) > 1e-3).all()
    no_prior = _unclip(pipe, None, use_prior=False)
    assert no_prior.shape == a.shape and np.abs(no_prior - a).max() > 1e-3
    np.testing.assert_array_equal(no_prior, _unclip(pipe, None, use_prior=False))
    # the variation pipeline shares the decoder's weights: the same text-embedding decode
    np.testing.assert_array_equal(_unclip(variation, None, use_prior=False), no_prior)
    with pytest.raises(TypeError, match="no prior"):
        _unclip(variation, None)


def test_diffusers_variations_run_through_variation_images(diffusers_unclip):
    from PIL import Image

    pipe, variation = diffusers_unclip
    images = _images(3)
    a = U.variation_images(variation, None, images, _generators(3), w=3.0, steps=3)
    assert a.shape == (3, 16, 16, 3) and 0 <= a.min() and a.max() <= 1
    # without prompts it is diffusers' own variation pipeline, image for image
    own = variation(image=[Image.fromarray(im) for im in images], generator=_generators(3),
                    decoder_num_inference_steps=3, super_res_num_inference_steps=U.SUPER_RES_STEPS,
                    decoder_guidance_scale=3.0, output_type="np").images
    np.testing.assert_array_equal(a, own)
    assert np.abs(a - U.variation_images(variation, None, _images(3, 1), _generators(3), 3.0, 3)).max() > 1e-3
    assert np.abs(a - U.variation_images(variation, None, images, _generators(3), 3.0, 3, prompts=PROMPTS)).max() > 1e-3
    with pytest.raises(TypeError, match="image encoder"):
        U.variation_images(pipe, None, images, _generators(3), 3.0, 3)


# ---------------------------------------------------------------------------------------------
# As data sources: modes unclip and variation
# ---------------------------------------------------------------------------------------------


def test_unclip_and_variation_sources_make_shards_that_regenerate_exactly(make_cfg, small_world, tiny_toy_pipeline_dir,
                                                                          tiny_clip_dir, clip, tmp_path):
    from synrep.config import ConfigError
    from synrep.data import captions, toyworld
    from synrep.data.shards import read_shard
    from synrep.generation import generate
    from synrep.generation.provenance import regenerate

    _build(tiny_toy_pipeline_dir, clip, conditioned=True).save_pretrained(tmp_path / "unclip")
    overrides = [f"generation.model={tiny_toy_pipeline_dir}", f"generation.clip_model={tiny_clip_dir}",
                 "generation.steps=2", "generation.images_per_caption=2", "generation.captions_per_shard=4",
                 "captions.limit=3", f"paths.data_dir={small_world}/data",
                 f"sources.un.generator={tmp_path / 'unclip'}", "sources.un.mode=unclip", "sources.un.unclip.prior_steps=2",
                 f"sources.var.generator={tmp_path / 'unclip'}", "sources.var.mode=variation"]
    cfg = make_cfg(*overrides)
    captions.run(cfg)
    train = toyworld.load_split(cfg, "train")
    for source in ("un", "var"):
        [path] = generate.run(cfg, source=source)
        samples = list(read_shard(path))
        record = samples[1]["record"]
        assert record["source"]["unclip"]["clip_sha256"] and record["pipeline"] == "ToyUnCLIPPipeline"
        assert ("input" in record) == (source == "var")  # a variation starts from the caption's real image
        assert_regenerated(regenerate(record, 1, device="cpu"), samples[1]["images"][1])
        assert not np.array_equal(samples[1]["images"][0], samples[1]["images"][1])
    # variations decode the real image's embedding: another image, other variations
    record = samples[0]["record"]
    assert record["input"]["url"].startswith("toy://train/")
    np.testing.assert_array_equal(train["images"][toyworld.train_index(record["input"]["url"])].shape,
                                  samples[0]["images"][0].shape)
    with pytest.raises(ConfigError, match=r"sources.un.unclip': unCLIP settings need mode"):
        make_cfg(*overrides, "sources.un.mode=text2img")


def test_a_saved_diffusers_unclip_folder_is_a_source_generator(make_cfg, small_world, tmp_path):
    from synrep.data import captions
    from synrep.data.shards import read_shard
    from synrep.generation import generate
    from tests.random_unclip import random_unclip_pipeline

    random_unclip_pipeline().save_pretrained(tmp_path / "karlo")  # diffusers 0.42 cannot from_pretrain this alone
    cfg = make_cfg(f"paths.data_dir={small_world}/data", "generation.steps=2", "generation.images_per_caption=2",
                   "generation.captions_per_shard=4", "captions.limit=2", f"sources.k.generator={tmp_path / 'karlo'}",
                   "sources.k.mode=unclip", "sources.k.unclip.prior_steps=2")
    captions.run(cfg)
    [path] = generate.run(cfg, source="k")
    samples = list(read_shard(path))
    assert len(samples) == 2 and samples[0]["images"][0].shape == (16, 16, 3)
    assert samples[0]["record"]["pipeline"] == "UnCLIPPipeline" and "clip_model" not in samples[0]["record"]["source"]["unclip"]


@pytest.mark.slow
def test_a_source_on_the_toy_unclip_not_yet_trained_plans_its_training(tmp_path):
    """A source naming the folder that rule ``train_unclip`` makes is planned before the folder
    exists: Snakemake schedules the training, then the source's shards on it."""
    import subprocess
    import sys

    from .conftest import REPO

    config = [f"paths={{data_dir: {tmp_path}/data, results_dir: {tmp_path}/results}}",
              "toyworld={" + ", ".join(o.removeprefix("toyworld.").replace("=", ": ") for o in SMALL_WORLD) + "}",
              'sources={uc: {generator: "${toy_unclip.output_dir}", mode: unclip}}',
              "sweep={grids: [{method: [stablerep], data: [uc]}]}"]

    def snakemake(target, *flags):
        return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *flags, "--config", *config, "--", target],
                              cwd=REPO, capture_output=True, text=True, timeout=600)

    made = snakemake(f"{tmp_path}/results/toy/captions/captions.parquet")  # the shards' count needs the captions
    assert made.returncode == 0, made.stderr[-3000:]
    planned = snakemake(f"{tmp_path}/results/toy/shards/uc/index.parquet", "-n")
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
    assert not (tmp_path / "results" / "toy" / "toy_unclip").exists()
    jobs = dict(re.findall(r"^(\w+) +(\d+)$", planned.stdout, re.M))
    assert jobs["train_unclip"] == "1" and int(jobs["generate_shard"]) >= 1
    shard_rules = planned.stdout.split("rule generate_shard:")[1:]
    assert all(f"input: {tmp_path}/results/toy/toy_unclip," in rule for rule in shard_rules)
