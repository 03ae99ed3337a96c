"""GLIDE's CLIP guidance: zero scale is the pipeline's own sampling; a positive scale raises the
guiding CLIP's score, on the pixel-space toy generator and on a latent Stable Diffusion pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synrep.diffusion.clip_guidance import clip_guided, load_guide
from synrep.diffusion.pipelines import load_pipeline
from tests.conftest import assert_regenerated

PROMPTS = ["a red circle", "a large blue square on a dark background"]


def _generators(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


def _pipeline_images(pipe, w: float, n: int = 2) -> np.ndarray:
    return pipe(prompt=PROMPTS, num_images_per_prompt=n, num_inference_steps=3, guidance_scale=w,
                generator=_generators(len(PROMPTS) * n), output_type="np").images


def _score(guide, images: np.ndarray, n: int = 2) -> np.ndarray:
    text = guide.text_embeddings(PROMPTS).repeat_interleave(n, 0)
    with torch.no_grad():
        return guide.similarity(torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2), text).numpy()


@pytest.mark.parametrize("kind", ["toy", "sd"])
def test_clip_guidance_at_zero_is_the_pipeline_and_raises_the_guiding_score(kind, tiny_toy_pipeline_dir,
                                                                            tiny_sd_pipeline_dir, tiny_clip_dir):
    folder = tiny_toy_pipeline_dir if kind == "toy" else tiny_sd_pipeline_dir
    pipe = load_pipeline(str(folder), "ddim", device="cpu")
    guide = load_guide(str(tiny_clip_dir))
    for w in (1.0, 3.0):
        plain = _pipeline_images(pipe, w)
        same = clip_guided(pipe, guide, PROMPTS, _generators(4), 3, w, clip_scale=0.0, num_images_per_prompt=2)
        np.testing.assert_array_equal(same, plain)
    guided = clip_guided(pipe, guide, PROMPTS, _generators(4), 3, 3.0, clip_scale=200.0, num_images_per_prompt=2)
    assert np.abs(guided - plain).max() > 1e-3
    # every image moves towards its caption in the guiding CLIP's space
    assert (_score(guide, guided) > _score(guide, plain)).all()


def test_cutouts_are_seeded_by_the_images_noise(tiny_toy_pipeline_dir, tiny_clip_dir):
    pipe = load_pipeline(str(tiny_toy_pipeline_dir), "dpmsolver", device="cpu")
    guide = load_guide(str(tiny_clip_dir))
    a, b = (clip_guided(pipe, guide, PROMPTS, _generators(4), 3, 2.0, clip_scale=100.0, num_images_per_prompt=2,
                        cutouts=4) for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_euler_is_refused_with_the_reason(tiny_toy_pipeline_dir, tiny_clip_dir):
    pipe = load_pipeline(str(tiny_toy_pipeline_dir), "euler", device="cpu")
    with pytest.raises(ValueError, match="alpha_t"):
        clip_guided(pipe, load_guide(str(tiny_clip_dir)), PROMPTS, _generators(2), 3, 2.0, clip_scale=1.0)


def test_a_clip_guided_source_generates_shards_that_regenerate_exactly(make_cfg, small_world, tiny_toy_pipeline_dir,
                                                                       tiny_clip_dir):
    from synrep.config import ConfigError
    from synrep.data import captions
    from synrep.data.shards import read_shard
    from synrep.generation import generate
    from synrep.generation.provenance import regenerate

    overrides = [f"generation.model={tiny_toy_pipeline_dir}", f"generation.clip_model={tiny_clip_dir}",
                 "generation.steps=2", "generation.images_per_caption=2", "generation.captions_per_shard=4",
                 "captions.limit=4", f"paths.data_dir={small_world}/data",
                 "sources.clip3.guidance.kind=clip", "sources.clip3.guidance.w=2",
                 "sources.clip3.guidance.clip_scale=50", "sources.clip3.guidance.cutouts=2"]
    cfg = make_cfg(*overrides)
    captions.run(cfg)
    [path] = generate.run(cfg, source="clip3")
    samples = list(read_shard(path))
    record = samples[0]["record"]
    assert record["source"]["guidance"]["kind"] == "clip" and record["source"]["guidance"]["clip_scale"] == 50
    assert len(record["source"]["guidance"]["clip_sha256"]) == 64
    assert_regenerated(regenerate(record, 1, device="cpu"), samples[0]["images"][1])
    # CLIP settings on a source that does not use CLIP guidance are refused, naming the key
    with pytest.raises(ConfigError, match=r"sources.clip3.guidance.clip_scale"):
        make_cfg(*overrides, "sources.clip3.guidance.kind=cfg")


def test_steps_below_min_alpha_bar_are_not_guided(tiny_toy_pipeline_dir, tiny_clip_dir):
    """Guidance skips exactly the steps whose ᾱ_t (read from the scheduler) is below the floor: above
    every step's ᾱ it is the pipeline's own sampling whatever the scale; 0 guides every step."""
    pipe = load_pipeline(str(tiny_toy_pipeline_dir), "dpmsolver", device="cpu")
    guide = load_guide(str(tiny_clip_dir))
    plain = _pipeline_images(pipe, 2.0)
    pipe.scheduler.set_timesteps(3)
    alphas = [float(pipe.scheduler.alphas_cumprod[t]) for t in pipe.scheduler.timesteps]
    above_all = clip_guided(pipe, guide, PROMPTS, _generators(4), 3, 2.0, clip_scale=200.0, num_images_per_prompt=2,
                            min_alpha_bar=min(1.0, max(alphas) * 1.01))
    np.testing.assert_array_equal(above_all, plain)
    floor = sorted(alphas)[1]  # the noisiest step falls below it
    for min_alpha_bar in (0.0, floor):
        trace: list = []
        clip_guided(pipe, guide, PROMPTS, _generators(4), 3, 2.0, clip_scale=200.0, num_images_per_prompt=2,
                    min_alpha_bar=min_alpha_bar, trace=trace)
        assert [s["guided"] for s in trace] == [a >= min_alpha_bar for a in alphas]
        assert [s["alpha_bar"] for s in trace] == pytest.approx(alphas)
        # (a guided step's kick may be 0 where the clamp of x̂0 cuts every pixel's gradient)
        assert all(float(s["kick"].abs().max()) == 0 for s in trace if not s["guided"])
        assert any(float(s["kick"].abs().max()) > 0 for s in trace if s["guided"])


def test_min_alpha_bar_is_part_of_a_plain_clip_sources_identity(make_cfg, tiny_clip_dir):
    from synrep.config import ConfigError
    from synrep.generation.sources import source_spec

    base = [f"generation.clip_model={tiny_clip_dir}", "sources.c.guidance.kind=clip", "sources.c.guidance.clip_scale=30"]
    default = source_spec(make_cfg(*base), "c")["guidance"]
    every = source_spec(make_cfg(*base, "sources.c.guidance.min_alpha_bar=0"), "c")["guidance"]
    assert default["min_alpha_bar"] == 1e-3 and every["min_alpha_bar"] == 0.0
    with pytest.raises(ConfigError, match=r"sources.c.guidance.min_alpha_bar"):
        make_cfg(*base, "sources.c.guidance.min_alpha_bar=1.5")


def _reread(loaded, cls=None, **scheduler_config):
    """A new pipeline around the loaded one's parts (that one is cached and shared with other tests),
    its scheduler's config changed."""
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    scheduler = type(loaded.scheduler).from_config({**loaded.scheduler.config, **scheduler_config})
    return (cls or ToyGlidePipeline)(unet=loaded.unet, scheduler=scheduler, text_encoder=loaded.text_encoder,
                                     tokenizer=loaded.tokenizer)


def test_a_v_prediction_model_is_guided_as_the_epsilon_model_its_v_implies(tiny_toy_pipeline_dir, tiny_clip_dir):
    """The same UNet read as v is guided as an epsilon model whose output is the ε that v implies
    (ε = sqrt(ᾱ) v + sqrt(1 - ᾱ) x_t, written here by hand): the same x̂0 for the CLIP, the same shift of
    ε̂, the same steps."""
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    loaded = load_pipeline(str(tiny_toy_pipeline_dir), "ddim", device="cpu")
    alphas = loaded.scheduler.alphas_cumprod

    class NoiseOfV(ToyGlidePipeline):
        def predict_noise(self, x, t, states, pooled):
            a = alphas[int(t)]
            return a.sqrt() * super().predict_noise(x, t, states, pooled) + (1 - a).sqrt() * x

    guide = load_guide(str(tiny_clip_dir))
    # steps at t = 666, 333, 0: at t = 999 (ᾱ = 2.4e-9) the hand-made ε loses v's x̂0 to float32 rounding
    # (x_t − sqrt(1 − ᾱ) ε cancels to a part in 1e7, then gains 2e4)
    v, eps = {"prediction_type": "v_prediction", "timestep_spacing": "leading"}, {"timestep_spacing": "leading"}
    as_v, by_hand, as_eps = (
        clip_guided(pipe, guide, PROMPTS, _generators(4), 3, 2.0, clip_scale=200.0, num_images_per_prompt=2)
        for pipe in (_reread(loaded, **v), _reread(loaded, NoiseOfV, **eps), _reread(loaded, **eps)))
    np.testing.assert_allclose(as_v, by_hand, atol=1e-4)
    unguided = clip_guided(_reread(loaded, **v), guide, PROMPTS, _generators(4), 3, 2.0, clip_scale=0.0,
                           num_images_per_prompt=2)
    assert np.abs(as_v - unguided).max() > 1e-3  # the guidance acts on the v model
    assert np.abs(as_v - as_eps).max() > 1e-2  # reading v as ε would sample other images


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver"])  # ᾱ_999 = 0, and 2^-24 to keep DPM-Solver's σ finite
def test_a_zero_snr_first_step_cannot_be_guided_and_is_refused_in_one_line(sampler, tiny_toy_pipeline_dir,
                                                                          tiny_clip_dir):
    from synrep.settings import InputError

    loaded = load_pipeline(str(tiny_toy_pipeline_dir), sampler, device="cpu")
    pipe = _reread(loaded, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    guide = load_guide(str(tiny_clip_dir))
    with pytest.raises(InputError, match=r"^CLIP guidance shifts the noise prediction, which a v_prediction model's "
                                         r"output at alpha_t = 0 \(its first step\) cannot carry: set the guidance's "
                                         r"min_alpha_bar above 0$"):
        clip_guided(pipe, guide, PROMPTS, _generators(2), 3, 2.0, clip_scale=1.0, min_alpha_bar=0.0)
    trace: list = []
    clip_guided(pipe, guide, PROMPTS, _generators(2), 3, 2.0, clip_scale=1.0, min_alpha_bar=1e-3, trace=trace)
    assert [s["t"] for s in trace][0] == 999 and trace[0]["alpha_bar"] < 1e-7
    assert [s["guided"] for s in trace] == [False, True, True]
