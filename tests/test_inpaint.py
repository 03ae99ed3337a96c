"""GLIDE's text-guided inpainting: the toy pipeline's two paths (inpainting UNet, replacement),
diffusers' Stable Diffusion inpainting (9- and 4-channel UNets) through the same sampling code, the
fine-tune's starting point, the ``inpaint`` source mode with its provenance, and the edit measure."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from synrep.diffusion.pipelines import load_pipeline
from synrep.diffusion.sampling import Sampling, sample_images
from synrep.diffusion.toy.inpaint import ToyGlideInpaintPipeline, dilate, region_masks
from synrep.recipes.toy_inpaint import inpainting_unet, training_masks
from tests.conftest import assert_regenerated

SETTINGS = Sampling(steps=3, batch_size=64, mode="inpaint")
PROMPTS = ["a red circle", "a large blue square on a dark background", "a green ring"]


def _world_inputs(small_world, n=3):
    from synrep.data import toyworld

    test = toyworld.load_split(small_world / "data" / "toyworld", "test")
    return test["images"][:n], test["object_mask"][:n]


def _inpainting_toy(folder) -> ToyGlideInpaintPipeline:
    base = load_pipeline(str(folder), "ddim", device="cpu")
    torch.manual_seed(0)
    unet = inpainting_unet(base.unet)
    with torch.no_grad():  # a trained model's extra weights are not zero: make the channels matter
        unet.conv_in.weight[:, 3:].normal_(0, 0.5)
    pipe = ToyGlideInpaintPipeline(unet=unet, scheduler=base.scheduler, text_encoder=base.text_encoder,
                                   tokenizer=base.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_world_masks_cover_the_object(small_world):
    from synrep.data import toyworld

    test = toyworld.load_split(small_world / "data" / "toyworld", "test")
    masks, images = test["object_mask"], test["images"].astype(float)
    # large objects cover more pixels than small ones, and every image has an object
    large = test["size"] == 1
    assert masks.sum((1, 2)).min() > 0
    assert masks[large].sum((1, 2)).mean() > 1.8 * masks[~large].sum((1, 2)).mean()
    # inside the mask the object's colour: far from the background's mean colour
    inside = np.array([images[i][masks[i]].mean(0) for i in range(20)])
    outside = np.array([images[i][~dilate(masks[i:i + 1], 1)[0]].mean(0) for i in range(20)])
    assert np.abs(inside - outside).sum(1).mean() > 60


def test_region_masks_split_the_image_and_training_masks_follow_the_mix():
    obj = np.zeros((1, 8, 8), bool)
    obj[0, 3:5, 3:5] = True
    grown = region_masks(obj, "object", 1)
    assert grown.sum() == 16 and (region_masks(obj, "background", 1) == ~grown).all()
    assert region_masks(obj, "object", 0).sum() == 4 and region_masks(obj, "all").all()
    rng = np.random.default_rng(0)
    masks = training_masks(np.repeat(obj, 400, 0), rng, {"object": 0.5, "all": 0.5}, 1)
    full = masks.all((1, 2))
    assert 0.4 < full.mean() < 0.6 and (masks[~full] == grown[0]).all()


def test_replacement_inpainting_keeps_the_kept_region_exactly(tiny_toy_pipeline_dir, small_world):
    images, objects = _world_inputs(small_world)
    pipe = load_pipeline(str(tiny_toy_pipeline_dir), "dpmsolver", device="cpu")
    masks = region_masks(objects, "background")
    out = sample_images(pipe, PROMPTS, [1, 2, 3], 2.0, SETTINGS, inputs={"images": images, "masks": masks})
    np.testing.assert_array_equal(out[~masks], images[~masks])
    assert np.abs(out[masks].astype(int) - images[masks]).mean() > 10  # the background was regenerated


def test_inpainting_unet_starts_as_the_text_to_image_model(tiny_toy_pipeline_dir):
    base = load_pipeline(str(tiny_toy_pipeline_dir), "ddim", device="cpu")
    unet = inpainting_unet(base.unet)
    assert unet.config.in_channels == base.unet.config.in_channels + 4
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    states, pooled = base.encode_prompt(PROMPTS[:2])
    extra = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        before = base.unet(x, t, encoder_hidden_states=states, class_labels=pooled).sample
        after = unet(torch.cat([x, extra], 1), t, encoder_hidden_states=states, class_labels=pooled).sample
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_inpainting_model_sees_the_masked_image_and_not_the_hidden_pixels(tiny_toy_pipeline_dir, small_world, tmp_path):
    images, objects = _world_inputs(small_world)
    pipe = _inpainting_toy(tiny_toy_pipeline_dir)
    pipe.save_pretrained(tmp_path / "inpaint")
    pipe = load_pipeline(str(tmp_path / "inpaint"), "ddim", device="cpu")
    assert isinstance(pipe, ToyGlideInpaintPipeline)
    masks = region_masks(objects, "object")
    run = lambda imgs, m: sample_images(pipe, PROMPTS, [1, 2, 3], 2.0, SETTINGS, inputs={"images": imgs, "masks": m})
    base = run(images, masks)
    np.testing.assert_array_equal(run(images, masks), base)  # seeded
    # GLIDE's sampler: x̂0 is the original in the kept region at every step, so it comes out unchanged
    assert np.abs(base[~masks].astype(int) - images[~masks]).max() <= 1
    hidden_changed = images.copy()
    hidden_changed[masks] = 255 - hidden_changed[masks]
    np.testing.assert_array_equal(run(hidden_changed, masks), base)  # pixels under the mask are never seen
    kept_changed = images.copy()
    kept_changed[~masks] = 255 - kept_changed[~masks]
    assert np.abs(run(kept_changed, masks).astype(int) - base).max() > 0  # the kept ones are


@pytest.mark.parametrize("channels", [9, 4])
def test_stable_diffusion_inpainting_runs_through_the_same_code(channels, small_world):
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from synrep.diffusion.random_sd import random_sd_pipeline

    sd = random_sd_pipeline("tiny")
    if channels == 9:
        config = dict(sd.unet.config, in_channels=9)
        sd = StableDiffusionInpaintPipeline(**{**sd.components, "unet": UNet2DConditionModel.from_config(config)})
    sd.set_progress_bar_config(disable=True)
    images, objects = _world_inputs(small_world)
    inputs = {"images": images, "masks": region_masks(objects, "object")}  # 16 px, the tiny SD's size
    a = sample_images(sd, PROMPTS, [1, 2, 3], 2.0, SETTINGS, inputs=inputs)
    b = sample_images(sd, PROMPTS, [1, 2, 3], 2.0, SETTINGS, inputs=inputs)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # two images per prompt: each prompt meets its own image (diffusers would tile them)
    pairs = sample_images(sd, PROMPTS, [1, 7, 2, 8, 3, 9], 2.0, SETTINGS, images_per_prompt=2, inputs=inputs)
    np.testing.assert_array_equal(pairs[::2], a)


def test_an_inpaint_source_keeps_the_real_image_first_and_regenerates_exactly(make_cfg, small_world,
                                                                              tiny_toy_pipeline_dir):
    from synrep.config import ConfigError
    from synrep.data import captions, toyworld
    from synrep.data.shards import read_shard
    from synrep.generation import generate
    from synrep.generation.provenance import regenerate

    overrides = [f"generation.model={tiny_toy_pipeline_dir}", "generation.steps=2", "generation.images_per_caption=3",
                 "generation.captions_per_shard=4", "captions.limit=4", f"paths.data_dir={small_world}/data",
                 "sources.bg.mode=inpaint", "sources.bg.inpaint.region=background"]
    cfg = make_cfg(*overrides)
    captions.run(cfg)
    [path] = generate.run(cfg, source="bg")
    samples = list(read_shard(path))
    train = toyworld.load_split(cfg, "train")
    for sample in samples:
        record = sample["record"]
        index = toyworld.train_index(record["input"]["url"])
        kept = ~region_masks(train["object_mask"][index:index + 1], "background", 1)[0]
        np.testing.assert_array_equal(sample["images"][0], train["images"][index])  # the real image itself
        for image in sample["images"][1:]:  # its variants keep the object
            np.testing.assert_array_equal(image[kept], train["images"][index][kept])
            assert not np.array_equal(image, train["images"][index])
    record = samples[1]["record"]
    assert record["source"]["inpaint"] == {"region": "background", "dilate": 1, "keep_real": True}
    assert_regenerated(regenerate(record, 2, device="cpu"), samples[1]["images"][2])
    with pytest.raises(ConfigError, match=r"sources.bg.inpaint.region"):
        make_cfg(*overrides, "sources.bg.inpaint.region=sky")
    with pytest.raises(ConfigError, match=r"sources.bg.inpaint': inpainting settings need mode: inpaint"):
        make_cfg(*overrides, "sources.bg.mode=text2img", "sources.bg.inpaint.region=object")


def test_edit_measure_reads_the_asked_attribute(small_world, make_cfg):
    from synrep.data import toy_vocabulary, toyworld
    from synrep.evaluation.inpaint_quality import edit_captions, psnr

    cfg = make_cfg(base=small_world)
    test = {k: v[:40] for k, v in toyworld.load_split(cfg, "test").items()}
    for edit in ("background", "colour"):
        captions, wanted = edit_captions(cfg, test, edit, np.random.default_rng(0))
        parsed = [toy_vocabulary.parse_caption(c, cfg) for c in captions]
        assert [p[edit] for p in parsed] == wanted.tolist()  # the caption names what is asked
        assert (wanted != test[edit]).all()  # and it is a change
        assert [p["shape"] for p in parsed] == test["shape"].tolist()
    a = np.zeros((1, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # one pixel off by the full range, in the kept region or not
    keep = np.ones((1, 4, 4), bool)
    assert psnr(a, b, keep)[0] == pytest.approx(10 * np.log10(16 * 3 / 3))
    keep[0, 0, 0] = False
    assert psnr(a, b, keep)[0] == pytest.approx(100.0)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("inpainting_model", [False, True])
def test_the_models_own_image_before_the_replacement_is_its_last_clean_prediction(inpainting_model, prediction,
                                                                                  tiny_toy_pipeline_dir, small_world):
    """With one step, the image before the kept region is copied in is the UNet's x̂0 on the initial
    noise, computed here by hand: (x_T - sqrt(1 - ᾱ) ε) / sqrt(ᾱ), or sqrt(ᾱ) x_T - sqrt(1 - ᾱ) v with
    the same UNet read as a v-prediction model; the recording pipeline samples exactly the images
    that sample_images gives a source, and GLIDE's replacement of x̂0 keeps the kept region either way."""
    from synrep.diffusion.toy.inpaint import RecordingInpaintPipeline, as_image_tensor

    images, objects = _world_inputs(small_world)
    masks = region_masks(objects, "object")
    base = _inpainting_toy(tiny_toy_pipeline_dir) if inpainting_model else load_pipeline(
        str(tiny_toy_pipeline_dir), "ddim", device="cpu")
    # a new pipeline around the same parts, its own scheduler: the loaded pipeline is cached and shared
    base = ToyGlideInpaintPipeline(unet=base.unet, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   scheduler=type(base.scheduler).from_config(
                                       {**base.scheduler.config, "prediction_type": prediction}))
    base.set_progress_bar_config(disable=True)
    recording = RecordingInpaintPipeline.sharing(base)
    settings = dataclasses.replace(SETTINGS, steps=1)
    inputs = {"images": images, "masks": masks}
    out = sample_images(recording, PROMPTS, [1, 2, 3], 1.0, settings, inputs=inputs)
    np.testing.assert_array_equal(out, sample_images(base, PROMPTS, [1, 2, 3], 1.0, settings, inputs=inputs))
    [unreplaced] = recording.unreplaced
    scheduler = recording.scheduler
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    x = torch.cat([torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)])
    model_in = x
    if inpainting_model:
        mask = torch.from_numpy(masks)[:, None].float()
        model_in = torch.cat([x, mask, as_image_tensor(images, "cpu", torch.float32) * (1 - mask)], 1)
    states, pooled = recording.encode_batch(PROMPTS, 1, False)[0]
    with torch.no_grad():
        output = recording.unet(model_in, t, encoder_hidden_states=states, class_labels=pooled).sample
    alpha = scheduler.alphas_cumprod[t]
    if prediction == "epsilon":
        x0 = (x - (1 - alpha).sqrt() * output) / alpha.sqrt()
    else:
        x0 = alpha.sqrt() * x - (1 - alpha).sqrt() * output
    x0 = x0.clamp(-1, 1)
    np.testing.assert_allclose(unreplaced, ((x0 + 1) / 2).permute(0, 2, 3, 1).numpy(), atol=1e-5)
    # the output's kept region is the original; the model's own is not
    assert np.abs(out[~masks].astype(int) - images[~masks]).max() <= 1
    kept = np.abs((np.clip(unreplaced, 0, 1) * 255).round()[~masks] - images[~masks])
    assert kept.mean() > 1
