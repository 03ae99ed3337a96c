"""GLIDE's inpainting fine-tune of the toy generator (step ``train_inpaint``): a UNet with the extra
input channels, zero-initialised so that it starts as the text-to-image model, trained to regenerate
random regions (object, background, GLIDE's random box, all) under the caption.

Retrain the shipped model: ``python -m synrep train_inpaint toy_inpaint.output_dir=models/toy_inpaint``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from omegaconf import DictConfig

from synrep.diffusion.toy.inpaint import EXTRA_CHANNELS, ToyGlideInpaintPipeline, region_masks
from synrep.diffusion.toy.pipeline import ToyGlidePipeline
from synrep.settings import InputError


def inpainting_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A copy of a text-to-image UNet that also takes the mask and the masked image, starting as the
    same model: the new input weights are zero (as SD's and GLIDE's inpainting fine-tunes)."""
    config = dict(unet.config)
    config["in_channels"] = unet.config.in_channels + EXTRA_CHANNELS
    new = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    weight = state.pop("conv_in.weight")
    new.load_state_dict(state, strict=False)
    with torch.no_grad():
        new.conv_in.weight.zero_()
        new.conv_in.weight[:, : weight.shape[1]] = weight
    return new


def training_masks(object_masks: np.ndarray, rng: np.random.Generator, mix: dict[str, float],
                   pixels: int = 1) -> np.ndarray:
    """One mask per image, its kind drawn from ``mix`` (object / background / box / all: shares
    that sum to 1); ``box`` is GLIDE's random rectangle, a quarter to three quarters of each side."""
    kinds = list(mix)
    drawn = rng.choice(len(kinds), size=len(object_masks), p=np.asarray([mix[k] for k in kinds], float))
    n, h, w = object_masks.shape
    out = np.zeros((n, h, w), bool)
    for i, k in enumerate(drawn):
        kind = kinds[k]
        if kind == "box":
            bh, bw = rng.integers(h // 4, 3 * h // 4 + 1), rng.integers(w // 4, 3 * w // 4 + 1)
            top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
            out[i, top:top + bh, left:left + bw] = True
        else:
            out[i] = region_masks(object_masks[i:i + 1], kind, pixels)[0]
    return out


def run(cfg: DictConfig) -> dict[str, Path]:
    """Fine-tune the toy generator (``toy_inpaint.base``) into an inpainting model."""
    from synrep.data import toyworld
    from synrep.recipes.toy_generator import train_pipeline

    torch.set_num_threads(cfg.threads)
    icfg = cfg.toy_inpaint
    torch.manual_seed(icfg.seed)
    split = toyworld.load_split(cfg, "train")
    if "object_mask" not in split:
        raise InputError(f"{toyworld.world_dir(cfg)}/real/train.npz has no object masks: render the world again "
                         "(`python -m synrep toyworld`)")
    base = ToyGlidePipeline.from_pretrained(icfg.base)
    pipe = ToyGlideInpaintPipeline(unet=inpainting_unet(base.unet), scheduler=base.scheduler,
                                   text_encoder=base.text_encoder, tokenizer=base.tokenizer)
    object_masks = split["object_mask"]
    mix = dict(icfg.mask_mix)

    def conditioning(x0, index, flip, rng):
        masks = training_masks(object_masks[index], rng, mix, icfg.dilate)
        masks = np.where(flip[:, None, None], masks[:, :, ::-1], masks)
        mask = torch.from_numpy(np.ascontiguousarray(masks))[:, None].float()
        return torch.cat([mask, x0 * (mask < 0.5)], dim=1)

    return train_pipeline(cfg, "toy_inpaint", pipe, split, conditioning)
