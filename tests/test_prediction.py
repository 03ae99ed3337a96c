"""The UNet's output read as x̂0 or ε for each prediction type, against diffusers' DDIM step (which
converts inside ``step``) and against the pair (x0, ε) that made x_t."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from synrep.diffusion.prediction import (
    output_for_noise,
    output_for_original,
    predicted_noise,
    predicted_original,
    prediction_type,
)
from synrep.diffusion.training import denoising_target
from synrep.settings import InputError

PREDICTIONS = ["epsilon", "v_prediction", "sample"]


def _scheduler(prediction: str, **extra) -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction,
                         clip_sample=False, **extra)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_x0_and_noise_from_the_output_are_diffusers_ddim_step(prediction):
    scheduler = _scheduler(prediction)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    x, output = torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 3, 8, 8, generator=generator)
    for t in scheduler.timesteps:
        t_prev = int(t) - 1000 // 4
        alpha, alpha_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        step = scheduler.step(output, t, x, eta=0.0)
        x0 = predicted_original(prediction, output, x, alpha)
        torch.testing.assert_close(x0, step.pred_original_sample)
        # DDIM's next sample from the same x̂0 and ε̂
        eps = predicted_noise(prediction, output, x, alpha)
        torch.testing.assert_close(alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps, step.prev_sample,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_output_for_the_true_x0_is_the_training_target(prediction):
    """x_t made from (x0, ε): the output that implies x̂0 = x0 is what the model is trained to predict,
    and it reads back as that x0 and that ε."""
    scheduler = _scheduler(prediction)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 3, 8, 8, generator=generator), torch.randn(3, 3, 8, 8, generator=generator)
    for t in (10, 500, 990):
        alpha = scheduler.alphas_cumprod[t]
        x = scheduler.add_noise(x0, noise, torch.tensor([t]))
        output = output_for_original(prediction, x0, x, alpha)
        torch.testing.assert_close(output, denoising_target(scheduler, x0, noise, torch.tensor([t])),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(predicted_original(prediction, output, x, alpha), x0, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(predicted_noise(prediction, output, x, alpha), noise, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(output_for_noise(prediction, noise, x, alpha), output, rtol=1e-4, atol=1e-4)


def test_a_zero_snr_v_model_has_an_x0_at_its_first_step():
    scheduler = _scheduler("v_prediction", rescale_betas_zero_snr=True)
    alpha = scheduler.alphas_cumprod[999]
    assert float(alpha) == 0
    x, v = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(predicted_original("v_prediction", v, x, alpha), -v)
    torch.testing.assert_close(output_for_original("v_prediction", -v, x, alpha), v)


def test_an_unknown_prediction_type_is_refused_in_one_line():
    scheduler = _scheduler("epsilon")
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(InputError, match=r"^unsupported prediction_type 'flow' \(epsilon, v_prediction, sample\)$"):
        prediction_type(scheduler)
