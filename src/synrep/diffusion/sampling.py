"""Sampling images from a loaded pipeline, in batches, with a guidance scale per image.

Classifier-free guidance batches the conditional and unconditional passes into one UNet call
inside the pipeline; images of different scales go through the pipeline in separate calls. A source
with ``guidance.kind: clip`` samples through ``clip_guidance.clip_guided`` (the same noise, sampler
and CFG, plus GLIDE's CLIP guidance); one of ``mode: inpaint`` through the pipeline's inpainting
form (``inpainting_pipeline``), with each prompt's real image and the mask of the region to regenerate.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from PIL import Image

from synrep import source_modes
from synrep.settings import ConfigError


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
    return {"image": torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0,
            "mask_image": torch.from_numpy(masks)[:, None].float()}


def unclip_mode_images(pipe, settings: Mapping, prompts: list[str], generators: list, w: float, n: int,
                       images: np.ndarray | None) -> np.ndarray:
    """Modes unclip and variation (diffusion/toy/unclip.py): n images per prompt (or real image)."""
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.toy.unclip import unclip_images, variation_images

    u = settings["unclip"]
    clip = load_guide(u["clip_model"], str(pipe.device)) if u.get("clip_model") else None
    per_image = [p for p in prompts for _ in range(n)]
    if not source_modes.get(settings["mode"]).real_image:  # the caption's embedding, through the prior
        return unclip_images(pipe, clip, per_image, generators, w, settings["steps"], prior_steps=u["prior_steps"],
                             prior_w=u["prior_w"], use_prior=u["use_prior"], prior_samples=u.get("prior_samples", 1))
    return variation_images(pipe, clip, np.repeat(images, n, axis=0), generators, w, settings["steps"],
                            prompts=per_image if u["caption"] else None)


def sample_images(pipe, prompts: list[str], seeds: list[int], w: float, settings: Mapping,
                  images_per_prompt: int = 1, inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Run the pipeline at one scale ``w``; uint8 [N, H, W, 3] at ``save_size``, image i from
    noise seed ``seeds[i]``. ``images_per_prompt`` = n: ``seeds`` holds n seeds per prompt, and each
    prompt is encoded once for its n images (the pipeline's ``num_images_per_prompt``).

    ``settings``: steps, eta, guidance_rescale, batch_size (images per pipeline call), resolution,
    save_size (a source spec or the ``generation`` section). ``inputs``: per prompt, what the mode
    starts from (``images`` uint8 [P, H, W, 3] and ``masks`` bool [P, H, W] for mode inpaint).
    """
    n = images_per_prompt
    if len(seeds) != len(prompts) * n:
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts x {n} images")
    guidance = settings.get("guidance") or {}
    mode = source_modes.get(settings.get("mode", "text2img"))
    if mode.mask:
        from synrep.diffusion.toy.inpaint import ToyGlideInpaintPipeline

        pipe = inpainting_pipeline(pipe)
        if n > 1 and not isinstance(pipe, ToyGlideInpaintPipeline):
            # diffusers' inpainting pipeline tiles the images over num_images_per_prompt instead of
            # repeating each (prompt i would meet image i mod P): give it one image per prompt
            prompts = [p for p in prompts for _ in range(n)]
            inputs = {k: np.repeat(v, n, axis=0) for k, v in inputs.items()}
            n = 1
            if settings["guidance_rescale"]:
                raise ConfigError("diffusers' StableDiffusionInpaintPipeline has no guidance_rescale: set "
                                  "generation.guidance_rescale to 0 for a mode inpaint source")
    out = []
    device = pipe.device
    per_call = max(1, settings["batch_size"] // n)  # prompts per call
    for start in range(0, len(prompts), per_call):
        chunk = slice(start, start + per_call)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds[start * n:(start + per_call) * n]]
        kwargs = dict(
            prompt=prompts[chunk],
            num_images_per_prompt=n,
            num_inference_steps=settings["steps"],
            guidance_scale=float(w),
            eta=settings["eta"],
            generator=generators,
            output_type="np",
        )
        if settings["guidance_rescale"]:
            kwargs["guidance_rescale"] = settings["guidance_rescale"]
        if settings["resolution"]:
            kwargs.update(height=settings["resolution"], width=settings["resolution"])
        if mode.mask:
            kwargs.update(inpaint_inputs(pipe, inputs["images"][chunk], inputs["masks"][chunk]))
        if mode.embedding:
            images = unclip_mode_images(pipe, settings, prompts[chunk], generators, w, n,
                                        None if inputs is None else inputs["images"][chunk])
        elif guidance.get("kind") == "clip":
            from synrep.diffusion.clip_guidance import clip_guided, load_guide

            images = clip_guided(pipe, load_guide(guidance["clip_model"], str(device)), prompts[chunk], generators,
                                 settings["steps"], float(w), guidance["clip_scale"], eta=settings["eta"],
                                 num_images_per_prompt=n, cutouts=guidance["cutouts"],
                                 height=kwargs.get("height"), width=kwargs.get("width"),
                                 guidance_rescale=settings["guidance_rescale"],
                                 min_alpha_bar=guidance.get("min_alpha_bar", 0.0))
        else:
            images = pipe(**kwargs).images
        images = (np.clip(np.asarray(images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
        size = settings["save_size"]
        if size and size != images.shape[1]:
            images = np.stack([
                np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images
            ])
        out.append(images)
    return np.concatenate(out)


def sample_at_scales(pipe, prompts: list[str], seeds: list[int], scales: list[float], settings: Mapping,
                     inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Like ``sample_images`` with a scale per image (and ``inputs`` per image): one group of calls
    per distinct scale, the images returned in the order given."""
    order = list(dict.fromkeys(scales))
    if len(order) == 1:
        # one scale: each caption's consecutive images share one encoding of it (and one input)
        unique, per_prompt = _runs(prompts)
        if per_prompt and (inputs is None or _repeats(inputs, per_prompt)):
            firsts = None if inputs is None else {k: v[::per_prompt] for k, v in inputs.items()}
            return sample_images(pipe, unique, seeds, order[0], settings, images_per_prompt=per_prompt, inputs=firsts)
        return sample_images(pipe, prompts, seeds, order[0], settings, inputs=inputs)
    out: list[np.ndarray | None] = [None] * len(prompts)
    for w in order:
        idx = [i for i, s in enumerate(scales) if s == w]
        part = None if inputs is None else {k: v[idx] for k, v in inputs.items()}
        images = sample_images(pipe, [prompts[i] for i in idx], [seeds[i] for i in idx], w, settings, inputs=part)
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


def caption_images(pipe, spec: Mapping, captions: list[str], draws: list[tuple[list[int], list[float]]],
                   real: Mapping[str, np.ndarray] | None = None, progress=None) -> np.ndarray:
    """The l images of each caption for a source spec, uint8 [C, l, H, W, 3], in batches of
    ``spec["batch_size"]`` images. ``draws``: each caption's noise seeds and scales
    (``sources.image_draws``); ``real``: each caption's real ``images`` and ``object_mask`` (the
    modes that start from one). With mode inpaint and ``keep_real``, image 0 is the real image."""
    from synrep.diffusion.toy.inpaint import region_masks

    l = spec["l"]
    mode = source_modes.get(spec["mode"])
    first = 1 if mode.first_is_real(spec) else 0
    jobs = [(k, i) for k in range(len(captions)) for i in range(first, l)]
    prompts = [captions[k] for k, _ in jobs]
    seeds = [draws[k][0][i] for k, i in jobs]
    scales = [draws[k][1][i] for k, i in jobs]
    inputs = None
    owner = np.asarray([k for k, _ in jobs], dtype=np.int64)
    if mode.real_image:
        inputs = {"images": real["images"][owner]}
    if mode.mask:
        masks = region_masks(real["object_mask"], spec["inpaint"]["region"], spec["inpaint"]["dilate"])
        inputs["masks"] = masks[owner]
    made = []
    for start in range(0, len(prompts), spec["batch_size"]):
        part = slice(start, start + spec["batch_size"])
        made.append(sample_at_scales(pipe, prompts[part], seeds[part], scales[part], spec,
                                     None if inputs is None else {k: v[part] for k, v in inputs.items()}))
        if progress is not None:
            progress.update(len(prompts[part]))
    size = made[0].shape[1] if made else real["images"].shape[1]
    out = np.zeros((len(captions), l, size, size, 3), np.uint8)
    for (k, i), image in zip(jobs, np.concatenate(made) if made else []):
        out[k, i] = image
    if first:
        originals = real["images"]
        if originals.shape[1] != size:
            originals = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
                                  for im in originals])
        out[:, 0] = originals
    return out
