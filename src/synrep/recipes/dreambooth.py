"""DreamBooth (Ruiz et al. 2023): personalise a text-to-image model with a few images of one subject.

The UNet (and, with ``train_text_encoder``, the text encoder) is fine-tuned on the subject's images
under "a [V] [class noun]" ("a sks ring"), with the class-specific prior-preservation loss: class
images x_pr are generated from "a [class noun]" by the frozen model before training, and every step
adds their denoising loss,

    L = MSE(eps_hat(x_t, c), eps) + prior_loss_weight * MSE(eps_hat(x_pr_t, c_pr), eps')

Options keep the names and meanings of diffusers' ``examples/dreambooth/train_dreambooth.py``
(instance_prompt, class_prompt, with_prior_preservation, prior_loss_weight, num_class_images,
learning_rate, max_train_steps, train_batch_size, train_text_encoder, sample_batch_size,
lr_scheduler, lr_warmup_steps, adam_weight_decay, max_grad_norm, seed): an instance and a class
batch of ``train_batch_size`` each go through one UNet call, the prior loss is unweighted MSE,
class images are sampled ``sample_batch_size`` at a time and ``num_class_images`` is a minimum
(a cache with fewer is topped up). The same code fine-tunes the toy generator (pixel space, the
pooled caption embedding as the UNet's class embedding) and a Stable Diffusion pipeline (latents
from the VAE, times its ``scaling_factor``).

The toy subject is the world's notched two-tone ring (``toy_subject.render_subject``); the instance
images are ``num_instance_images`` renders of it from ``subject_seed``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from synrep.diffusion.sampling import sample_images
from synrep.diffusion.training import denoising_loss, update_weights
from synrep.fileio import atomic_dir, atomic_path, write_json
from synrep.generation.source_images import sampling_of
from synrep.pixels import signed_range
from synrep.settings import ConfigError, InputError, digest, save_resolved
from synrep.tracking import mlflow_run

# diffusers.optimization.get_scheduler's names, as train_dreambooth.py's --lr_scheduler takes them
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
CLASS_IMAGES = "images.npz"
PROVENANCE = "provenance.json"
SUMMARY = "dreambooth.json"


def instance_seed(subject_seed: int) -> list[int]:
    """The seed of the instance images; held-out references use ``reference_seed`` (disjoint)."""
    return [int(subject_seed), 0]


def reference_seed(subject_seed: int, quality_seed: int) -> list[int]:
    return [int(subject_seed), 1, int(quality_seed)]


def check_options(opts: Mapping, key: str = "dreambooth") -> None:
    """Raise ValueError naming the config key of the first option with a bad value."""
    def bad(name: str, why: str):
        raise ConfigError(f"config key '{key}.{name}': {why}, got {opts[name]!r}")

    for name in ("learning_rate", "max_train_steps", "train_batch_size", "sample_batch_size",
                 "num_instance_images", "log_every"):
        if opts[name] is None or opts[name] <= 0:
            bad(name, "must be > 0")
    for name in ("prior_loss_weight", "lr_warmup_steps", "adam_weight_decay", "max_grad_norm"):
        if opts[name] < 0:
            bad(name, "must be >= 0")
    if opts["lr_scheduler"] not in LR_SCHEDULERS:
        bad("lr_scheduler", f"not one of {list(LR_SCHEDULERS)}")
    if not str(opts["instance_prompt"]).strip():
        bad("instance_prompt", "an empty prompt")
    if opts["with_prior_preservation"]:
        # diffusers: "You must specify prompt for class images."
        if not opts["class_prompt"] or not str(opts["class_prompt"]).strip():
            bad("class_prompt", "with_prior_preservation needs a class prompt")
        if opts["num_class_images"] is None or opts["num_class_images"] <= 0:
            bad("num_class_images", "with_prior_preservation needs > 0 class images")
    if opts.get("steps") is not None and opts["steps"] <= 0:
        bad("steps", "must be > 0")
    if opts.get("guidance_scale") is not None and opts["guidance_scale"] < 1:
        bad("guidance_scale", "must be >= 1 (1: no guidance)")


# --------------------------------------------------------------------------------------------
# The pipeline's pieces, toy or Stable Diffusion
# --------------------------------------------------------------------------------------------


def has_vae(pipe) -> bool:
    return getattr(pipe, "vae", None) is not None


def model_resolution(pipe) -> int:
    """The pixel side the pipeline generates at natively (SD: latent side x the VAE's factor)."""
    side = pipe.unet.config.sample_size
    return side * pipe.vae_scale_factor if has_vae(pipe) else side


def resize_images(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 [N, H, W, 3] resized to ``side`` (bilinear, as diffusers' DreamBooth dataset resizes)."""
    from PIL import Image

    if images.shape[1] == side and images.shape[2] == side:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.Resampling.BILINEAR))
                     for im in images])


def load_instance_images(folder: str | Path, side: int) -> np.ndarray:
    """uint8 [N, side, side, 3]: every image file of ``folder`` (sorted by name), RGB, resized."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not paths:
        raise FileNotFoundError(f"config key 'dreambooth.instance_data_dir': no .png/.jpg/.jpeg/.webp images in {folder}")
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.Resampling.BILINEAR))
                     for p in paths])


def model_input(pipe, images: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> what the UNet denoises: pixels in [-1, 1] (toy), or the VAE latent's
    sample times ``scaling_factor`` (Stable Diffusion, as train_dreambooth.py)."""
    x = signed_range(images).to(pipe.device)
    if not has_vae(pipe):
        return x
    vae = pipe.vae
    with torch.no_grad():
        latents = vae.encode(x.to(vae.dtype)).latent_dist.sample(generator=generator)
    return latents.float() * vae.config.scaling_factor


def prompt_ids(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded to the tokenizer's max length (as the pipelines do)."""
    from synrep.diffusion.toy.text import tokenize as pad_tokenize

    ids, mask = pad_tokenize(pipe.tokenizer, prompts)
    return ids.to(pipe.device), mask.to(pipe.device)


def encode_text(pipe, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(encoder_hidden_states, class_labels) for the UNet: the toy generator conditions on the
    caption states and on the pooled embedding (its class embedding); SD on the states alone, with
    the attention mask only where its text encoder's config asks for one (as its pipeline)."""
    from synrep.diffusion.toy.pipeline import ToyGlidePipeline

    encoder = pipe.text_encoder
    if isinstance(pipe, ToyGlidePipeline):
        out = encoder(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, out.pooler_output
    use_mask = getattr(encoder.config, "use_attention_mask", False)
    return encoder(ids, attention_mask=mask if use_mask else None)[0], None


def weights_fingerprint(pipe) -> str:
    """sha256 over the names, dtypes, shapes and values of the pipeline's weights (UNet, text
    encoder, VAE): what the class images depend on, whether the pipeline came from a folder or not."""
    digest = hashlib.sha256()
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for key, value in sorted(module.state_dict().items()):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Class images (prior preservation), cached with their provenance
# --------------------------------------------------------------------------------------------


def class_image_seed(seed: int, index: int) -> int:
    """The noise seed of class image ``index``: independent of how many are made, so that a cache
    topped up later holds the images a single run would have made."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def sampling_settings(opts: Mapping, generation: Mapping | None = None) -> dict:
    """What ``sampling.sample_images`` takes, for class and evaluation samples: the section's steps
    and guidance scale (null steps: ``generation.steps``), at the model's own resolution."""
    generation = generation or {}
    return {"steps": int(opts.get("steps") or generation.get("steps") or 20), "eta": float(generation.get("eta", 0.0)),
            "guidance_rescale": float(generation.get("guidance_rescale", 0.0)),
            "batch_size": int(opts["sample_batch_size"]), "resolution": None, "save_size": None,
            "guidance": {}, "mode": "text2img", "w": float(opts.get("guidance_scale") or 1.0)}


def class_provenance(pipe, opts: Mapping, settings: Mapping, fingerprint: str) -> dict:
    """What a set of class images is a function of (their cache key)."""
    return {"class_prompt": str(opts["class_prompt"]), "seed": int(opts["seed"]), "model_fingerprint": fingerprint,
            "pipeline": type(pipe).__name__, "sampler": type(pipe.scheduler).__name__,
            "steps": settings["steps"], "guidance_scale": settings["w"], "eta": settings["eta"],
            "guidance_rescale": settings["guidance_rescale"], "resolution": model_resolution(pipe)}


def class_images(pipe, opts: Mapping, class_data_dir: str | Path, settings: Mapping,
                 fingerprint: str | None = None) -> tuple[np.ndarray, dict]:
    """``num_class_images`` images of ``class_prompt`` from ``pipe`` as it is now (call it before
    training), uint8 [N, H, W, 3], and where they came from: {folder, generated, reused, provenance}.

    They live in ``class_data_dir/<hash of the provenance>/`` (images.npz, provenance.json: prompt,
    seed, model fingerprint, sampler, steps, w and each image's noise seed); a later call with the
    same provenance reuses them and generates only what is missing."""

    fingerprint = fingerprint or weights_fingerprint(pipe)
    provenance = class_provenance(pipe, opts, settings, fingerprint)
    folder = Path(class_data_dir) / digest(provenance)
    have = np.zeros((0, 0, 0, 3), np.uint8)
    if (folder / CLASS_IMAGES).exists() and (folder / PROVENANCE).exists():
        stored = json.loads((folder / PROVENANCE).read_text())
        if {k: stored.get(k) for k in provenance} == provenance:
            with np.load(folder / CLASS_IMAGES) as data:
                have = data["images"]
    wanted = int(opts["num_class_images"])
    missing = max(0, wanted - len(have))
    if missing:
        start = len(have)
        seeds = [class_image_seed(opts["seed"], i) for i in range(start, wanted)]
        was_training = pipe.unet.training
        pipe.unet.eval()
        made = sample_images(pipe, [str(opts["class_prompt"])] * missing, seeds, settings["w"], sampling_of(settings))
        pipe.unet.train(was_training)
        have = made if start == 0 else np.concatenate([have, made])
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / CLASS_IMAGES) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, images=have)
        write_json(folder / PROVENANCE, {**provenance, "count": len(have),
                                         "noise_seeds": [class_image_seed(opts["seed"], i) for i in range(len(have))]})
    info = {"folder": str(folder), "generated": missing, "reused": wanted - missing, "provenance": provenance}
    return have[:wanted], info


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def dreambooth_loss(model_pred: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                    noise_scheduler, with_prior_preservation: bool,
                    prior_loss_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, instance loss, prior loss or None): the denoising loss. With prior preservation the
    batch is the instance half followed by the class half (one UNet call, as train_dreambooth.py),
    and loss = instance half's + prior_loss_weight * class half's."""
    if not with_prior_preservation:
        instance = denoising_loss(model_pred, noise, x0, t, noise_scheduler)
        return instance, instance, None
    instance_half, class_half = zip(*(torch.chunk(a, 2, dim=0) for a in (model_pred, noise, x0, t)))
    instance = denoising_loss(*instance_half, noise_scheduler)
    prior = denoising_loss(*class_half, noise_scheduler)
    return instance + prior_loss_weight * prior, instance, prior


def train_dreambooth(pipe, instance_images: np.ndarray, opts: Mapping, class_data_dir: str | Path | None = None,
                     settings: Mapping | None = None, fingerprint: str | None = None,
                     log: Callable[[int, dict], None] | None = None, progress: bool = True) -> dict:
    """Fine-tune ``pipe`` in place on ``instance_images`` (uint8 [N, H, W, 3], resized to the
    model's resolution) with the options of a DreamBoothConfig (``opts``). With
    ``with_prior_preservation``, class images come from ``class_images`` (cached under
    ``class_data_dir``, sampled with ``settings``; ``fingerprint``: the model's, else its weights'
    hash). ``log(step, metrics)`` receives the mean losses every ``log_every`` steps.

    Returns a summary: steps, seconds, losses (curve and final), class-image provenance."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    check_options(opts)
    prior = bool(opts["with_prior_preservation"])
    if pipe.unet.dtype != torch.float32:
        # as train_dreambooth.py: trained weights must be float32 (mixed precision aside)
        raise InputError(f"the UNet is {pipe.unet.dtype}: DreamBooth trains float32 weights "
                         "(load the pipeline with dtype float32)")
    side = model_resolution(pipe)
    instance = resize_images(np.asarray(instance_images, np.uint8), side)
    settings = dict(settings or sampling_settings(opts))
    class_info = None
    if prior:
        if class_data_dir is None:
            raise ConfigError("config key 'dreambooth.class_data_dir': with_prior_preservation needs a folder for "
                              "the class images")
        # before any update: the class images are the frozen model's
        class_set, class_info = class_images(pipe, opts, class_data_dir, settings, fingerprint)
        class_set = resize_images(class_set, side)

    seed = int(opts["seed"])
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device = pipe.device
    unet, text_encoder = pipe.unet, pipe.text_encoder
    train_te = bool(opts["train_text_encoder"])
    unet.requires_grad_(True).train()
    text_encoder.requires_grad_(train_te).train(train_te)
    if has_vae(pipe):
        pipe.vae.requires_grad_(False).eval()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = noise_scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):  # as train_dreambooth.py
        raise InputError(f"DreamBooth: unsupported prediction_type {prediction!r} (epsilon or v_prediction)")

    bsz = int(opts["train_batch_size"])
    prompts = [str(opts["instance_prompt"])] * bsz + ([str(opts["class_prompt"])] * bsz if prior else [])
    ids, mask = prompt_ids(pipe, prompts)
    if not train_te:
        # a frozen encoder gives the same states every step: encode once
        with torch.no_grad():
            frozen = encode_text(pipe, ids, mask)

    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_te else [])
    optimizer = torch.optim.AdamW(params, lr=float(opts["learning_rate"]), betas=(0.9, 0.999),
                                  weight_decay=float(opts["adam_weight_decay"]), eps=1e-8)
    steps = int(opts["max_train_steps"])
    lr_schedule = get_scheduler(str(opts["lr_scheduler"]), optimizer, num_warmup_steps=int(opts["lr_warmup_steps"]),
                                num_training_steps=steps)
    curve: list[dict] = []
    window: dict[str, list[float]] = {"loss": [], "instance_loss": [], "prior_loss": []}
    start = time.time()
    for step in tqdm(range(steps), desc="dreambooth", unit="step", mininterval=5, disable=not progress):
        batch = instance[rng.integers(0, len(instance), bsz)]
        if prior:
            batch = np.concatenate([batch, class_set[rng.integers(0, len(class_set), bsz)]])
        x0 = model_input(pipe, batch, gen)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), generator=gen).to(device)
        xt = noise_scheduler.add_noise(x0, noise, t)
        states, labels = encode_text(pipe, ids, mask) if train_te else frozen
        pred = unet(xt, t, encoder_hidden_states=states, class_labels=labels).sample
        loss, instance_loss, prior_loss = dreambooth_loss(pred, noise, x0, t, noise_scheduler, prior,
                                                          float(opts["prior_loss_weight"]))
        update_weights(loss, params, optimizer, lr_schedule, max_grad_norm=float(opts["max_grad_norm"]))

        window["loss"].append(loss.item())
        window["instance_loss"].append(instance_loss.item())
        if prior_loss is not None:
            window["prior_loss"].append(prior_loss.item())
        if (step + 1) % int(opts["log_every"]) == 0 or step + 1 == steps:
            means = {k: float(np.mean(v)) for k, v in window.items() if v}
            curve.append({"step": step + 1, **means})
            window = {k: [] for k in window}
            if log is not None:
                log(step + 1, means)
    seconds = time.time() - start
    unet.eval()
    text_encoder.eval()
    return {"steps": steps, "seconds": round(seconds, 1), "seconds_per_step": round(seconds / steps, 4),
            "with_prior_preservation": prior, "instance_images": len(instance), "resolution": side,
            "final": curve[-1] if curve else None, "loss_curve": curve, "class_images": class_info}


def save_model(pipe, out: str | Path, cfg=None, summary: dict | None = None) -> Path:
    """Save the fine-tuned pipeline (``save_pretrained``), its resolved config (config.yaml) and the
    training summary (dreambooth.json) into ``out`` at once (a killed job leaves no half folder)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if cfg is not None:
            save_resolved(cfg, tmp)
        if summary is not None:
            write_json(tmp / SUMMARY, summary)
    return out


def run(cfg) -> dict[str, Path]:
    """``python -m synrep train_dreambooth``: fine-tune ``dreambooth.generator`` on the toy subject
    into ``dreambooth.output_dir``."""
    import mlflow

    from synrep.data import toy_subject
    from synrep.diffusion.pipelines import fingerprint as model_fingerprint
    from synrep.diffusion.pipelines import load_pipeline, model_folder

    torch.set_num_threads(cfg.threads)
    d = cfg.dreambooth
    check_options(d)
    model_folder(d.generator, "dreambooth.generator")  # one line naming the key when it is missing
    g = cfg.generation
    # load_pipeline's cached object is shared by the process: train a copy of its own
    pipe = load_pipeline.__wrapped__(d.generator, d.sampler or g.sampler, "float32", g.device)
    if d.instance_data_dir:  # real photos of a subject, as train_dreambooth.py's --instance_data_dir
        images = load_instance_images(d.instance_data_dir, model_resolution(pipe))
    else:
        images, _ = toy_subject.render_subject(cfg, d.num_instance_images, instance_seed(d.subject_seed))
    settings = sampling_settings(d, g)
    weights = model_fingerprint(d.generator, Path(cfg.paths.results_dir) / ".fingerprints", "dreambooth.generator")
    out = Path(d.output_dir)
    with mlflow_run(cfg, "train_dreambooth", sections=("dreambooth",), run_name=f"dreambooth {out.name}") as run_info:
        summary = train_dreambooth(pipe, images, d, d.class_data_dir, settings, weights["weights_sha256"],
                                   log=lambda step, m: mlflow.log_metrics(m, step=step))
        summary["generator"] = weights
        summary["mlflow_run_id"] = run_info.info.run_id
        save_model(pipe, out, cfg, summary)
        mlflow.log_metric("seconds_per_step", summary["seconds_per_step"])
        if summary["class_images"]:
            mlflow.log_metrics({"class_images_generated": summary["class_images"]["generated"],
                                "class_images_reused": summary["class_images"]["reused"]})
        mlflow.log_artifact(str(out / "config.yaml"))
        mlflow.log_artifact(str(out / SUMMARY))
    return {"model": out, "config": out / "config.yaml", "summary": out / SUMMARY}
