"""Train the toy DALL-E 2 / unCLIP (``ToyUnCLIPPipeline``) on the toy world's real train photos and
captions, in the toy CLIP's embedding space::

    python -m synrep train_unclip toy_unclip.output_dir=models/toy_unclip

(the shipped ``models/toy_unclip`` was made so, with ``threads=1``: 1500 prior steps at batch 128 and
1500 decoder steps at batch 32; 24 minutes on a 2-core VM that ran other jobs beside it, where the
toy generator's own training step took 2.5x its time on an idle core: about 10 minutes idle).

Two stages, as unCLIP (Ramesh et al. 2022), with the toy CLIP (``toy_unclip.clip_model``) frozen:

- the prior: a ``PriorTransformer`` learns to predict the clean CLIP image embedding of a photo
  (normalised by the train embeddings' mean and std, which the prior stores as ``clip_mean`` /
  ``clip_std``) from the noised embedding, the timestep and its caption's CLIP text embedding and
  token states, with unCLIP's loss (MSE on the predicted embedding); the caption is replaced by the
  empty caption for ``prior_caption_dropout`` of the examples (the prior's guidance).
- the decoder: the toy generator (``toy_unclip.generator``) plus ``text_proj``, initialised so that
  it starts as the toy generator (``unclip.build_toy_unclip``), fine-tuned on eps-prediction (the
  generator's loss, min-SNR-γ weighted) with the photo's CLIP image embedding and its caption; the
  embedding is replaced by ``text_proj``'s learnt null embedding for ``embedding_dropout`` and the
  caption by the empty caption for ``caption_dropout`` of the examples, independently (unCLIP: 10%
  and 50%), so that guidance works by dropping both and variations by dropping the caption.

Mirrored photos are used with their own CLIP embeddings (computed once for both orientations). The
output is a ``save_pretrained`` folder (decoder weights: EMA), written atomically with
``recipe.yaml`` and ``training.json`` (steps, seconds, final losses, loss curves), logged to MLflow.
The training loops are written here as the toy generator's are (``toy/train.py``): diffusers
ships the models, schedulers and EMA, not a training loop for a prior or an unCLIP decoder.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.data import toyworld
from synrep.diffusion.toy.text import tokenize
from synrep.diffusion.toy.unclip import (
    ClipText,
    ToyUnCLIPPipeline,
    build_toy_unclip,
    caption_features,
    clip_text,
    image_embeddings,
)
from synrep.diffusion.training import denoising_loss, update_weights
from synrep.fileio import atomic_dir, write_json
from synrep.pixels import signed_range
from synrep.settings import ConfigError, save_resolved
from synrep.tracking import mlflow_run


def load_parts(cfg: DictConfig):
    """(the toy generator the decoder starts from, the toy CLIP), each named by its config key when missing."""
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.clip_model import check_clip_folder
    from synrep.diffusion.pipelines import check_weight_files, model_folder
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    u = cfg.toy_unclip
    folder = model_folder(u.generator, "toy_unclip.generator")
    check_weight_files(folder)
    glide = ToyGlidePipeline.from_pretrained(folder)
    glide.set_progress_bar_config(disable=True)
    clip = load_guide(str(check_clip_folder(u.clip_model, "toy_unclip.clip_model")))
    return glide, clip


def world_embeddings(cfg: DictConfig, clip) -> dict:
    """The train photos ([-1, 1], NCHW), captions, and the CLIP outputs the two stages train on."""
    split = toyworld.load_split(cfg, "train")
    photos = split["images"]
    captions = [str(c) for c in split["captions"]]
    return {
        "images": signed_range(photos),
        "captions": captions,
        # [2, N, D]: each photo's embedding, then its mirror image's
        "image_embeds": torch.stack([image_embeddings(clip, photos), image_embeddings(clip, photos[:, :, ::-1])]),
        "text": clip_text(clip, captions),
        "empty_text": clip_text(clip, [""]),
    }


def train_prior(pipe: ToyUnCLIPPipeline, data: dict, u: DictConfig, rng: np.random.Generator, log) -> list[float]:
    prior, scheduler = pipe.prior, pipe.prior_scheduler
    embeds = data["image_embeds"]
    with torch.no_grad():
        prior.clip_mean.copy_(embeds.flatten(0, 1).mean(0, keepdim=True))
        prior.clip_std.copy_(embeds.flatten(0, 1).std(0, keepdim=True).clamp_min(1e-4))
    mean, std = prior.clip_mean.detach(), prior.clip_std.detach()
    text: ClipText = data["text"]
    empty = data["empty_text"].expand(u.prior_batch_size)
    params = [p for name, p in prior.named_parameters() if name not in ("clip_mean", "clip_std")]
    optimizer = torch.optim.AdamW(params, lr=u.prior_lr, weight_decay=0.0)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=u.warmup_steps, num_training_steps=u.prior_steps)
    n, curve, window = len(text.embeds), [], []
    prior.train()
    for step in tqdm(range(u.prior_steps), desc="train unCLIP prior", unit="step", mininterval=5):
        idx = torch.from_numpy(rng.integers(0, n, u.prior_batch_size))
        mirrored = torch.from_numpy(rng.integers(0, 2, u.prior_batch_size))
        x0 = (embeds[mirrored, idx] - mean) / std
        drop = torch.from_numpy(rng.random(u.prior_batch_size) < u.prior_caption_dropout)
        cond = ClipText(*(torch.where(drop.view(-1, *[1] * (a.dim() - 1)), e, a[idx]) for a, e in zip(text, empty)))
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (u.prior_batch_size,))
        predicted = prior(scheduler.add_noise(x0, noise, t), timestep=t, proj_embedding=cond.embeds,
                          encoder_hidden_states=cond.states, attention_mask=cond.mask).predicted_image_embedding
        loss = denoising_loss(predicted, noise, x0, t, scheduler)  # the scheduler predicts the sample: MSE on x0
        update_weights(loss, params, optimizer, schedule, max_grad_norm=1.0)
        window.append(loss.item())
        if (step + 1) % u.log_every == 0 or step + 1 == u.prior_steps:
            curve.append(float(np.mean(window)))
            window = []
            log("prior_loss", curve[-1], step + 1)
    prior.eval()
    return curve


def train_decoder(pipe: ToyUnCLIPPipeline, data: dict, u: DictConfig, rng: np.random.Generator, log) -> list[float]:
    unet, text_encoder, text_proj = pipe.unet, pipe.text_encoder, pipe.text_proj
    images, embeds = data["images"], data["image_embeds"]
    ids, mask = tokenize(pipe.tokenizer, data["captions"])
    empty_ids, empty_mask = tokenize(pipe.tokenizer, [""])
    null = text_proj.learned_classifier_free_guidance_embeddings
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    params = [*unet.parameters(), *text_encoder.parameters(), *text_proj.parameters()]
    optimizer = torch.optim.AdamW(params, lr=u.decoder_lr, weight_decay=0.0)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=u.warmup_steps, num_training_steps=u.decoder_steps)
    ema = EMAModel(params, decay=u.decoder_ema_decay)
    batch, curve, window = u.decoder_batch_size, [], []
    for module in (unet, text_encoder, text_proj):
        module.train()
    for step in tqdm(range(u.decoder_steps), desc="train unCLIP decoder", unit="step", mininterval=5):
        idx = torch.from_numpy(rng.integers(0, len(images), batch))
        mirrored = torch.from_numpy(rng.integers(0, 2, batch))
        x0 = torch.where(mirrored.bool()[:, None, None, None], images[idx].flip(-1), images[idx])
        drop_embedding = torch.from_numpy(rng.random(batch) < u.embedding_dropout)[:, None]
        drop_caption = torch.from_numpy(rng.random(batch) < u.caption_dropout)[:, None]
        embedding = torch.where(drop_embedding, null.expand(batch, -1), embeds[mirrored, idx])
        states, pooled = caption_features(text_encoder, torch.where(drop_caption, empty_ids, ids[idx]),
                                          torch.where(drop_caption, empty_mask, mask[idx]))
        context, added = pipe.decoder_inputs(states, pooled, embedding)

        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        predicted = pipe.predict_noise(noise_scheduler.add_noise(x0, noise, t), t, context, added)
        loss = denoising_loss(predicted, noise, x0, t, noise_scheduler, u.snr_gamma)
        update_weights(loss, params, optimizer, schedule, max_grad_norm=1.0, ema=ema)
        window.append(loss.item())
        if (step + 1) % u.log_every == 0 or step + 1 == u.decoder_steps:
            curve.append(float(np.mean(window)))
            window = []
            log("decoder_loss", curve[-1], step + 1)
    ema.copy_to(params)
    for module in (unet, text_encoder, text_proj):
        module.eval()
    return curve


def run(cfg: DictConfig) -> dict[str, Path]:
    import mlflow

    torch.set_num_threads(cfg.threads)
    u = cfg.toy_unclip
    out = Path(u.output_dir)
    torch.manual_seed(u.seed)
    rng = np.random.default_rng(u.seed)
    glide, clip = load_parts(cfg)
    if glide.unet.config.sample_size != cfg.toyworld.image_size:
        raise ConfigError(f"config key 'toy_unclip.generator': {u.generator} makes {glide.unet.config.sample_size} px "
                          f"images but the toy world's are {cfg.toyworld.image_size} px (toyworld.image_size)")

    start = time.time()
    with mlflow_run(cfg, "train_unclip", sections=("toy_unclip", "toyworld")) as run_info:
        def log(name: str, value: float, step: int) -> None:
            mlflow.log_metric(name, value, step=step)

        data = world_embeddings(cfg, clip)
        embedding_seconds = time.time() - start
        text: ClipText = data["text"]
        pipe = build_toy_unclip(glide, text.embeds.shape[-1], text.states.shape[1], u.prior_layers, u.prior_heads,
                                u.prior_head_dim, u.extra_context_tokens)
        prior_curve = train_prior(pipe, data, u, rng, log)
        prior_seconds = time.time() - start - embedding_seconds
        decoder_curve = train_decoder(pipe, data, u, rng, log)
        seconds = time.time() - start
        with atomic_dir(out) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            save_resolved(cfg, tmp, "recipe.yaml")
            summary = {
                "steps": {"prior": u.prior_steps, "decoder": u.decoder_steps},
                "seconds": {"embeddings": round(embedding_seconds, 1), "prior": round(prior_seconds, 1),
                            "decoder": round(seconds - embedding_seconds - prior_seconds, 1), "total": round(seconds, 1)},
                "parameters": {"prior": sum(p.numel() for p in pipe.prior.parameters()),
                               "text_proj": sum(p.numel() for p in pipe.text_proj.parameters()),
                               "unet": sum(p.numel() for p in pipe.unet.parameters())},
                "final_loss": {"prior": prior_curve[-1], "decoder": decoder_curve[-1]},
                "loss_curve": {"prior": prior_curve, "decoder": decoder_curve},
                "log_every": u.log_every,
                "generator": str(u.generator),
                "clip_model": str(u.clip_model),
                "mlflow_run_id": run_info.info.run_id,
            }
            write_json(tmp / "training.json", summary)
        mlflow.log_metric("seconds", seconds)
        mlflow.log_artifact(str(out / "recipe.yaml"))
        mlflow.log_artifact(str(out / "training.json"))
    return {"model": out, "recipe": out / "recipe.yaml", "summary": out / "training.json"}
