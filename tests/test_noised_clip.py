"""GLIDE's noised CLIP: the timestep conditioning starts as the identity, training keeps the text
tower, the saved folder loads in open_clip and as a guide, and guidance on x_t follows the noised
CLIP's gradient; the refusals (latent pipelines, other noise schedules, cut-outs) name their cause."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synrep.diffusion import noised_clip
from synrep.diffusion.clip_guidance import clip_guided, load_clip, load_guide
from synrep.diffusion.pipelines import load_pipeline

PROMPTS = ["a red circle", "a large blue square on a dark background"]


def _generators(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(200 + i) for i in range(n)]


def test_untrained_conditioning_is_the_base_clip_and_t_matters_once_trained(tiny_clip_dir, tiny_noised_clip_dir):
    clip, _ = load_clip(tiny_clip_dir)
    x = torch.randn(3, 3, 16, 16)
    fresh = noised_clip.NoisedClip(load_clip(tiny_clip_dir)[0])
    with torch.no_grad():
        reference = clip.encode_image(x, normalize=True)
        for t in (0, 500, 999):
            torch.testing.assert_close(fresh.encode_image(x, t), reference)
        model, _, _ = noised_clip.load(tiny_noised_clip_dir)
        plain_before = model.clip.encode_image(x, normalize=True)  # before any call at a timestep
        assert not torch.allclose(model.encode_image(x, 0), model.encode_image(x, 900), atol=1e-4)
        # per-image timesteps: row i is the embedding at t_i
        mixed = model.encode_image(x, torch.tensor([0, 900, 0]))
        torch.testing.assert_close(mixed[1], model.encode_image(x[1:2], 900)[0])
    # the hook leaves the plain CLIP path of the same model as it was before the calls at timesteps
    with torch.no_grad():
        plain_after = model.clip.encode_image(x, normalize=True)
        torch.testing.assert_close(plain_after, plain_before)
        assert not torch.allclose(plain_after, model.encode_image(x, 900), atol=1e-4)


def test_training_keeps_the_text_tower_and_saves_a_folder_open_clip_loads(make_cfg, small_world, tiny_clip_dir,
                                                                          tiny_toy_pipeline_dir, tmp_path):
    import open_clip

    from synrep.learning import toy_clip

    out = tmp_path / "noised"
    cfg = make_cfg(f"toy_noised_clip.base_clip={tiny_clip_dir}", f"toy_noised_clip.generator={tiny_toy_pipeline_dir}",
                   f"toy_noised_clip.output_dir={out}", "toy_noised_clip.epochs=1", "toy_noised_clip.batch_size=64",
                   "toy_noised_clip.lr=1e-2", base=small_world)
    toy_clip.run_noised(cfg)
    base = open_clip.create_model(f"local-dir:{tiny_clip_dir}").eval()
    plain = open_clip.create_model(f"local-dir:{out}").eval()  # open_clip alone, no synrep code
    tokens = open_clip.get_tokenizer(f"local-dir:{out}")(PROMPTS)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_text(tokens), base.encode_text(tokens))
        assert not torch.allclose(plain.encode_image(x), base.encode_image(x), atol=1e-4)  # the image tower trained
    guide = load_guide(str(out))
    assert guide.noised and noised_clip.alphas_cumprod(guide.info["noise_schedule"]).shape == (1000,)
    summary = json.loads((out / "training.json").read_text())
    assert set(summary["zero_shot_shape_by_timestep"]["noised_clip"]) == {f"t{t}" for t in toy_clip.NOISE_LEVELS}


def test_noised_guidance_follows_the_gradient_on_x_t(tiny_toy_pipeline_dir, tiny_noised_clip_dir):
    pipe = load_pipeline(str(tiny_toy_pipeline_dir), "ddim", device="cpu")
    guide = load_guide(str(tiny_noised_clip_dir))
    plain = pipe(prompt=PROMPTS, num_images_per_prompt=2, num_inference_steps=3, guidance_scale=2.0,
                 generator=_generators(4), output_type="np").images
    same = clip_guided(pipe, guide, PROMPTS, _generators(4), 3, 2.0, clip_scale=0.0, num_images_per_prompt=2)
    np.testing.assert_array_equal(same, plain)

    # One DDIM step by hand: ε̂ = ε − s sqrt(1 − ᾱ_t) ∇_{x_t} cos(CLIP(x_t, t), text)
    s = 50.0
    one = clip_guided(pipe, guide, PROMPTS[:1], _generators(1), 1, 1.0, clip_scale=s)
    from diffusers.utils.torch_utils import randn_tensor

    pipe.scheduler.set_timesteps(1)
    [t] = pipe.scheduler.timesteps
    x = randn_tensor((1, 3, 16, 16), generator=_generators(1), dtype=torch.float32)
    with torch.no_grad():
        cond, _ = pipe.encode_batch(PROMPTS[:1], 1, False)
        eps = pipe.predict_noise(x, t, *cond)
    text = guide.text_embeddings(PROMPTS[:1])
    x_in = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(guide.noised_similarity(x_in, t, text).sum(), x_in)[0]
    alpha = pipe.scheduler.alphas_cumprod[t]
    eps = eps - s * (1 - alpha).sqrt() * grad
    expected = pipe.scheduler.step(eps, t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(one[0], ((expected[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(), atol=1e-5)


def test_refusals_name_their_cause(tiny_toy_pipeline_dir, tiny_sd_pipeline_dir, tiny_noised_clip_dir, tmp_path,
                                   make_cfg, small_world):
    import shutil

    from synrep.config import ConfigError
    from synrep.generation.sources import source_spec

    guide = load_guide(str(tiny_noised_clip_dir))
    sd = load_pipeline(str(tiny_sd_pipeline_dir), "ddim", device="cpu")
    with pytest.raises(ValueError, match="latents"):
        clip_guided(sd, guide, PROMPTS, _generators(2), 2, 1.0, clip_scale=1.0)
    # another noise schedule than the one the CLIP was trained on
    other = tmp_path / "other"
    shutil.copytree(tiny_noised_clip_dir, other)
    info = json.loads((other / noised_clip.NOISED_CONFIG).read_text())
    info["noise_schedule"]["beta_schedule"] = "linear"
    (other / noised_clip.NOISED_CONFIG).write_text(json.dumps(info))
    toy = load_pipeline(str(tiny_toy_pipeline_dir), "ddim", device="cpu")
    with pytest.raises(ValueError, match="noise schedule"):
        clip_guided(toy, load_guide(str(other)), PROMPTS, _generators(2), 2, 1.0, clip_scale=1.0)
    cfg = make_cfg(f"generation.model={tiny_toy_pipeline_dir}", "sources.nc.guidance.kind=clip",
                   "sources.nc.guidance.clip_scale=10", f"sources.nc.guidance.clip_model={tiny_noised_clip_dir}",
                   "sources.nc.guidance.cutouts=2", base=small_world)
    with pytest.raises(ConfigError, match=r"sources.nc.guidance.cutouts"):
        source_spec(cfg, "nc")
