"""Sampling images from a loaded pipeline, in batches, with a guidance scale per image.

Classifier-free guidance batches the conditional and unconditional passes into one UNet call
inside the pipeline; images of different scales go through the pipeline in separate calls. A source
with ``guidance.kind: clip`` samples through ``clip_guidance.clip_guided`` (the same noise, sampler
and CFG, plus GLIDE's CLIP guidance).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from PIL import Image


def sample_images(pipe, prompts: list[str], seeds: list[int], w: float, settings: Mapping,
                  images_per_prompt: int = 1) -> np.ndarray:
    """Run the pipeline at one scale ``w``; uint8 [N, H, W, 3] at ``save_size``, image i from
    noise seed ``seeds[i]``. ``images_per_prompt`` = n: ``seeds`` holds n seeds per prompt, and each
    prompt is encoded once for its n images (the pipeline's ``num_images_per_prompt``).

    ``settings``: steps, eta, guidance_rescale, batch_size (images per pipeline call), resolution,
    save_size (a source spec or the ``generation`` section).
    """
    n = images_per_prompt
    if len(seeds) != len(prompts) * n:
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts x {n} images")
    guidance = settings.get("guidance") or {}
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
            guidance_rescale=settings["guidance_rescale"],
        )
        if settings["resolution"]:
            kwargs.update(height=settings["resolution"], width=settings["resolution"])
        if guidance.get("kind") == "clip":
            from synrep.generation.clip_guidance import clip_guided, load_guide

            images = clip_guided(pipe, load_guide(guidance["clip_model"], str(device)), prompts[chunk], generators,
                                 settings["steps"], float(w), guidance["clip_scale"], eta=settings["eta"],
                                 num_images_per_prompt=n, cutouts=guidance["cutouts"],
                                 height=kwargs.get("height"), width=kwargs.get("width"),
                                 guidance_rescale=settings["guidance_rescale"])
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


def sample_at_scales(pipe, prompts: list[str], seeds: list[int], scales: list[float], settings: Mapping) -> np.ndarray:
    """Like ``sample_images`` with a scale per image: one group of calls per distinct scale, the
    images returned in the order given."""
    order = list(dict.fromkeys(scales))
    if len(order) == 1:
        # one scale: each caption's consecutive images share one encoding of it
        unique, per_prompt = _runs(prompts)
        if per_prompt:
            return sample_images(pipe, unique, seeds, order[0], settings, images_per_prompt=per_prompt)
        return sample_images(pipe, prompts, seeds, order[0], settings)
    out: list[np.ndarray | None] = [None] * len(prompts)
    for w in order:
        idx = [i for i, s in enumerate(scales) if s == w]
        images = sample_images(pipe, [prompts[i] for i in idx], [seeds[i] for i in idx], w, settings)
        for i, image in zip(idx, images):
            out[i] = image
    return np.stack(out)


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
