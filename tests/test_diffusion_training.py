"""The one denoising loss (epsilon, v_prediction, sample; optional min-SNR-γ) against the plain
formulas, and bit for bit against the losses each training loop computed before it shared this one
(written out below as they were): per call, and step by step in real runs of the toy generator and
of a v-prediction DreamBooth with prior preservation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UnCLIPScheduler
from diffusers.training_utils import compute_snr

from synrep.config import InputError
from synrep.diffusion.training import denoising_loss
from tests.conftest import TINY_GENERATOR

# --------------------------------------------------------------------------------------------
# The losses as each loop computed them
# --------------------------------------------------------------------------------------------


def old_noise_loss(pred, noise, t, noise_scheduler, snr_gamma):
    """The toy generator's, the inpainting model's and the unCLIP decoder's (eps-prediction)."""
    if snr_gamma is None:
        return F.mse_loss(pred, noise)
    snr = compute_snr(noise_scheduler, t)
    weight = torch.clamp(snr, max=snr_gamma) / snr
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def old_dreambooth_target(noise_scheduler, x0, noise, t):
    if noise_scheduler.config.prediction_type == "epsilon":
        return noise
    return noise_scheduler.get_velocity(x0, noise, t)


def old_dreambooth_loss(model_pred, target, with_prior_preservation, prior_loss_weight):
    if not with_prior_preservation:
        instance = F.mse_loss(model_pred.float(), target.float())
        return instance, instance, None
    pred, pred_prior = torch.chunk(model_pred, 2, dim=0)
    tgt, tgt_prior = torch.chunk(target, 2, dim=0)
    instance = F.mse_loss(pred.float(), tgt.float())
    prior = F.mse_loss(pred_prior.float(), tgt_prior.float())
    return instance + prior_loss_weight * prior, instance, prior


def batch(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen) * 2 - 1
    noise = torch.randn(shape, generator=gen)
    pred = torch.randn(shape, generator=gen).requires_grad_()
    t = torch.tensor([0, 3, 250, 500, 900, 999])[:shape[0]]
    return pred, noise, x0, t


def value_and_gradient(loss_of, pred):
    pred.grad = None
    loss = loss_of()
    loss.backward()
    return loss.detach(), pred.grad.clone()


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------
# Per call
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_loss_is_the_formula(prediction, snr_gamma):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction)
    pred, noise, x0, t = batch((6, 3, 8, 8))
    alpha_bar = scheduler.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    target = {"epsilon": noise.double(), "sample": x0.double(),
              "v_prediction": alpha_bar.sqrt() * noise.double() - (1 - alpha_bar).sqrt() * x0.double()}[prediction]
    squared = (pred.detach().double() - target) ** 2
    if snr_gamma is None:
        want = squared.mean()
    else:
        snr = (alpha_bar / (1 - alpha_bar)).flatten()
        capped = torch.minimum(snr, torch.full_like(snr, snr_gamma))
        weight = {"epsilon": capped / snr, "v_prediction": capped / (snr + 1), "sample": capped}[prediction]
        want = (squared.mean(dim=(1, 2, 3)) * weight).mean()
    got = denoising_loss(pred, noise, x0, t, scheduler, snr_gamma)
    assert got.dtype == torch.float32
    assert got.double().item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_the_toy_generators_loss_is_unchanged_bit_for_bit(snr_gamma):
    """The toy generator, its inpainting model and the unCLIP decoder: eps-prediction, L_simple or min-SNR-γ."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")
    pred, noise, x0, t = batch((6, 3, 16, 16))
    assert same(value_and_gradient(lambda: denoising_loss(pred, noise, x0, t, scheduler, snr_gamma), pred),
                value_and_gradient(lambda: old_noise_loss(pred, noise, t, scheduler, snr_gamma), pred))


def test_the_unclip_priors_loss_is_unchanged_bit_for_bit():
    """The prior predicts the clean (normalised) CLIP embedding: MSE on x0."""
    scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                clip_sample_range=5.0)
    pred, noise, x0, t = batch((6, 32))
    assert same(value_and_gradient(lambda: denoising_loss(pred, noise, x0, t, scheduler), pred),
                value_and_gradient(lambda: F.mse_loss(pred, x0), pred))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("with_prior_preservation", [False, True])
def test_dreamboths_loss_is_unchanged_bit_for_bit(prediction, with_prior_preservation):
    from synrep.recipes.dreambooth import dreambooth_loss

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
    pred, noise, x0, t = batch((6, 4, 8, 8))
    new = dreambooth_loss(pred, noise, x0, t, scheduler, with_prior_preservation, 0.3)
    old = old_dreambooth_loss(pred, old_dreambooth_target(scheduler, x0, noise, t), with_prior_preservation, 0.3)
    assert same([v for v in new if v is not None], [v for v in old if v is not None])
    assert (new[2] is None) == (old[2] is None) == (not with_prior_preservation)
    new[0].backward()
    grad, pred.grad = pred.grad.clone(), None
    old[0].backward()
    assert torch.equal(grad, pred.grad)


def test_an_unknown_prediction_type_is_an_input_error():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(InputError, match="prediction_type 'flow'"):
        denoising_loss(*batch((2, 3, 4, 4)), scheduler)


# --------------------------------------------------------------------------------------------
# Step by step in training runs
# --------------------------------------------------------------------------------------------


def test_the_toy_generators_training_run_is_unchanged(make_cfg, small_world, tmp_path, monkeypatch):
    """The loss curve and the saved (EMA) weights of a toy generator run with min-SNR-γ are those of
    the same run with the loss and the update as the loop wrote them before."""
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline
    from synrep.recipes import toy_generator as train

    def old_update(loss, params, optimizer, lr_schedule, max_grad_norm, ema):  # clipped at 1 whatever it is told
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(params)

    def trained(name):
        cfg = make_cfg(f"paths.data_dir={small_world}/data", *TINY_GENERATOR, "toy_generator.snr_gamma=5.0",
                       f"toy_generator.output_dir={tmp_path / name}")
        out = train.run(cfg)
        unet = ToyGlidePipeline.from_pretrained(out["model"]).unet.state_dict()
        return json.loads(out["summary"].read_text())["loss_curve"], unet

    curve, weights = trained("now")
    monkeypatch.setattr(train, "denoising_loss",
                        lambda pred, noise, x0, t, scheduler, gamma: old_noise_loss(pred, noise, t, scheduler, gamma))
    monkeypatch.setattr(train, "update_weights", old_update)
    old_curve, old_weights = trained("before")
    assert len(curve) == 2 and curve == old_curve
    assert weights.keys() == old_weights.keys() and all(torch.equal(v, old_weights[k]) for k, v in weights.items())


def test_a_v_prediction_dreambooth_run_with_prior_preservation_has_the_old_loss_at_every_step(
        tmp_path, make_cfg, tiny_sd_pipeline_dir, monkeypatch):
    from diffusers import DDIMScheduler

    from synrep.data import toy_subject
    from synrep.recipes import dreambooth as db
    from tests.test_dreambooth import TINY_RUN, fresh

    cfg = make_cfg(*TINY_RUN, "dreambooth.train_batch_size=1", "dreambooth.num_class_images=2",
                   "dreambooth.max_train_steps=2", "dreambooth.with_prior_preservation=true")
    pipe = fresh(tiny_sd_pipeline_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    images, _ = toy_subject.render_subject(cfg, 2, 0)
    new_loss, compared = db.dreambooth_loss, []

    def both(pred, noise, x0, t, scheduler, prior, weight):
        assert scheduler.config.prediction_type == "v_prediction"
        new = new_loss(pred, noise, x0, t, scheduler, prior, weight)
        with torch.no_grad():
            old = old_dreambooth_loss(pred, old_dreambooth_target(scheduler, x0, noise, t), prior, weight)
        compared.append(same(new, old))
        return new

    monkeypatch.setattr(db, "dreambooth_loss", both)
    db.train_dreambooth(pipe, images[:, ::2, ::2], cfg.dreambooth, tmp_path / "class",
                        db.sampling_settings(cfg.dreambooth, cfg.generation), progress=False)
    assert compared == [True, True]
