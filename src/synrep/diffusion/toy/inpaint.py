"""GLIDE's text-guided inpainting at toy scale: ``ToyGlideInpaintPipeline`` (its fine-tune:
synrep.recipes.toy_inpaint).

GLIDE fine-tunes its text-to-image model for inpainting with extra input channels, the masked
image and the mask, initialised so that the model starts as the text-to-image one. The toy model
does the same: its UNet takes [x_t (3), mask (1), masked image (3)] (diffusers' order for SD's
9-channel inpainting UNet: latents, mask, masked-image latents), the new input weights start at
zero, and training regenerates random regions (the object, the background, a random box, or the
whole image) under the caption, with GLIDE's caption dropout kept so that classifier-free
guidance still works.

``ToyGlideInpaintPipeline`` follows ``StableDiffusionInpaintPipeline``: ``image`` and
``mask_image`` (1 = regenerate), and two paths chosen by the UNet's input channels. With the
extra channels the model sees the masked image, and, as GLIDE's inpainting sampler does (its
``denoised_fn``), the predicted clean image x̂0 is set to the original in the kept region at every
step (the model's output, ε or v, is the one that implies that x̂0), so the kept pixels come out as
they went in. With a plain 3-channel text-to-image UNet (the toy generator itself) it inpaints by
replacement, as diffusers' pipeline does for a 4-channel SD UNet: after every step the kept
region is reset to the original, noised to the next timestep.
The pixel-space loop is written here because diffusers' inpainting pipelines are latent ones.

Both paths copy the original into the kept region, so the output's kept pixels say nothing about
the model. ``return_unreplaced=True`` also returns the model's own image before that copy: the
clean image x̂0 it predicts at the last step from its (guided) output, before GLIDE's
substitution (inpainting UNet) or the reset to the original (replacement). Its kept region against
the original is what the model would have kept (evaluation/inpaint_quality.py: ``psnr_kept_model``).

Retrain the shipped model: ``python -m synrep train_inpaint toy_inpaint.output_dir=models/toy_inpaint``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from synrep.diffusion.prediction import output_for_original, predicted_original, prediction_type
from synrep.diffusion.toy.pipeline import ToyGlidePipeline, guided_noise, pixel_output, step_kwargs
from synrep.pixels import signed_range
from synrep.settings import InputError

# Extra input channels of an inpainting UNet: the mask and the masked image
EXTRA_CHANNELS = 4


def as_image_tensor(images, device, dtype) -> torch.Tensor:
    """uint8 [N, H, W, 3] (numpy or tensor) or a float tensor [N, 3, H, W] in [-1, 1] -> [N, 3, H, W] in [-1, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        images = signed_range(images)
    return images.to(device=device, dtype=dtype)


def as_mask_tensor(masks, device, dtype) -> torch.Tensor:
    """bool/float [N, H, W] or [N, 1, H, W] (1: regenerate) -> float [N, 1, H, W] in {0, 1}."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if masks.ndim == 3:
        masks = masks[:, None]
    return (masks.float() >= 0.5).to(device=device, dtype=dtype)


def known_x0_output(prediction: str, output: torch.Tensor, x: torch.Tensor, original: torch.Tensor,
                    mask: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The UNet output (of its ``prediction`` type) whose implied clean image x̂0 is the original where
    ``mask`` is 0 and the model's own x̂0 where it is 1 (GLIDE's ``denoised_fn``)."""
    x0 = predicted_original(prediction, output, x, alpha)
    x0 = mask * x0 + (1 - mask) * original
    return output_for_original(prediction, x0, x, alpha)


class ToyGlideInpaintPipeline(ToyGlidePipeline):
    """Regenerates the masked region of images under captions (see the module doc)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image=None,
        mask_image=None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_rescale: float = 0.0,
        return_unreplaced: bool = False,
        **unused,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = num_images_per_prompt
        batch = len(prompts) * n
        device, dtype = self.device, self.unet.dtype
        # one image and mask per prompt, repeated for its n images (as diffusers' pipelines)
        original = as_image_tensor(image, device, dtype).repeat_interleave(n, 0)
        mask = as_mask_tensor(mask_image, device, dtype).repeat_interleave(n, 0)
        if len(original) != batch or len(mask) != batch:
            raise ValueError(f"{len(prompts)} prompts need as many images and masks, got {len(original) // n} "
                             f"and {len(mask) // n}")
        in_channels = self.unet.config.in_channels
        if in_channels not in (3, 3 + EXTRA_CHANNELS):
            raise InputError(f"the UNet takes {in_channels} channels: 3 (inpainting by replacement) or "
                             f"{3 + EXTRA_CHANNELS} (an inpainting model: image, mask, masked image)")
        use_cfg = guidance_scale != 1.0
        (states, pooled), uncond = self.encode_batch(prompts, n, use_cfg)
        if use_cfg:
            states, pooled = torch.cat([uncond[0], states]), torch.cat([uncond[1], pooled])
        extra_in = torch.cat([mask, original * (mask < 0.5)], dim=1)
        if use_cfg:
            extra_in = torch.cat([extra_in, extra_in])

        x = randn_tensor(original.shape, generator=generator, device=device, dtype=dtype)
        # the noise that the replacement path adds to the kept region (as diffusers: the initial noise)
        noise = x.clone()
        x = x * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        sigma_based = not hasattr(self.scheduler, "alphas_cumprod") or self.scheduler.init_noise_sigma != 1
        if in_channels != 3 and sigma_based:
            raise InputError("inpainting with an inpainting UNet needs a sampler that steps on alpha_t "
                             "(ddim, ddpm, dpmsolver, pndm)")
        prediction = prediction_type(self.scheduler)
        alphas = None if sigma_based else self.scheduler.alphas_cumprod.to(device=device, dtype=dtype)
        extra = step_kwargs(self.scheduler, eta, generator)

        for i, t in enumerate(self.progress_bar(timesteps)):
            model_in = self.scheduler.scale_model_input(torch.cat([x, x]) if use_cfg else x, t)
            if in_channels != 3:
                model_in = torch.cat([model_in, extra_in], dim=1)
            output = self.predict_noise(model_in, t, states, pooled)  # ε, or v for a v-prediction model
            if use_cfg:
                output = guided_noise(*output.chunk(2), guidance_scale, guidance_rescale)
            if return_unreplaced and i == len(timesteps) - 1:
                unreplaced = self._predicted_x0(prediction, output, x, t)
            if in_channels != 3:
                output = known_x0_output(prediction, output, x, original, mask, alphas[t])
            x = self.scheduler.step(output, t, x, **extra, return_dict=False)[0]
            if in_channels == 3:
                known = original
                if i < len(timesteps) - 1:
                    known = self.scheduler.add_noise(original, noise, timesteps[i + 1:i + 2])
                x = (1 - mask) * known + mask * x

        output = pixel_output(self, x, output_type, return_dict)
        if not return_unreplaced:
            return output
        unreplaced = pixel_output(self, unreplaced, output_type, False)[0]
        if return_dict:
            return InpaintPipelineOutput(images=output.images, unreplaced=unreplaced)
        return (*output, unreplaced)

    def _predicted_x0(self, prediction: str, output: torch.Tensor, x: torch.Tensor, t) -> torch.Tensor:
        """The model's x̂0 at step t from its output (the sampler's ᾱ_t)."""
        if not hasattr(self.scheduler, "alphas_cumprod") or self.scheduler.init_noise_sigma != 1:
            raise ValueError("return_unreplaced needs a sampler that steps on alpha_t (ddim, ddpm, dpmsolver, pndm)")
        alpha = self.scheduler.alphas_cumprod.to(device=x.device, dtype=x.dtype)[t]
        return predicted_original(prediction, output, x, alpha)


class RecordingInpaintPipeline(ToyGlideInpaintPipeline):
    """Samples as ``ToyGlideInpaintPipeline`` and keeps each call's images before the replacement
    (``unreplaced``: a list of float [N, H, W, 3] in [0, 1], one per call), so that a caller that
    samples through sampling.sample_images gets the very images a source gets, and these too."""

    @classmethod
    def sharing(cls, pipe) -> "RecordingInpaintPipeline":
        recording = cls(**pipe.components)
        recording.set_progress_bar_config(disable=True)
        recording.unreplaced = []
        return recording

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs, return_unreplaced=True)
        self.unreplaced.append(np.asarray(out.unreplaced))
        return out


@dataclass
class InpaintPipelineOutput(BaseOutput):
    """The inpainted images and, with ``return_unreplaced``, the model's own images before the kept
    region is copied in (same type and layout as ``images``)."""

    images: object
    unreplaced: object


def dilate(masks: np.ndarray, pixels: int) -> np.ndarray:
    """bool [N, H, W] masks grown by ``pixels`` (8-neighbourhood)."""
    out = masks.copy()
    for _ in range(pixels):
        padded = np.pad(out, ((0, 0), (1, 1), (1, 1)))
        h, w = out.shape[1:]
        out = np.zeros_like(out)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out |= padded[:, dy:dy + h, dx:dx + w]
    return out


def region_masks(object_masks: np.ndarray, region: str, pixels: int = 1) -> np.ndarray:
    """The region to regenerate, bool [N, H, W]: ``object`` (the object, grown by ``pixels``),
    ``background`` (everything else: the grown object is kept) or ``all``."""
    grown = dilate(object_masks.astype(bool), pixels)
    if region == "object":
        return grown
    if region == "background":
        return ~grown
    if region == "all":
        return np.ones_like(grown)
    raise ValueError(f"unknown inpainting region {region!r}: object, background or all")
