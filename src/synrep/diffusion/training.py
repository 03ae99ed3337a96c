"""What every diffusion fine-tune here shares (the toy generator and its inpainting model, the toy
unCLIP's prior and decoder, DreamBooth): the denoising loss and the weight update.

diffusers ships the models, schedulers and EMA but no training loop; its example scripts
(train_text_to_image.py, train_dreambooth.py) write this loss inline, and so did each loop here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synrep.diffusion.prediction import prediction_type


def denoising_target(noise_scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the model learns to predict, by ``noise_scheduler.config.prediction_type``: the noise
    (epsilon), the velocity sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x0 (v_prediction) or the clean sample (sample)."""
    prediction = prediction_type(noise_scheduler)  # one of the three, or a one-line error
    if prediction == "epsilon":
        return noise
    if prediction == "v_prediction":
        return noise_scheduler.get_velocity(x0, noise, t)
    return x0


def denoising_loss(pred: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, noise_scheduler,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """The mean squared error of ``pred`` against the scheduler's target (in float32, as diffusers'
    examples), or with min-SNR-γ weighting (Hang et al. 2023) when ``snr_gamma`` is set: each
    example's error weighted by min(SNR, γ) / SNR for epsilon, min(SNR, γ) / (SNR + 1) for
    v_prediction and min(SNR, γ) for sample, which tames the easy low-noise steps so that more of
    the gradient goes where the caption decides the shape."""
    target = denoising_target(noise_scheduler, x0, noise, t)
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    # imported on use, as DreamBooth's module imports diffusers: steps that only read its settings import it
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, t)
    weight = torch.clamp(snr, max=snr_gamma)
    prediction = noise_scheduler.config.prediction_type
    if prediction == "epsilon":
        weight = weight / snr
    elif prediction == "v_prediction":
        weight = weight / (snr + 1)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.dim())))
    return (per_sample * weight).mean()


def update_weights(loss: torch.Tensor, params: list, optimizer, lr_schedule, *, max_grad_norm: float,
                   ema=None) -> None:
    """One optimizer step: gradients clipped at norm ``max_grad_norm``, then the lr schedule's step
    and, when an EMA of the weights is kept, the EMA's."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    lr_schedule.step()
    if ema is not None:
        ema.step(params)
