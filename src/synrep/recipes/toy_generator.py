"""Train the toy generator on the toy world's real images and captions.

GLIDE's recipe at toy scale: eps-prediction with L_simple, a cosine noise schedule, and the caption
replaced by the empty caption for ``toy_generator.caption_dropout`` of the examples, so that one model
is both conditional and unconditional (classifier-free guidance). The output is a diffusers
pipeline folder (``save_pretrained``) with EMA weights, plus the resolved recipe beside it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.data import toy_vocabulary, toyworld
from synrep.diffusion.toy.pipeline import ToyGlidePipeline
from synrep.diffusion.toy.text import build_text_encoder, build_tokenizer, tokenize
from synrep.diffusion.training import denoising_loss, update_weights
from synrep.fileio import atomic_dir, write_json
from synrep.pixels import signed_range
from synrep.settings import ConfigError, save_resolved
from synrep.tracking import mlflow_run


def build_unet(model_cfg: DictConfig, in_channels: int = 3) -> UNet2DConditionModel:
    channels = list(model_cfg.block_out_channels)
    n = len(channels)
    # cross-attention below the full resolution, where it is cheap
    down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1)
    up = ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"]
    return UNet2DConditionModel(
        sample_size=model_cfg.sample_size,
        in_channels=in_channels,
        out_channels=3,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(channels),
        layers_per_block=model_cfg.layers_per_block,
        attention_head_dim=model_cfg.attention_head_dim,
        norm_num_groups=model_cfg.norm_num_groups,
        cross_attention_dim=model_cfg.text_hidden_size,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=model_cfg.text_hidden_size,
    )


def build_pipeline(cfg: DictConfig) -> ToyGlidePipeline:
    """A randomly initialised toy pipeline for ``cfg.toy_generator.model``."""
    m = cfg.toy_generator.model
    tokenizer = build_tokenizer(toy_vocabulary.vocabulary(cfg), m.max_caption_tokens)
    text_encoder = build_text_encoder(tokenizer, m.text_hidden_size, m.text_layers, m.text_heads,
                                      m.max_caption_tokens)
    unet = build_unet(m)
    scheduler = DDIMScheduler(
        num_train_timesteps=m.num_train_timesteps,
        beta_schedule=m.beta_schedule,
        prediction_type=m.prediction_type,
        rescale_betas_zero_snr=m.rescale_betas_zero_snr,
        clip_sample=True,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
    )
    return ToyGlidePipeline(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)


def save_pipeline_atomically(pipe: ToyGlidePipeline, out: Path) -> None:
    """Save into a sibling temporary folder and swap it in, so a killed job leaves no half model."""
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)


def run(cfg: DictConfig) -> dict[str, Path]:
    torch.set_num_threads(cfg.threads)
    gcfg = cfg.toy_generator
    split = toyworld.load_split(cfg, "train")
    if split["images"].shape[1] != gcfg.model.sample_size:
        raise ConfigError(
            f"config key 'toy_generator.model.sample_size' is {gcfg.model.sample_size} but the toy world's "
            f"images are {split['images'].shape[1]} px (toyworld.image_size)"
        )
    torch.manual_seed(gcfg.seed)  # the initial weights; train_pipeline's noise continues this stream
    return train_pipeline(cfg, "toy_generator", build_pipeline(cfg), split)


def train_pipeline(cfg: DictConfig, section: str, pipe: ToyGlidePipeline, split: dict[str, np.ndarray],
        conditioning=None) -> dict[str, Path]:
    """Train ``pipe``'s UNet and text encoder on the split's images and captions with the recipe in
    config section ``section`` (steps, batch_size, lr, warmup_steps, weight_decay, ema_decay,
    caption_dropout, snr_gamma, seed, log_every, output_dir) and save the pipeline there.

    ``conditioning(x0, index, flip, rng)``, when given, returns extra UNet input channels
    [B, C, H, W] for the batch (the inpainting model's mask and masked image), concatenated after
    the noisy image as diffusers' inpainting UNets take them.
    """
    import mlflow

    gcfg = cfg[section]
    out = Path(gcfg.output_dir)
    rng = np.random.default_rng(gcfg.seed)
    images = signed_range(split["images"])
    captions = [str(c) for c in split["captions"]]

    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    unet.train()
    text_encoder.train()
    ids, mask = tokenize(tokenizer, captions)
    empty_ids, empty_mask = tokenize(tokenizer, [""])
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=gcfg.lr, weight_decay=gcfg.weight_decay)
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=gcfg.warmup_steps,
                                num_training_steps=gcfg.steps)
    ema = EMAModel(params, decay=gcfg.ema_decay)
    n_params = sum(p.numel() for p in unet.parameters())

    losses: list[float] = []
    start = time.time()
    with mlflow_run(cfg, f"train_{section.removeprefix('toy_')}", sections=(section, "toyworld")) as run_info:
        mlflow.log_param("unet_parameters", n_params)
        bar = tqdm(range(gcfg.steps), desc=f"train {section}", unit="step", mininterval=5)
        window: list[float] = []
        for step in bar:
            idx_np = rng.integers(0, len(images), gcfg.batch_size)
            idx = torch.from_numpy(idx_np)
            x0 = images[idx]
            flip_np = rng.random(gcfg.batch_size) < 0.5
            flip = torch.from_numpy(flip_np)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            drop = torch.from_numpy(rng.random(gcfg.batch_size) < gcfg.caption_dropout)
            batch_ids = torch.where(drop[:, None], empty_ids, ids[idx])
            batch_mask = torch.where(drop[:, None], empty_mask, mask[idx])
            extra = conditioning(x0, idx_np, flip_np, rng) if conditioning is not None else None

            noise = torch.randn_like(x0)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (gcfg.batch_size,))
            xt = noise_scheduler.add_noise(x0, noise, t)
            if extra is not None:
                xt = torch.cat([xt, extra], dim=1)
            text = text_encoder(input_ids=batch_ids, attention_mask=batch_mask)
            pred = unet(xt, t, encoder_hidden_states=text.last_hidden_state,
                        class_labels=text.pooler_output).sample
            loss = denoising_loss(pred, noise, x0, t, noise_scheduler, gcfg.snr_gamma)
            update_weights(loss, params, optimizer, lr_schedule, max_grad_norm=1.0, ema=ema)

            window.append(loss.item())
            if (step + 1) % gcfg.log_every == 0 or step + 1 == gcfg.steps:
                mean = float(np.mean(window))
                losses.append(mean)
                window = []
                bar.set_postfix(loss=f"{mean:.4f}")
                mlflow.log_metric("train_loss", mean, step=step + 1)

        seconds = time.time() - start
        ema.copy_to(params)
        unet.eval()
        text_encoder.eval()
        save_pipeline_atomically(pipe, out)
        save_resolved(cfg, out, "recipe.yaml")
        summary = {
            "steps": gcfg.steps,
            "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / gcfg.steps, 4),
            "unet_parameters": n_params,
            "final_loss": losses[-1] if losses else None,
            "loss_curve": losses,
            "mlflow_run_id": run_info.info.run_id,
        }
        write_json(out / "training.json", summary)
        mlflow.log_metric("seconds_per_step", summary["seconds_per_step"])
        mlflow.log_artifact(str(out / "recipe.yaml"))
        mlflow.log_artifact(str(out / "training.json"))
    return {"model": out, "recipe": out / "recipe.yaml", "summary": out / "training.json"}
