"""A source's images: the ``Sampling`` its spec (or the ``generation`` section) asks for, and the l
images of each caption that its mode makes, as the generate step stores them and
``provenance.regenerate`` makes them again."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from PIL import Image

from synrep import source_modes
from synrep.diffusion.sampling import ClipGuidance, Sampling, UnclipSampling, sample_at_scales


def sampling_of(settings: Mapping) -> Sampling:
    """The library's ``Sampling`` from a source spec (``sources.source_spec``) or the ``generation``
    section, whose keys have the same names: steps, batch_size, eta, guidance_rescale, resolution,
    save_size, mode, guidance (CLIP guidance when its kind is clip) and unclip."""
    guidance = settings.get("guidance") or {}
    clip = None
    if guidance.get("kind") == "clip":
        clip = ClipGuidance(clip_model=str(guidance["clip_model"]), clip_scale=float(guidance["clip_scale"]),
                            cutouts=int(guidance.get("cutouts", 0)),
                            min_alpha_bar=float(guidance.get("min_alpha_bar", 0.0)))
    # a mode's records leave out the unCLIP keys it does not read (source_modes.record_omits)
    u = settings.get("unclip")
    unclip = None if u is None else UnclipSampling(**{k: v for k, v in dict(u).items() if k != "clip_sha256"})
    return Sampling(steps=int(settings["steps"]), batch_size=int(settings["batch_size"]),
                    eta=float(settings.get("eta", 0.0)), guidance_rescale=float(settings.get("guidance_rescale", 0.0)),
                    resolution=settings.get("resolution"), save_size=settings.get("save_size"),
                    mode=str(settings.get("mode", "text2img")), clip=clip, unclip=unclip)


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
    sampling = sampling_of(spec)
    for start in range(0, len(prompts), spec["batch_size"]):
        part = slice(start, start + spec["batch_size"])
        made.append(sample_at_scales(pipe, prompts[part], seeds[part], scales[part], sampling,
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
