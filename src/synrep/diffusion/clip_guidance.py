"""GLIDE's CLIP guidance with a plain (un-noised) CLIP on the predicted clean image, for pixel and
latent diffusion pipelines alike.

At each step, with ε the (optionally classifier-free guided) noise prediction:

    x̂0 = (x_t − sqrt(1 − ᾱ_t) ε_c(x_t)) / sqrt(ᾱ_t)
    ε̂  = ε − s · sqrt(1 − ᾱ_t) · ∇_{x_t} cos(CLIP_img(D(x̂0)), CLIP_txt(c))

D is the identity for a pixel-space model (the toy generator) and the VAE's decoder for a latent one
(Stable Diffusion); the gradient flows through the conditional UNet pass, as in diffusers'
community pipeline ``clip_guided_stable_diffusion``, whose form this follows (with GLIDE's
similarity, the cosine, in place of its spherical distance). ``cutouts`` > 0 scores the mean over
that many random square crops of D(x̂0) (the community pipeline's ``MakeCutouts``) instead of the
whole image. Works with the samplers that step on ᾱ_t (ddim, ddpm, dpmsolver, pndm).

With a noised CLIP (GLIDE's own form, diffusion/noised_clip.py; pixel-space models only) the
gradient is taken on x_t directly, with no pass through the denoiser:

    ε̂  = ε − s · sqrt(1 − ᾱ_t) · ∇_{x_t} cos(CLIP_img(x_t, t), CLIP_txt(c))

GLIDE scales the dot product by CLIP's temperature; here that factor is part of s.

Steps with ᾱ_t < ``min_alpha_bar`` are not CLIP-guided (the form on x̂0 only). There x̂0 divides by
sqrt(ᾱ_t), so the gradient reaching x_t carries a gain of about 1/sqrt(ᾱ_t): on the toy scheduler
(cosine, trailing) the first step sits at t = 999, ᾱ = 2.4e-9, a gain of 2e4, where nearly every
pixel of x̂0 is clamped and its gradient is a random kick rather than guidance
(benchmarks/clip_guidance_steps.py measures the kick per step). A noised CLIP reads x_t itself,
with no such gain, and guides every step.

The model may predict ε, v or x0 (``diffusion/prediction.py``): x̂0 is read for its type, and the
shift of ε̂ above becomes the output whose ε̂ is the shifted one. Where ᾱ_t = 0 (a zero-terminal-SNR
model's first step) no output carries a shifted ε̂, so such a step must be left unguided.

No library ships CLIP guidance for a diffusers pipeline in a form that takes any CLIP and any
UNet, so the sampling loop is written here; ``clip_scale = 0`` gives exactly the pipeline's own
images (tested), so only the guidance term is new.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from synrep.diffusion import noised_clip
from synrep.diffusion.clip_model import load_clip
from synrep.diffusion.prediction import output_for_noise, predicted_noise, predicted_original, prediction_type
from synrep.settings import InputError

ALPHA_SAMPLERS = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler")
@functools.lru_cache(maxsize=4)
def load_guide(path: str, device: str = "cpu") -> "ClipGuide":
    """The CLIP of an open_clip ``local-dir:`` folder (e.g. ``models/toy_clip``), frozen, loaded once
    per process: a ``NoisedClipGuide`` for a noised CLIP (diffusion/noised_clip.py)."""
    if noised_clip.is_noised_clip_folder(path):
        model, tokenizer, info = noised_clip.load(path, device)
        model.requires_grad_(False)
        return NoisedClipGuide(model, tokenizer, info)
    model, tokenizer = load_clip(path, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return ClipGuide(model, tokenizer)


class ClipGuide:
    """A CLIP that scores images in [0, 1] against captions (cosine similarity of embeddings)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        size = model.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(model.visual.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(model.visual.image_std).view(1, 3, 1, 1)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(prompts).to(device), normalize=True)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1] -> the image tower's input (resized, normalised), differentiable."""
        x = F.interpolate(images.float(), size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1], differentiable."""
        return self.model.encode_image(self.preprocess(images), normalize=True)

    def similarity(self, images: torch.Tensor, text: torch.Tensor, cutouts: int = 0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Cosine similarity per image (the mean over ``cutouts`` random crops when > 0)."""
        if cutouts <= 0:
            return (self.image_embeddings(images) * text).sum(-1)
        n, _, h, w = images.shape
        scores = []
        for _ in range(cutouts):
            side = int(torch.randint(max(2, h // 2), h + 1, (1,), generator=generator))
            top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
            crop = images[:, :, top:top + side, left:left + side]
            scores.append((self.image_embeddings(crop) * text).sum(-1))
        return torch.stack(scores).mean(0)


class NoisedClipGuide(ClipGuide):
    """GLIDE's noised CLIP: scores x_t at its timestep (``noised_similarity``); clean images, as
    every ClipGuide scores them, at t = 0."""

    noised = True

    def __init__(self, model, tokenizer, info: dict):
        super().__init__(model.clip, tokenizer)
        self.noised_model, self.info = model, info

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return self.noised_model.encode_image(self.preprocess(images), 0)

    def noised_similarity(self, x_t: torch.Tensor, t, text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of a noised pixel-space sample x_t (the [-1, 1] scale of x0) and the text."""
        return (self.noised_model.encode_image(self.preprocess((x_t + 1) / 2), t) * text).sum(-1)


class _Toy:
    """ToyGlidePipeline: pixel space, caption states + pooled embedding."""

    def __init__(self, pipe):
        self.pipe = pipe

    def encode(self, prompts: list[str], n: int, use_cfg: bool):
        return self.pipe.encode_batch(prompts, n, use_cfg)

    def output(self, x, t, context):
        return self.pipe.predict_noise(x, t, *context)

    def cat(self, a, b):
        return tuple(torch.cat([u, c]) for u, c in zip(a, b))

    def shape(self, batch: int, height: int | None, width: int | None):
        size = self.pipe.unet.config.sample_size
        return (batch, self.pipe.unet.config.in_channels, height or size, width or size)

    def decode(self, x):
        return x


class _StableDiffusion:
    """StableDiffusionPipeline: latents, decoded by the VAE."""

    def __init__(self, pipe):
        self.pipe = pipe

    def encode(self, prompts: list[str], n: int, use_cfg: bool):
        cond, uncond = self.pipe.encode_prompt(prompts, self.pipe.device, n, use_cfg)
        return cond, uncond

    def output(self, x, t, context):
        return self.pipe.unet(x, t, encoder_hidden_states=context).sample

    def cat(self, a, b):
        return torch.cat([a, b])

    def shape(self, batch: int, height: int | None, width: int | None):
        factor = self.pipe.vae_scale_factor
        size = self.pipe.unet.config.sample_size * factor
        return (batch, self.pipe.unet.config.in_channels, (height or size) // factor, (width or size) // factor)

    def decode(self, x):
        vae = self.pipe.vae
        return vae.decode(x.to(vae.dtype) / vae.config.scaling_factor).sample


def adapter(pipe):
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    if isinstance(pipe, ToyGlidePipeline):
        return _Toy(pipe)
    if hasattr(pipe, "vae") and hasattr(pipe, "encode_prompt"):
        return _StableDiffusion(pipe)
    raise TypeError(f"CLIP guidance supports ToyGlidePipeline and Stable Diffusion pipelines, not {type(pipe).__name__}")


def zero_snr_step(scheduler, t) -> bool:
    """Whether step ``t`` is a zero-terminal-SNR schedule's last timestep, where ᾱ = 0: diffusers' DDIM
    and DDPM keep it 0 there, DPM-Solver and Euler raise it to 2^-24 so that their σ stays finite."""
    last = int(t) == scheduler.config.num_train_timesteps - 1
    return float(scheduler.alphas_cumprod[t]) == 0 or (last and bool(scheduler.config.get("rescale_betas_zero_snr")))


def clip_guided(pipe, guide: ClipGuide, prompts: list[str], generators: list[torch.Generator],
                num_inference_steps: int, guidance_scale: float, clip_scale: float, eta: float = 0.0,
                num_images_per_prompt: int = 1, cutouts: int = 0, height: int | None = None,
                width: int | None = None, guidance_rescale: float = 0.0, min_alpha_bar: float = 0.0,
                trace: list | None = None) -> np.ndarray:
    """Images (float [N, H, W, 3] in [0, 1], as a pipeline's ``output_type="np"``) sampled with
    classifier-free guidance at ``guidance_scale`` (1: none) and CLIP guidance at ``clip_scale``,
    on the steps with ᾱ_t >= ``min_alpha_bar`` (every step for a noised CLIP). ``trace``: a list
    that gets, per step, t, ᾱ_t, whether it was guided and the change the guidance made to ε."""
    from diffusers.utils.torch_utils import randn_tensor

    from synrep.diffusion.toy.pipeline import guided_noise, step_kwargs

    scheduler = pipe.scheduler
    if type(scheduler).__name__ not in ALPHA_SAMPLERS:
        raise InputError(f"CLIP guidance needs a sampler that steps on alpha_t (ddim, ddpm, dpmsolver, pndm), "
                         f"not {type(scheduler).__name__}")
    prediction = prediction_type(scheduler)
    model = adapter(pipe)
    noised = getattr(guide, "noised", False)
    if noised:
        if not isinstance(model, _Toy):
            raise InputError("a noised CLIP reads pixel-space x_t; Stable Diffusion's x_t are latents: "
                             "guide it with a plain CLIP (on the decoded x̂0)")
        noised_clip.check_schedule(guide.info, scheduler)
    n = num_images_per_prompt
    batch = len(prompts) * n
    use_cfg = guidance_scale != 1.0
    with torch.no_grad():
        cond, uncond = model.encode(prompts, n, use_cfg)
        text = guide.text_embeddings(prompts).repeat_interleave(n, 0)
    context = model.cat(uncond, cond) if use_cfg else cond
    device, dtype = pipe.device, pipe.unet.dtype
    x = randn_tensor(model.shape(batch, height, width), generator=generators, device=device, dtype=dtype)
    x = x * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps, device=device)
    extra = step_kwargs(scheduler, eta, generators)
    cut_rng = torch.Generator().manual_seed(int(generators[0].initial_seed()))
    alphas = scheduler.alphas_cumprod.to(device)

    def guided_at(t) -> bool:
        return clip_scale > 0 and (noised or float(alphas[t]) >= min_alpha_bar)

    if prediction != "epsilon" and any(guided_at(t) and zero_snr_step(scheduler, t) for t in scheduler.timesteps):
        # GLIDE's guidance shifts ε̂; another output moves by that shift / √ᾱ, which has no value where
        # ᾱ_t = 0 (a zero-terminal-SNR model's first step)
        raise InputError(f"CLIP guidance shifts the noise prediction, which a {prediction} model's output at alpha_t "
                         f"= 0 (its first step) cannot carry: set the guidance's min_alpha_bar above 0")

    for t in scheduler.timesteps:
        with torch.no_grad():
            model_in = scheduler.scale_model_input(torch.cat([x, x]) if use_cfg else x, t)
            output = model.output(model_in, t, context)
            if use_cfg:
                output = guided_noise(*output.chunk(2), guidance_scale, guidance_rescale)
        alpha = alphas[t]
        guided = guided_at(t)
        if guided:
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                if noised:  # GLIDE: the gradient of the noised CLIP's score on x_t itself
                    score = guide.noised_similarity(x_in, t, text).sum()
                else:
                    out_cond = model.output(scheduler.scale_model_input(x_in, t), t, cond)
                    x0 = predicted_original(prediction, out_cond, x_in, alpha)
                    image = (model.decode(x0).clamp(-1, 1) + 1) / 2
                    score = guide.similarity(image, text, cutouts, cut_rng).sum()
                grad = torch.autograd.grad(score, x_in)[0]
            kick = clip_scale * (1 - alpha).sqrt() * grad
            # the output whose ε̂ is the shifted one (for an epsilon model: output − kick, exactly)
            output = output_for_noise(prediction, predicted_noise(prediction, output, x, alpha) - kick, x, alpha)
        if trace is not None:
            trace.append({"t": int(t), "alpha_bar": float(alpha), "guided": guided,
                          "kick": kick.detach().cpu() if guided else torch.zeros(x.shape)})
        x = scheduler.step(output, t, x, **extra, return_dict=False)[0]

    with torch.no_grad():
        images = (model.decode(x).float().clamp(-1, 1) + 1) / 2
    return images.permute(0, 2, 3, 1).cpu().numpy()
