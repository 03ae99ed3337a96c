"""The toy GLIDE-style generator: guidance maths, save/load, training entry point."""

import json

import numpy as np
import pytest
import torch

from synrep.diffusion.toy.pipeline import ToyGlidePipeline, guided_noise
from synrep.diffusion.toy.text import tokenize
from tests.conftest import TINY_GENERATOR


def test_tokenizer_is_word_level_and_offline(tiny_toy_pipeline_dir):
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    ids, mask = tokenize(pipe.tokenizer, ["A  Red\u00a0CIRCLE", ""])
    vocab = pipe.tokenizer.get_vocab()
    assert ids[0, :5].tolist() == [vocab["[BOS]"], vocab["a"], vocab["red"], vocab["circle"], vocab["[EOS]"]]
    assert ids[1, :2].tolist() == [vocab["[BOS]"], vocab["[EOS]"]]  # the empty caption
    assert mask[0].sum() == 5 and ids.shape[1] == pipe.tokenizer.model_max_length


def test_guidance_is_one_batched_call_matching_separate_passes(tiny_toy_pipeline_dir):
    """eps_u + w (eps_c - eps_u), conditional and unconditional in one UNet call, against a loop
    that calls the UNet twice per step."""
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    calls = []
    pipe.unet.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    prompts, w, steps = ["a red circle", "a big blue cross"], 3.0, 4
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    got = pipe(prompts, guidance_scale=w, num_inference_steps=steps, generator=gens, output_type="pt").images
    assert calls == [4] * steps  # 2 prompts x (cond + uncond), one call per step

    sched = pipe.scheduler
    cond_states, cond_pooled = pipe.encode_prompt(prompts)
    u_states, u_pooled = pipe.encode_prompt(["", ""])
    x = torch.stack([torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            e_c = pipe.unet(x, t, encoder_hidden_states=cond_states, class_labels=cond_pooled).sample
            e_u = pipe.unet(x, t, encoder_hidden_states=u_states, class_labels=u_pooled).sample
            x = sched.step(e_u + w * (e_c - e_u), t, x).prev_sample
    expected = (x.clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_guided_noise_is_cfg_with_lins_rescale():
    """eps_u + w (eps_c - eps_u), then Lin et al. 2023, eq. 15-16: x * std(eps_c) / std(x) per
    sample, mixed with x by the rescale factor phi."""
    gen = torch.Generator().manual_seed(0)
    e_u, e_c = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen) * 0.5 + 0.2
    w = 8.0
    guided = e_u + w * (e_c - e_u)
    torch.testing.assert_close(guided_noise(e_u, e_c, w), guided, rtol=0, atol=0)
    std = lambda t: t.std(dim=(1, 2, 3), keepdim=True)  # noqa: E731
    for phi in (0.7, 1.0):
        expected = phi * guided * std(e_c) / std(guided) + (1 - phi) * guided
        torch.testing.assert_close(guided_noise(e_u, e_c, w, guidance_rescale=phi), expected)
    # phi = 1: the guided noise has the conditional prediction's spread, sample by sample
    torch.testing.assert_close(std(guided_noise(e_u, e_c, w, guidance_rescale=1.0)), std(e_c))


def test_w1_skips_the_unconditional_pass(tiny_toy_pipeline_dir):
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    calls = []
    pipe.unet.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    pipe(["a red circle"], guidance_scale=1.0, num_inference_steps=2, output_type="np")
    assert calls == [1, 1]


def test_save_and_load_round_trip_gives_identical_samples(tiny_toy_pipeline_dir, tmp_path):
    pipe = ToyGlidePipeline.from_pretrained(tiny_toy_pipeline_dir)
    pipe.save_pretrained(tmp_path / "again")
    again = ToyGlidePipeline.from_pretrained(tmp_path / "again")
    kw = dict(guidance_scale=2.0, num_inference_steps=3, output_type="np")
    a = pipe(["a pink ring"], generator=[torch.Generator().manual_seed(5)], **kw).images
    b = again(["a pink ring"], generator=[torch.Generator().manual_seed(5)], **kw).images
    np.testing.assert_array_equal(a, b)
    index = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert index["_class_name"] == "ToyGlidePipeline"
    assert list((tmp_path / "again" / "unet").glob("*.safetensors"))


def test_train_generator_entry_point(make_cfg, small_world, tmp_path):
    from mlflow import MlflowClient

    from synrep.recipes import toy_generator as train
    from synrep.tracking import tracking_uri

    cfg = make_cfg(f"paths.data_dir={small_world}/data", *TINY_GENERATOR, "toy_generator.caption_dropout=0.5")
    out = train.run(cfg)
    pipe = ToyGlidePipeline.from_pretrained(out["model"])
    assert list(pipe.unet.config.block_out_channels) == list(cfg.toy_generator.model.block_out_channels)
    # the saved weights are the trained ones, not the initialisation (same seed)
    torch.manual_seed(cfg.toy_generator.seed)
    init = train.build_pipeline(cfg).unet.state_dict()
    moved = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, init[k])]
    assert len(moved) > len(init) // 2, moved
    summary = json.loads(out["summary"].read_text())
    assert "caption_dropout: 0.5" in out["recipe"].read_text()
    client = MlflowClient(tracking_uri(cfg))
    run = client.get_run(summary["mlflow_run_id"])
    # the loss curve of training.json is the one MLflow shows: a mean every log_every steps
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")]
    log_every, steps = cfg.toy_generator.log_every, cfg.toy_generator.steps
    assert history == [(s, pytest.approx(v)) for s, v in zip(range(log_every, steps + 1, log_every), summary["loss_curve"],
                                                               strict=True)]
    assert summary["final_loss"] == summary["loss_curve"][-1]
    assert run.data.params["toy_generator.caption_dropout"] == "0.5"


def test_training_rejects_mismatched_image_size(make_cfg, small_world):
    from synrep.recipes import toy_generator as train

    cfg = make_cfg(f"paths.data_dir={small_world}/data", *TINY_GENERATOR, "toy_generator.model.sample_size=32")
    with pytest.raises(ValueError, match="toy_generator.model.sample_size"):
        train.run(cfg)


ZERO_SNR = ["toy_generator.model.prediction_type=v_prediction", "toy_generator.model.rescale_betas_zero_snr=true",
            "toy_generator.snr_gamma=null"]


def test_a_zero_terminal_snr_generator_has_an_x0_estimate_at_its_first_step(make_cfg):
    """With zero terminal SNR and v-prediction, t = 999 is pure noise (ᾱ = 0) and DDIM's x̂0 there is
    -v, bounded, where the epsilon generator's x̂0 multiplies the noise by 1/√ᾱ ≈ 2e4."""
    from synrep.recipes import toy_generator as train

    eps_pipe = train.build_pipeline(make_cfg(*TINY_GENERATOR))
    v_pipe = train.build_pipeline(make_cfg(*TINY_GENERATOR, *ZERO_SNR))
    assert float(v_pipe.scheduler.alphas_cumprod[-1]) == 0.0 < float(eps_pipe.scheduler.alphas_cumprod[-1]) < 1e-8
    x, out = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(0)).unbind(0)
    x, out = x[None], 0.1 * out[None]
    for pipe in (eps_pipe, v_pipe):
        pipe.scheduler.set_timesteps(4)
        assert int(pipe.scheduler.timesteps[0]) == 999
    v_step = v_pipe.scheduler.step(out, 999, x, eta=0.0)
    assert torch.allclose(v_step.pred_original_sample, -out)
    eps_x0 = (x - (1 - eps_pipe.scheduler.alphas_cumprod[-1]).sqrt() * out) / eps_pipe.scheduler.alphas_cumprod[-1].sqrt()
    assert eps_x0.abs().median() > 1e3


def test_zero_terminal_snr_asks_for_v_prediction_and_an_unweighted_loss(make_cfg):
    from synrep.settings import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'toy_generator.model.rescale_betas_zero_snr': zero terminal "
                                          r"SNR needs toy_generator.model.prediction_type v_prediction"):
        make_cfg("toy_generator.model.rescale_betas_zero_snr=true")
    with pytest.raises(ConfigError, match=r"config key 'toy_generator.snr_gamma': min-SNR weighting gives the "
                                          r"zero-SNR step weight 0"):
        make_cfg("toy_generator.model.rescale_betas_zero_snr=true", "toy_generator.model.prediction_type=v_prediction")
