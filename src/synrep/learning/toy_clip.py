"""The toy CLIP: open_clip's CLIP at toy scale, trained on the toy world's captioned photos and its
other domains (line drawings, colour negatives, pixelated pictures), which the toy generator never
sees. GLIDE's CLIP guidance and unCLIP's prior and decoder build on it.

It is saved as an open_clip ``local-dir:`` model (``open_clip_config.json`` + safetensors), so that
open_clip loads it with no synrep code::

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:models/toy_clip")
    tokenizer = open_clip.get_tokenizer("local-dir:models/toy_clip")

Training is CLIP's: open_clip's ``ClipLoss`` (``synrep.learning.losses.clip_loss``) with the learnt
temperature clamped at 100, AdamW without weight decay on gains, biases, embeddings and the
temperature (``models.parameter_groups``), linear warm-up then cosine, crops and flips of a batch at
once (``augment.BatchAugment``). ``training.json`` beside the weights holds the loss curve and the
zero-shot accuracies on held-out images: shape and colour of photos, shape of each other domain,
and which domain an image is in.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from synrep.data import toy_vocabulary, toyworld
from synrep.diffusion.clip_model import CLIP_CONFIG, load_clip
from synrep.fileio import atomic_dir, write_json
from synrep.learning.augment import MEAN, STD
from synrep.learning.lr_schedule import warmup_cosine_lr
from synrep.pixels import signed_range
from synrep.settings import save_resolved
from synrep.tracking import mlflow_run

WEIGHTS_NAME = "open_clip_model.safetensors"


def model_config(cfg: DictConfig) -> dict:
    """open_clip's ``model_cfg`` for ``toy_clip.model`` at the world's image size."""
    m = cfg.toy_clip.model
    return {
        "embed_dim": m.embed_dim,
        "vision_cfg": {"image_size": cfg.toyworld.image_size, "patch_size": m.patch_size, "width": m.vision_width,
                       "layers": m.vision_layers, "head_width": m.vision_head_width, "mlp_ratio": m.mlp_ratio},
        "text_cfg": {"context_length": m.context_length, "vocab_size": 49408, "width": m.text_width,
                     "heads": m.text_heads, "layers": m.text_layers},
    }


def build_model(cfg: DictConfig) -> torch.nn.Module:
    from open_clip.model import CLIP

    return CLIP(**model_config(cfg))


def save(model: torch.nn.Module, cfg: DictConfig, out: Path) -> None:
    """``out``: an open_clip local-dir model (config with preprocessing, safetensors weights)."""
    from safetensors.torch import save_file

    write_json(out / CLIP_CONFIG, {
        "model_cfg": model_config(cfg),
        "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bilinear",
                           "resize_mode": "shortest"},
    })
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_NAME))


def preprocess_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> the model's input (the preprocessing saved with it)."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def corpus(cfg: DictConfig, split: str) -> dict[str, np.ndarray]:
    """Photos and other-domain images of a split, with captions and labels; ``domain`` 0 = photo.
    train: the world's train photos + domains_train; test: its test photos + domains_test."""
    photos = toyworld.load_split(cfg, split)
    others = toyworld.load_split(cfg, f"domains_{split}")
    out = {k: np.concatenate([photos[k], others[k]]) for k in ("images", "shape", "colour", "size", "background")}
    out["domain"] = np.concatenate([np.zeros(len(photos["images"]), np.int64), others["domain"] + 1])
    if "captions" in photos:
        out["captions"] = np.concatenate([photos["captions"], others["captions"]])
    return out


# ------------------------------------------------------------------------------------------
# Zero-shot evaluation
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_images(model, images: np.ndarray, batch: int = 1024) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    feats = [model.encode_image(preprocess_images(x[i:i + batch]), normalize=True) for i in range(0, len(x), batch)]
    return torch.cat(feats)


@torch.no_grad()
def class_embeddings(model, tokenizer, prompts: list[list[str]]) -> torch.Tensor:
    """One unit vector per class: the mean of its prompts' text embeddings (CLIP's ensembling)."""
    rows = []
    for class_prompts in prompts:
        emb = model.encode_text(tokenizer(class_prompts), normalize=True).mean(0)
        rows.append(emb / emb.norm())
    return torch.stack(rows)


def prompts(cfg: DictConfig, target: str) -> list[list[str]]:
    """Class prompts of a zero-shot target: shape, colour, or domain (photo first)."""
    tw = cfg.toyworld
    first_words = [toy_vocabulary.SHAPE_WORDS[s][0] for s in tw.shapes]
    if target == "shape":
        return toy_vocabulary.zero_shot_prompts(cfg, "shape")
    if target == "colour":
        return [[f"a {c} {o}" for o in first_words] for c in tw.colours]
    if target == "domain":
        objects = [f"a {c} {o}" for c in tw.colours[:4] for o in first_words]
        photo = [t.format(c=c, o=o) for t in toy_vocabulary.TEMPLATES_PLAIN[:3] for c in tw.colours[:4] for o in first_words]
        return [photo] + [[t.format(x=x) for t in toy_vocabulary.DOMAIN_TEMPLATES[d] for x in objects] for d in tw.domains]
    raise ValueError(f"unknown zero-shot target {target!r}")


def zero_shot(cfg: DictConfig, model, tokenizer, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Zero-shot accuracies on held-out images: shape and colour of photos, shape per other domain,
    and the domain of every image."""
    feats = encode_images(model, data["images"])
    predicted = {t: (feats @ class_embeddings(model, tokenizer, prompts(cfg, t)).T).argmax(1).numpy()
                 for t in ("shape", "colour", "domain")}
    photo = data["domain"] == 0
    out = {"photo_shape": float((predicted["shape"][photo] == data["shape"][photo]).mean()),
           "photo_colour": float((predicted["colour"][photo] == data["colour"][photo]).mean()),
           "domain": float((predicted["domain"] == data["domain"]).mean())}
    for i, name in enumerate(cfg.toyworld.domains, start=1):
        chosen = data["domain"] == i
        out[f"{name}_shape"] = float((predicted["shape"][chosen] == data["shape"][chosen]).mean())
    return out


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


def train_loop(model: torch.nn.Module, n: int, c: DictConfig, loss_of, desc: str, progress: bool = True,
        max_grad_norm: float | None = None) -> list[float]:
    """CLIP's training loop, shared by the toy CLIP and its noised version: ``c.epochs`` passes over
    ``n`` items in shuffled batches of ``c.batch_size`` (``loss_of(indices, generator)``), AdamW without
    weight decay on gains, biases, embeddings and the temperature, linear warm-up then cosine, the
    temperature clamped at 100 as open_clip does. Returns the mean loss of each epoch."""
    from synrep.learning.models import parameter_groups

    optimizer = torch.optim.AdamW(parameter_groups(model, c.weight_decay), lr=c.lr, betas=(0.9, 0.98), eps=1e-6)
    trainable = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = n // c.batch_size
    steps = c.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(c.seed)
    curve, window = [], []
    bar = tqdm(range(steps), desc=desc, unit="step", mininterval=5, disable=not progress)
    for step in bar:
        if step % steps_per_epoch == 0:
            order = torch.randperm(n, generator=gen)
        idx = order[(step % steps_per_epoch) * c.batch_size:(step % steps_per_epoch + 1) * c.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, c.warmup_steps, c.lr, count_current_step=True)
        loss = loss_of(idx, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        window.append(loss.item())
        if (step + 1) % steps_per_epoch == 0:
            curve.append(float(np.mean(window)))
            window = []
            bar.set_postfix(loss=f"{curve[-1]:.3f}")
    return curve


def train(cfg: DictConfig, progress: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """The toy CLIP trained on the train corpus; returns it (eval mode) and its loss curve."""
    from open_clip.tokenizer import SimpleTokenizer  # what open_clip.get_tokenizer gives the saved model

    from synrep.learning.augment import BatchAugment
    from synrep.learning.losses import clip_loss

    c = cfg.toy_clip
    torch.manual_seed(c.seed)
    data = corpus(cfg, "train")
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).contiguous()
    tokens = SimpleTokenizer(context_length=c.model.context_length)(list(data["captions"]))
    augment = BatchAugment(OmegaConf.merge(cfg, {"train": {
        "image_size": cfg.toyworld.image_size,
        "augment": {"crop_scale": list(c.crop_scale), "downsample_p": 0.0}}}))

    model = build_model(cfg).train()

    def loss_of(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return clip_loss(model.encode_image(augment(images[idx])), model.encode_text(tokens[idx]), model.logit_scale)

    curve = train_loop(model, len(images), c, loss_of, "train toy CLIP", progress)
    return model.eval(), curve


def run(cfg: DictConfig) -> dict[str, Path]:
    import mlflow

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.toy_clip.output_dir)
    start = time.time()
    with mlflow_run(cfg, "train_clip", sections=("toy_clip", "toyworld")) as run_info:
        model, curve = train(cfg)
        seconds = time.time() - start
        with atomic_dir(out) as tmp:
            save(model, cfg, tmp)
            save_resolved(cfg, tmp, "recipe.yaml")
            # what a user gets back from open_clip, scored on held-out images
            loaded, tokenizer = load_clip(tmp)
            accuracy = zero_shot(cfg, loaded, tokenizer, corpus(cfg, "test"))
            summary = {
                "epochs": cfg.toy_clip.epochs,
                "seconds": round(seconds, 1),
                "parameters": sum(p.numel() for p in model.parameters()),
                "loss_curve": curve,
                "zero_shot_test": accuracy,
                "chance": {"photo_shape": 1 / len(cfg.toyworld.shapes), "photo_colour": 1 / len(cfg.toyworld.colours),
                           "domain": 1 / (1 + len(cfg.toyworld.domains))},
                "mlflow_run_id": run_info.info.run_id,
            }
            write_json(tmp / "training.json", summary)
        mlflow.log_metrics({f"zero_shot.{k}": v for k, v in accuracy.items()})
        mlflow.log_metric("final_loss", curve[-1])
        mlflow.log_artifact(str(out / "training.json"))
    print("toy CLIP zero-shot on held-out images: "
          + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    return {"model": out, "summary": out / "training.json"}


# ------------------------------------------------------------------------------------------
# GLIDE's noised CLIP
# ------------------------------------------------------------------------------------------

NOISE_LEVELS = (0, 250, 500, 750, 900)  # timesteps at which training.json scores zero-shot shape


def noise_schedule(generator: str) -> dict:
    """The scheduler config of a diffusers pipeline folder (its noise schedule, ᾱ_t)."""
    import json

    path = Path(generator) / "scheduler" / "scheduler_config.json"
    if not path.exists():
        raise FileNotFoundError(f"config key 'toy_noised_clip.generator': {path} not found (a diffusers pipeline folder)")
    return json.loads(path.read_text())


def noised_input(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε (x0 in [-1, 1]), as the tower reads it: rescaled to
    [0, 1] and normalised with the CLIP's mean and std, as NoisedClipGuide does when it guides."""
    a = alphas[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x_t + 1) / 2 - mean) / std


@torch.no_grad()
def noisy_zero_shot(model, tokenizer, cfg: DictConfig, data: dict[str, np.ndarray], alphas: torch.Tensor,
                    levels=NOISE_LEVELS, seed: int = 0) -> dict[str, float]:
    """Zero-shot shape accuracy on the test photos noised to each timestep (the same noise for every
    model); ``model`` is a NoisedClip or a plain CLIP (which ignores t)."""
    from synrep.diffusion.noised_clip import NoisedClip

    x0 = signed_range(data["images"])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    classes = class_embeddings(model, tokenizer, prompts(cfg, "shape"))
    out = {}
    for level in levels:
        t = torch.full((len(x0),), level, dtype=torch.long)
        x = noised_input(x0, noise, t, alphas)
        feats = model.encode_image(x, t) if isinstance(model, NoisedClip) else model.encode_image(x, normalize=True)
        out[f"t{level}"] = float(((feats @ classes.T).argmax(1).numpy() == data["shape"]).mean())
    return out


def train_noised(cfg: DictConfig, progress: bool = True):
    """(NoisedClip in eval mode, loss curve, base CLIP, tokenizer, ᾱ_t): the base CLIP's image
    tower and a timestep embedding trained on the world's train photos noised at t ~ U{0..T-1},
    against the frozen text tower's caption embeddings (CLIP's loss)."""
    from open_clip.tokenizer import SimpleTokenizer

    from synrep.diffusion.noised_clip import NoisedClip, alphas_cumprod
    from synrep.learning.losses import clip_loss

    c = cfg.toy_noised_clip
    torch.manual_seed(c.seed)
    schedule = noise_schedule(c.generator)
    alphas = alphas_cumprod(schedule)
    base, tokenizer = load_clip(c.base_clip, key="toy_noised_clip.base_clip")
    clip, _ = load_clip(c.base_clip)
    model = NoisedClip(clip)
    # the image tower, its time embedding and the temperature train; the text tower stays the base CLIP's
    model.requires_grad_(False)
    for part in (model.clip.visual, model.timestep, model.clip.logit_scale):
        part.requires_grad_(True)

    photos = toyworld.load_split(cfg, "train")
    x0_all = signed_range(photos["images"])
    context = model.clip.context_length
    with torch.no_grad():
        tokens = SimpleTokenizer(context_length=context)(list(photos["captions"]))
        text = torch.cat([model.encode_text(tokens[i:i + 1024]) for i in range(0, len(tokens), 1024)])

    model.train()

    def loss_of(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x0 = x0_all[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        t = torch.randint(0, len(alphas), (len(idx),), generator=gen)
        x = noised_input(x0, torch.randn(x0.shape, generator=gen), t, alphas)
        return clip_loss(model.encode_image(x, t), text[idx], model.logit_scale)

    curve = train_loop(model, len(x0_all), c, loss_of, "train noised CLIP", progress, max_grad_norm=1.0)
    return model.eval(), curve, base, tokenizer, schedule


def run_noised(cfg: DictConfig) -> dict[str, Path]:
    import json

    import mlflow

    from synrep.diffusion import noised_clip
    from synrep.diffusion.pipelines import weights_sha256

    torch.set_num_threads(cfg.threads)
    c = cfg.toy_noised_clip
    out = Path(c.output_dir)
    start = time.time()
    with mlflow_run(cfg, "train_noised_clip", sections=("toy_noised_clip", "toyworld")) as run_info:
        model, curve, base, tokenizer, schedule = train_noised(cfg)
        seconds = time.time() - start
        test = toyworld.load_split(cfg, "test")
        alphas = noised_clip.alphas_cumprod(schedule)
        with atomic_dir(out) as tmp:
            noised_clip.save(model, tmp, json.loads((Path(c.base_clip) / CLIP_CONFIG).read_text()), schedule,
                             weights_sha256(Path(c.base_clip)))
            save_resolved(cfg, tmp, "recipe.yaml")
            loaded, loaded_tokenizer, _ = noised_clip.load(tmp)  # what a user gets back
            accuracy = {"noised_clip": noisy_zero_shot(loaded, loaded_tokenizer, cfg, test, alphas),
                        "base_clip": noisy_zero_shot(base, tokenizer, cfg, test, alphas)}
            write_json(tmp / "training.json", {
                "epochs": c.epochs, "seconds": round(seconds, 1), "loss_curve": curve,
                "zero_shot_shape_by_timestep": accuracy, "chance": 1 / len(cfg.toyworld.shapes),
                "mlflow_run_id": run_info.info.run_id})
        for which, scores in accuracy.items():
            mlflow.log_metrics({f"{which}.shape_{k}": v for k, v in scores.items()})
        mlflow.log_metric("final_loss", curve[-1])
        mlflow.log_artifact(str(out / "training.json"))
    for which, scores in accuracy.items():
        print(f"{which} zero-shot shape on noised test photos: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return {"model": out, "summary": out / "training.json"}
