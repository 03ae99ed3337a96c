"""Sampling images from a loaded pipeline, in batches, with a guidance scale per image.

Classifier-free guidance batches the conditional and unconditional passes into one UNet call
inside the pipeline; images of different scales go through the pipeline in separate calls. How it
samples is a ``Sampling``, explicit values (``generation/source_images.sampling_of`` makes one from a
source's spec). With ``Sampling.clip`` it samples through ``clip_guidance.clip_guided`` (the same
noise, sampler and CFG, plus GLIDE's CLIP guidance); in mode inpaint through the pipeline's
inpainting form (``inpainting_pipeline``), with each prompt's real image and the mask of the region
to regenerate; in modes unclip and variation through unCLIP's decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from PIL import Image

from synrep import source_modes
from synrep.pixels import unit_range
from synrep.settings import ConfigError


@dataclass(frozen=True)
class ClipGuidance:
    """GLIDE's CLIP guidance on top of classifier-free guidance (``clip_guidance.clip_guided``)."""

    clip_model: str  # an open_clip local-dir folder, or a noised CLIP's
    clip_scale: float  # the gradient's scale s
    cutouts: int = 0  # random cut-outs the CLIP scores (0: the whole image)
    min_alpha_bar: float = 0.0  # no guidance at steps where alpha_bar_t is below this


@dataclass(frozen=True)
class UnclipSampling:
    """DALL-E 2's two stages (diffusion/toy/unclip.py): the prior's sampling (mode unclip) and what the
    decoder reads."""

    prior_steps: int = 25
    prior_w: float = 1.0
    use_prior: bool = True  # False: decode the caption's CLIP text embedding
    prior_samples: int = 1  # prior samples per image, the one with the highest z_i . z_t kept
    clip_model: str | None = None  # the CLIP whose embeddings the decoder reads (None: the pipeline's own)
    caption: bool = False  # variation: the decoder also sees the caption


@dataclass(frozen=True)
class Sampling:
    """How a pipeline samples, apart from what (prompts, seeds, scale) and with which pipeline."""

    steps: int  # the sampler's steps
    batch_size: int  # images per pipeline call
    eta: float = 0.0
    guidance_rescale: float = 0.0  # diffusers' guidance_rescale (0: off)
    resolution: int | None = None  # None: the model's native size
    save_size: int | None = None  # the images are resized to this (None: as generated)
    mode: str = "text2img"  # a source mode (synrep/source_modes.py): what each image starts from
    clip: ClipGuidance | None = None
    unclip: UnclipSampling | None = None


def inpainting_pipeline(pipe):
    """The inpainting form of a text-to-image pipeline, sharing its modules: the toy generator's
    ``ToyGlideInpaintPipeline`` and diffusers' ``StableDiffusionInpaintPipeline``. Both use an
    inpainting UNet's extra channels when it has them, else inpaint by replacement."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    from synrep.diffusion.toy.inpaint import ToyGlideInpaintPipeline
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    if isinstance(pipe, (ToyGlideInpaintPipeline, StableDiffusionInpaintPipeline)):
        return pipe
    if isinstance(pipe, ToyGlidePipeline):
        inpaint = ToyGlideInpaintPipeline(**pipe.components)
    elif isinstance(pipe, StableDiffusionPipeline):
        inpaint = StableDiffusionInpaintPipeline(**pipe.components)
    else:
        raise TypeError(f"mode inpaint needs a toy generator or a Stable Diffusion pipeline, not {type(pipe).__name__}")
    inpaint.set_progress_bar_config(disable=True)
    return inpaint


def inpaint_inputs(pipe, images: np.ndarray, masks: np.ndarray) -> dict:
    """``image`` and ``mask_image`` as the pipeline takes them: uint8 images and bool masks for the
    toy pipeline, [0, 1] tensors for diffusers' (its image processors resize and normalise them)."""
    from synrep.diffusion.toy.inpaint import ToyGlideInpaintPipeline

    if isinstance(pipe, ToyGlideInpaintPipeline):
        return {"image": images, "mask_image": masks}
    return {"image": unit_range(images),
            "mask_image": torch.from_numpy(masks)[:, None].float()}


def unclip_mode_images(pipe, sampling: Sampling, prompts: list[str], generators: list, w: float, n: int,
                       images: np.ndarray | None) -> np.ndarray:
    """Modes unclip and variation (diffusion/toy/unclip.py): n images per prompt (or real image)."""
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.toy.unclip import unclip_images, variation_images

    u = sampling.unclip
    if u is None:
        raise ValueError(f"mode {sampling.mode} samples with unCLIP's settings: Sampling.unclip is None")
    clip = load_guide(u.clip_model, str(pipe.device)) if u.clip_model else None
    per_image = [p for p in prompts for _ in range(n)]
    if not source_modes.get(sampling.mode).real_image:  # the caption's embedding, through the prior
        return unclip_images(pipe, clip, per_image, generators, w, sampling.steps, prior_steps=u.prior_steps,
                             prior_w=u.prior_w, use_prior=u.use_prior, prior_samples=u.prior_samples)
    return variation_images(pipe, clip, np.repeat(images, n, axis=0), generators, w, sampling.steps,
                            prompts=per_image if u.caption else None)


def sample_images(pipe, prompts: list[str], seeds: list[int], w: float, sampling: Sampling,
                  images_per_prompt: int = 1, inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Run the pipeline at one scale ``w``; uint8 [N, H, W, 3] at ``sampling.save_size``, image i
    from noise seed ``seeds[i]``. ``images_per_prompt`` = n: ``seeds`` holds n seeds per prompt, and
    each prompt is encoded once for its n images (the pipeline's ``num_images_per_prompt``).
    ``inputs``: per prompt, what the mode starts from (``images`` uint8 [P, H, W, 3] and ``masks``
    bool [P, H, W] for mode inpaint).
    """
    n = images_per_prompt
    if len(seeds) != len(prompts) * n:
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts x {n} images")
    mode = source_modes.get(sampling.mode)
    if mode.mask:
        from synrep.diffusion.toy.inpaint import ToyGlideInpaintPipeline

        pipe = inpainting_pipeline(pipe)
        if n > 1 and not isinstance(pipe, ToyGlideInpaintPipeline):
            # diffusers' inpainting pipeline tiles the images over num_images_per_prompt instead of
            # repeating each (prompt i would meet image i mod P): give it one image per prompt
            prompts = [p for p in prompts for _ in range(n)]
            inputs = {k: np.repeat(v, n, axis=0) for k, v in inputs.items()}
            n = 1
            if sampling.guidance_rescale:
                raise ConfigError("diffusers' StableDiffusionInpaintPipeline has no guidance_rescale: set "
                                  "generation.guidance_rescale to 0 for a mode inpaint source")
    out = []
    device = pipe.device
    per_call = max(1, sampling.batch_size // n)  # prompts per call
    for start in range(0, len(prompts), per_call):
        chunk = slice(start, start + per_call)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[start * n:(start + per_call) * n]]
        kwargs = dict(
            prompt=prompts[chunk],
            num_images_per_prompt=n,
            num_inference_steps=sampling.steps,
            guidance_scale=float(w),
            eta=sampling.eta,
            generator=generators,
            output_type="np",
        )
        if sampling.guidance_rescale:
            kwargs["guidance_rescale"] = sampling.guidance_rescale
        if sampling.resolution:
            kwargs.update(height=sampling.resolution, width=sampling.resolution)
        if mode.mask:
            kwargs.update(inpaint_inputs(pipe, inputs["images"][chunk], inputs["masks"][chunk]))
        if mode.embedding:
            images = unclip_mode_images(pipe, sampling, prompts[chunk], generators, w, n,
                                        None if inputs is None else inputs["images"][chunk])
        elif sampling.clip is not None:
            from synrep.diffusion.clip_guidance import clip_guided, load_guide

            guide = sampling.clip
            images = clip_guided(pipe, load_guide(guide.clip_model, str(device)), prompts[chunk], generators,
                                 sampling.steps, float(w), guide.clip_scale, eta=sampling.eta,
                                 num_images_per_prompt=n, cutouts=guide.cutouts,
                                 height=kwargs.get("height"), width=kwargs.get("width"),
                                 guidance_rescale=sampling.guidance_rescale, min_alpha_bar=guide.min_alpha_bar)
        else:
            images = pipe(**kwargs).images
        images = (np.clip(np.asarray(images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
        size = sampling.save_size
        if size and size != images.shape[1]:
            images = np.stack([
                np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images
            ])
        out.append(images)
    return np.concatenate(out)


def sample_at_scales(pipe, prompts: list[str], seeds: list[int], scales: list[float], sampling: Sampling,
                     inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Like ``sample_images`` with a scale per image (and ``inputs`` per image): one group of calls
    per distinct scale, the images returned in the order given."""
    order = list(dict.fromkeys(scales))
    if len(order) == 1:
        # one scale: each caption's consecutive images share one encoding of it (and one input)
        unique, per_prompt = _runs(prompts)
        if per_prompt and (inputs is None or _repeats(inputs, per_prompt)):
            firsts = None if inputs is None else {k: v[::per_prompt] for k, v in inputs.items()}
            return sample_images(pipe, unique, seeds, order[0], sampling, images_per_prompt=per_prompt, inputs=firsts)
        return sample_images(pipe, prompts, seeds, order[0], sampling, inputs=inputs)
    out: list[np.ndarray | None] = [None] * len(prompts)
    for w in order:
        idx = [i for i, s in enumerate(scales) if s == w]
        part = None if inputs is None else {k: v[idx] for k, v in inputs.items()}
        images = sample_images(pipe, [prompts[i] for i in idx], [seeds[i] for i in idx], w, sampling, inputs=part)
        for i, image in zip(idx, images):
            out[i] = image
    return np.stack(out)


def _repeats(inputs: Mapping[str, np.ndarray], n: int) -> bool:
    """Whether each input is each of its rows n times in a row (one real image per caption)."""
    return all(np.array_equal(v, np.repeat(v[::n], n, axis=0)) for v in inputs.values())


def _runs(prompts: list[str]) -> tuple[list[str], int]:
    """(the prompts, n) when ``prompts`` is each of them n times in a row, else ([], 0)."""
    if not prompts:
        return [], 0
    n = 1
    while n < len(prompts) and prompts[n] == prompts[0]:
        n += 1
    unique = prompts[::n]
    if len(prompts) % n or [p for p in unique for _ in range(n)] != prompts:
        return [], 0
    return unique, n
