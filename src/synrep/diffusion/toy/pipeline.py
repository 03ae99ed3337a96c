"""``ToyGlidePipeline``: GLIDE-style text-conditional pixel diffusion as a diffusers pipeline.

Its call signature follows ``StableDiffusionPipeline`` (prompt, guidance_scale, guidance_rescale,
num_inference_steps, eta, a list of per-image generators, output_type), so that the generation
step drives this toy model and real Stable Diffusion weights through the same code.

The sampling loop is the standard diffusers one, written here because diffusers ships no
text-conditional *pixel-space* pipeline for ``UNet2DConditionModel``: GLIDE conditions on the
caption tokens (cross-attention context) and on the pooled caption embedding (added to the
timestep embedding, ``class_embed_type="projection"``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor

from synrep.diffusion.toy.text import tokenize


def guided_noise(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float,
                 guidance_rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance: eps_u + w (eps_c - eps_u), with optional std rescale
    (Lin et al. 2023, as diffusers' ``guidance_rescale``)."""
    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    if guidance_rescale > 0:
        eps = rescale_noise_cfg(eps, eps_cond, guidance_rescale=guidance_rescale)
    return eps


def step_kwargs(scheduler, eta: float, generator) -> dict:
    """The extra arguments the scheduler's ``step`` takes: eta (DDIM) and the generators (DDPM)."""
    names = scheduler.step.__code__.co_varnames
    extra = {"eta": eta} if "eta" in names else {}
    if "generator" in names:
        extra["generator"] = generator
    return extra


def pixel_output(pipe: DiffusionPipeline, x: torch.Tensor, output_type: str, return_dict: bool):
    """A pixel-space sample in [-1, 1] as diffusers pipelines return images: "pt" [N, 3, H, W],
    "np" [N, H, W, 3] or "pil", in [0, 1]."""
    images = (x.float().clamp(-1, 1) + 1) / 2
    if output_type == "pt":
        result = images
    else:
        result = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            result = pipe.numpy_to_pil(result)
    return ImagePipelineOutput(images=result) if return_dict else (result,)


class ToyGlidePipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, scheduler, text_encoder, tokenizer):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token states [B, T, D] (cross-attention context) and pooled embedding [B, D]."""
        ids, mask = tokenize(self.tokenizer, prompts)
        out = self.text_encoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        dtype = self.unet.dtype
        return out.last_hidden_state.to(dtype), out.pooler_output.to(dtype)

    @torch.no_grad()
    def encode_batch(self, prompts: list[str], num_images_per_prompt: int, use_cfg: bool):
        """(cond, uncond): (states, pooled) for each of the batch's images, each prompt encoded once
        for its images as diffusers' pipelines do; uncond is the empty caption's (None without CFG)."""
        states, pooled = self.encode_prompt(prompts)
        cond = (states.repeat_interleave(num_images_per_prompt, 0), pooled.repeat_interleave(num_images_per_prompt, 0))
        if not use_cfg:
            return cond, None
        batch = len(prompts) * num_images_per_prompt
        u_states, u_pooled = self.encode_prompt([""])
        return cond, (u_states.expand(batch, -1, -1), u_pooled.expand(batch, -1))

    def predict_noise(self, x: torch.Tensor, t, states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=states, class_labels=pooled).sample

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_rescale: float = 0.0,
        callback_on_step_end: Callable | None = None,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts) * num_images_per_prompt
        size = self.unet.config.sample_size
        height, width = height or size, width or size
        device, dtype = self.device, self.unet.dtype

        # w = 1 is the plain conditional model: skip the unconditional pass, as diffusers does
        use_cfg = guidance_scale != 1.0
        (states, pooled), uncond = self.encode_batch(prompts, num_images_per_prompt, use_cfg)
        if use_cfg:
            states, pooled = torch.cat([uncond[0], states]), torch.cat([uncond[1], pooled])

        shape = (batch, self.unet.config.in_channels, height, width)
        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        x = x * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        extra = step_kwargs(self.scheduler, eta, generator)

        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_in = torch.cat([x, x]) if use_cfg else x
            model_in = self.scheduler.scale_model_input(model_in, t)
            # conditional and unconditional passes batched into one UNet call
            eps = self.predict_noise(model_in, t, states, pooled)
            if use_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = guided_noise(eps_uncond, eps_cond, guidance_scale, guidance_rescale)
            x = self.scheduler.step(eps, t, x, **extra, return_dict=False)[0]
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {"latents": x})

        return pixel_output(self, x, output_type, return_dict)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
