"""What a denoising UNet predicts, read as the clean image or the noise at one step.

A scheduler's ``prediction_type`` names the UNet's output at x_t = √ᾱ x0 + √(1 − ᾱ) ε: the noise ε
(``epsilon``, GLIDE and the shipped toy generator), the velocity v = √ᾱ ε − √(1 − ᾱ) x0
(``v_prediction``, Salimans & Ho 2022; with a zero-terminal-SNR schedule) or x0 itself
(``sample``). diffusers' schedulers convert inside ``step``; the code that works on x̂0 between steps
(CLIP guidance, inpainting's replacement of the kept region, DDIM inversion, NADA's checks) converts
here, so that each formula is written once and holds for each prediction type.
"""

from __future__ import annotations

import torch

from synrep.settings import InputError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def prediction_type(scheduler) -> str:
    """The scheduler's ``prediction_type`` (diffusers' default, epsilon, where its config has none)."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise InputError(f"unsupported prediction_type {prediction!r} ({', '.join(PREDICTION_TYPES)})")
    return prediction


def predicted_original(prediction: str, output: torch.Tensor, x: torch.Tensor,
                       alpha_bar: torch.Tensor) -> torch.Tensor:
    """x̂0 at x_t from the UNet's ``output`` (ᾱ_t = ``alpha_bar``), unclamped, as diffusers'
    ``pred_original_sample``. Undefined for epsilon at ᾱ = 0."""
    if prediction == "epsilon":
        return (x - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
    if prediction == "v_prediction":
        return alpha_bar.sqrt() * x - (1 - alpha_bar).sqrt() * output
    return output


def predicted_noise(prediction: str, output: torch.Tensor, x: torch.Tensor,
                    alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε̂ at x_t from the UNet's ``output``. Undefined for sample at ᾱ = 1."""
    if prediction == "epsilon":
        return output
    if prediction == "v_prediction":
        return alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x
    return (x - alpha_bar.sqrt() * output) / (1 - alpha_bar).sqrt()


def output_for_original(prediction: str, x0: torch.Tensor, x: torch.Tensor,
                        alpha_bar: torch.Tensor) -> torch.Tensor:
    """The output that a UNet of this prediction type gives at x_t when its x̂0 is ``x0``: the inverse
    of ``predicted_original`` in the output (GLIDE's ``denoised_fn`` replaces x̂0 this way)."""
    if prediction == "epsilon":
        return (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    if prediction == "v_prediction":
        return (alpha_bar.sqrt() * x - x0) / (1 - alpha_bar).sqrt()
    return x0


def output_for_noise(prediction: str, noise: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The output that a UNet of this prediction type gives at x_t when its ε̂ is ``noise``: the inverse
    of ``predicted_noise`` in the output (CLIP guidance shifts ε̂ and steps with this). Undefined for
    v_prediction and sample at ᾱ = 0, where x_t holds no trace of x0 for ε̂ to move."""
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return (noise - (1 - alpha_bar).sqrt() * x) / alpha_bar.sqrt()
    return (x - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
