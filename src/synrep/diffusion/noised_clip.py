"""GLIDE's noised CLIP: a CLIP whose image tower reads a noised image x_t together with its timestep t,
so that its gradient guides a diffusion sampler on x_t itself (GLIDE, section 2.3; no gradient
through the denoiser, unlike CLIP guidance on the predicted x̂0 in ``clip_guidance``).

The timestep enters as diffusers' sinusoidal ``Timesteps`` + ``TimestepEmbedding`` (the UNet's own
time embedding), added to every patch token of open_clip's ViT (a forward hook on ``visual.conv1``,
whose output is the patch grid). Its last layer starts at zero, so the untrained model is exactly the
CLIP it starts from. GLIDE trains its noised CLIP from scratch; the toy one is fine-tuned from the
toy CLIP with the text tower frozen, so both CLIPs embed captions identically (training in
``learning/toy_clip.py``: ``train_noised``).

A folder holds an open_clip local-dir model (open_clip loads it alone, as a CLIP for clean images,
t = 0) plus ``noised_clip.json`` (the noise schedule it was trained on, the base CLIP's hash) and
``timestep_embedding.safetensors``. ``load_guide`` in clip_guidance returns a ``NoisedClipGuide`` for
such a folder.

No library ships a noised CLIP (GLIDE's released one is in its own repository, tied to its ADM
code), hence this small module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from synrep.diffusion.clip_model import CLIP_CONFIG, load_clip
from synrep.fileio import write_json
from synrep.settings import InputError

NOISED_CONFIG = "noised_clip.json"
TIMESTEP_WEIGHTS = "timestep_embedding.safetensors"


def is_noised_clip_folder(path: str | Path) -> bool:
    return (Path(path) / NOISED_CONFIG).exists()


class TimestepConditioning(torch.nn.Module):
    """t -> a vector of the ViT's width, added to each patch token (zero at initialisation)."""

    def __init__(self, width: int):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.project = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embed = TimestepEmbedding(width, width)
        torch.nn.init.zeros_(self.embed.linear_2.weight)
        torch.nn.init.zeros_(self.embed.linear_2.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.embed(self.project(t.flatten().float()))


class NoisedClip(torch.nn.Module):
    """An open_clip CLIP plus the timestep conditioning of its image tower."""

    def __init__(self, clip: torch.nn.Module, timestep: TimestepConditioning | None = None):
        super().__init__()
        self.clip = clip
        self.timestep = timestep or TimestepConditioning(clip.visual.conv1.out_channels)
        self._time_embedding: torch.Tensor | None = None
        clip.visual.conv1.register_forward_hook(self._add_time)

    def _add_time(self, module, inputs, output):
        if self._time_embedding is None:
            return output
        return output + self._time_embedding[:, :, None, None].to(output.dtype)

    def encode_image(self, x: torch.Tensor, t: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embeddings of preprocessed images ``x`` [N, 3, H, W] at timesteps ``t`` [N] (or one)."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(len(x))
        self._time_embedding = self.timestep(t)
        try:
            return self.clip.encode_image(x, normalize=normalize)
        finally:
            self._time_embedding = None

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.clip.logit_scale


def save(model: NoisedClip, folder: Path, clip_config: dict, noise_schedule: dict, base_sha256: str) -> None:
    """``folder``: the CLIP as an open_clip local-dir model, the timestep embedding and noised_clip.json."""
    from safetensors.torch import save_file

    write_json(folder / CLIP_CONFIG, clip_config)
    save_file({k: v.contiguous() for k, v in model.clip.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    save_file({k: v.contiguous() for k, v in model.timestep.state_dict().items()}, str(folder / TIMESTEP_WEIGHTS))
    write_json(folder / NOISED_CONFIG, {"noise_schedule": noise_schedule, "base_clip_sha256": base_sha256,
                                         "timestep_width": model.timestep.embed.linear_1.in_features})


def load(path: str | Path, device: str | torch.device = "cpu"):
    """(NoisedClip in eval mode, tokenizer, its noised_clip.json) of a noised-CLIP folder."""
    import json

    from safetensors.torch import load_file

    folder = Path(path)
    if not is_noised_clip_folder(folder):
        raise FileNotFoundError(f"{folder / NOISED_CONFIG} not found: not a noised CLIP "
                                "(`python -m synrep train_noised_clip`)")
    clip, tokenizer = load_clip(folder, device)
    info = json.loads((folder / NOISED_CONFIG).read_text())
    timestep = TimestepConditioning(info["timestep_width"])
    timestep.load_state_dict(load_file(str(folder / TIMESTEP_WEIGHTS)))
    return NoisedClip(clip, timestep.to(device)).eval(), tokenizer, info


def alphas_cumprod(noise_schedule: dict) -> torch.Tensor:
    """ᾱ_t of a diffusers scheduler config (what x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε uses)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    return DDPMScheduler(**{k: noise_schedule[k] for k in keys if k in noise_schedule}).alphas_cumprod


def check_schedule(info: dict, scheduler, what: str = "the pipeline") -> None:
    """The noised CLIP only knows the noise levels it was trained on: ``scheduler``'s ᾱ_t must match."""
    mine = alphas_cumprod(info["noise_schedule"])
    theirs = scheduler.alphas_cumprod.cpu()
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs.float(), atol=1e-5):
        raise InputError(f"the noised CLIP was trained on another noise schedule than {what}'s "
                         f"({info['noise_schedule'].get('beta_schedule')}, {len(mine)} steps)")
