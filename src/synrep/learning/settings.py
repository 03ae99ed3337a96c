"""Config sections of learning: a training run (``train``, its augmentation and text tower) and the
toy CLIPs' recipes, with the checks of a run's data and per-method values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from synrep.generation.settings import check_data_source
from synrep.settings import ConfigError, section_check, setting
from synrep.training_methods import METHODS
from synrep.training_recipes import recipe


@dataclass
class ToyClipModelConfig:
    """open_clip's CLIP at toy scale (``open_clip.model.CLIP``: a ViT image tower, a text
    transformer with open_clip's BPE tokenizer); saved as an open_clip ``local-dir:`` model."""

    embed_dim: int = setting(64, "Width of the shared embedding")
    patch_size: int = setting(4, "The ViT's patch side in pixels")
    vision_width: int = setting(96, "The ViT's width")
    vision_layers: int = setting(4, "The ViT's layers")
    vision_head_width: int = setting(32, "The ViT's attention head width")
    mlp_ratio: float = setting(2.0, "The ViT's MLP width over its width")
    context_length: int = setting(20, "The toy world's longest caption: 15 BPE tokens with start and end")
    text_width: int = setting(64, "The text transformer's width")
    text_heads: int = setting(2, "The text transformer's attention heads")
    text_layers: int = setting(2, "The text transformer's layers")


@recipe("train_clip", section="toy_clip", run="synrep.learning.toy_clip:run",
        help="train the toy CLIP (open_clip) on the toy world's photos and other domains",
        description="The toy CLIP's training recipe", world=("train", "domains_train"))
@dataclass
class ToyClipConfig:
    """Training recipe of the toy CLIP (``python -m synrep train_clip``): the toy world's real photos
    and its other domains (``toyworld.domains``), with their captions."""

    output_dir: str = setting("${paths.results_dir}/${name}/toy_clip", "Where the CLIP is saved")
    model: ToyClipModelConfig = setting(ToyClipModelConfig, "Its networks")
    epochs: int = setting(40, "Passes over the images", gt=0)
    batch_size: int = setting(256, "Image-caption pairs per step", gt=0)
    lr: float = setting(2e-3, "Peak learning rate", gt=0)
    warmup_steps: int = setting(50, "Steps of linear warm-up")
    weight_decay: float = setting(0.1, "AdamW's weight decay")
    crop_scale: list[float] = setting(
        [0.7, 1.0], "RandomResizedCrop scale and a horizontal flip (open_clip trains with scale (0.9, 1.0)); at 16 px "
        "a smaller crop cuts the object")
    seed: int = setting(0, "Seed of initialisation and training")


@recipe("train_noised_clip", section="toy_noised_clip", run="synrep.learning.toy_clip:run_noised",
        help="train GLIDE's noised CLIP (the toy CLIP's image tower on noised x_t with its timestep)",
        description="The noised CLIP's training recipe", reads=("base_clip",))
@dataclass
class ToyNoisedClipConfig:
    """GLIDE's noised CLIP (``python -m synrep train_noised_clip``): the toy CLIP's image tower
    fine-tuned on noised photos x_t with their timestep t, its text tower frozen
    (diffusion/noised_clip.py; training in learning/toy_clip.py)."""

    output_dir: str = setting("${paths.results_dir}/${name}/toy_noised_clip", "Where the noised CLIP is saved")
    base_clip: str = setting("models/toy_clip", "The CLIP it starts from (an open_clip local-dir folder)")
    generator: str = setting("models/toy_generator", "The pipeline whose noise schedule (ᾱ_t) it learns")
    epochs: int = setting(20, "Passes over the images", gt=0)
    batch_size: int = setting(256, "Image-caption pairs per step", gt=0)
    lr: float = setting(5e-4, "Peak learning rate", gt=0)
    warmup_steps: int = setting(50, "Steps of linear warm-up")
    weight_decay: float = setting(0.1, "AdamW's weight decay")
    seed: int = setting(0, "Seed of initialisation, noise and training")


@dataclass
class AugmentConfig:
    """SimCLR / StableRep augmentation, scaled to the image size in synrep.learning.augment. The
    defaults are the toy's: at 16 px a 0.08-scale crop or a blur leaves no object, and colour is a
    caption attribute, which colour jitter and grayscale erase. The papers' values (the paper_*
    experiments set them): crop_scale [0.08, 1], color_jitter_p 0.8, grayscale_p 0.2, blur_p 0.5."""

    crop_scale: list[float] = setting([0.5, 1.0], "RandomResizedCrop's scale range (min, max)")
    color_jitter: list[float] = setting([0.4, 0.4, 0.4, 0.1], "Colour jitter's brightness, contrast, saturation, hue")
    color_jitter_p: float = setting(0.0, "Probability of colour jitter", ge=0, le=1)
    grayscale_p: float = setting(0.0, "Probability of grayscale", ge=0, le=1)
    blur_p: float = setting(0.0, "Probability of Gaussian blur", ge=0, le=1)
    downsample_p: float = setting(
        0.05, "The official --downsample: with this probability, before the crop, resize the stored image to one of "
        "downsample_sizes and back (official: 64 or 128 px of 256)", ge=0, le=1)
    downsample_sizes: list[float] = setting([0.25, 0.5], "The fractions of its side the image is resized to",
                                            gt=0, lt=1, note="a fraction of the side")


@section_check(AugmentConfig)
def check_crop_scale(aug: DictConfig, key: str, cfg: DictConfig) -> None:
    lo, hi = aug.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"config key '{key}.crop_scale': need 0 < min <= max <= 1, got {[lo, hi]}")


@dataclass
class TextTowerConfig:
    """open_clip text transformer of CLIP and StableRep+ (open_clip's BPE tokenizer)."""

    context_length: int = setting(32, "Longest caption in BPE tokens")
    width: int = setting(64, "The transformer's width")
    heads: int = setting(2, "Its attention heads")
    layers: int = setting(2, "Its layers")
    embed_dim: int = setting(64, "Width of the shared image-text embedding")


@dataclass
class TrainConfig:
    """One training run. A sweep (``sweep``) sets method, data, l, m and seed per run."""

    method: str = setting("stablerep", "stablerep | simclr | clip | stablerep_plus", choices=METHODS)
    data: str = setting("w2", "Training images: \"real\" (the captions' own images) or the name of a source in "
                        "`sources`")
    l: int = setting(4, "Images per caption used (the first l of those stored)", gt=0)
    m: int = setting(4, "Images per caption in a batch row (StableRep, StableRep+)", gt=0)
    seed: int = setting(0, "Seed of initialisation and training")
    output_dir: str = setting("${paths.results_dir}/${name}/runs/single", "The run's folder")
    real_shards: str = setting(
        "${paths.results_dir}/${name}/real_shards", "Shards of the captions' real images (data = real): made by the "
        "real_shards step for the toy world; for real data, an img2dataset output folder")
    encoder: str = setting("toy_cnn", "Any timm model name, e.g. vit_base_patch16_224")
    encoder_kwargs: dict[str, Any] = setting({}, "Keyword arguments of the timm model")
    image_size: int = setting(16, "Side of the training crops in pixels", gt=0)
    head_hidden: int = setting(512, "Hidden width of the projection head")
    head_out: int = setting(128, "Output width of the projection head")
    temperature: float = setting(0.1, "Temperature of the contrastive loss", gt=0)
    text_loss_weight: float = setting(0.5, "StableRep+: L = L_image + text_loss_weight * (L_i2t + L_t2i)")
    epochs: float = setting(
        40.0, "Length, as the official --epochs: passes over the run's captions (each pass shows every caption once: "
        "m images for StableRep, two crops of one image for SimCLR, one image for CLIP). epoch_unit=simclr counts "
        "SimCLR-equivalent epochs instead (every method sees epochs * 2 crops per caption: equal compute whatever "
        "the method and m; the toy default).", gt=0)
    epoch_unit: str = setting("simclr", "What an epoch counts", choices=("pass", "simclr"))
    warmup_epochs: float = setting(4.0, "Linear warm-up from 0 over this many epochs (same unit), then half-cycle "
                                   "cosine to 0")
    batch_images: int = setting(64, "Crops per step, all ranks (n captions x m images x crops per image)", gt=0)
    lr: Optional[float] = setting(
        None, "Peak lr: `lr` when set (the official --lr), else the official rule base_lr * images per step / 256 * "
        "crops per image / 2 (= base_lr * crops per step / 512)", gt=0)
    base_lr: float = setting(1e-2, "The base of the official lr rule", gt=0)
    weight_decay: float = setting(0.1, "AdamW's weight decay")
    betas: list[float] = setting([0.9, 0.98], "AdamW's betas")
    image_budget: Optional[int] = setting(
        None, "The l ablation at a fixed generation budget T: the run trains on the first T // l captions (l = 1: T "
        "captions of one image); its length is counted on all captions, so compute is fixed", gt=0)
    by_method: dict[str, Any] = setting(
        {}, "Per-method values of train.* keys, e.g. {clip: {lr: 5.0e-4, weight_decay: 0.5}}: a method's own "
        "optimiser and length (applied to a run of that method, and part of its identity)")
    precision: str = setting("auto", "auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16",
                             choices=("auto", "fp32", "bf16", "fp16"))
    device: str = setting("auto", "Where training runs (auto: cuda when there is one)", choices=("auto", "cpu", "cuda"))
    workers: int = setting(0, "DataLoader worker processes per rank")
    checkpoint_seconds: float = setting(
        30.0, "Least time between two checkpoints (checkpoints/last.pt, saved at the end of a pass; 0: every pass). "
        "A preempted run loses at most this much work plus a pass; not part of a run's identity. Every pass was 7 s "
        "of a 47 s toy CLIP run (80 passes of 4 steps, a 42 MB state each).", ge=0)
    cache_decoded: bool = setting(True, "Keep decoded images in memory (each loader process): for small sources "
                                  "such as the toy world's")
    augment: AugmentConfig = setting(AugmentConfig, "The augmentation")
    text: TextTowerConfig = setting(TextTowerConfig, "The text tower (CLIP, StableRep+)")


@section_check(TrainConfig)
def check_train(train: DictConfig, key: str, cfg: DictConfig) -> None:
    check_data_source(cfg, train.data, f"{key}.data")
    for method, own in train.by_method.items():
        where = f"{key}.by_method.{method}"
        if method not in METHODS:
            raise ConfigError(f"config key '{where}': {method!r} is not one of {list(METHODS)}")
        if not isinstance(own, DictConfig):
            raise ConfigError(f"config key '{where}': expected a mapping of train.* keys")
        for name in own:
            if name in ("by_method", "method", "output_dir") or name not in train:
                raise ConfigError(f"config key '{where}.{name}': not a train.* key a method can set")
        try:
            OmegaConf.merge(OmegaConf.structured(TrainConfig), own)
        except OmegaConfBaseException as err:
            msg = (getattr(err, "msg", None) or str(err)).splitlines()[0].strip()
            raise ConfigError(f"config key '{where}.{getattr(err, 'full_key', '?')}': {msg}") from None


def method_train(cfg: DictConfig) -> DictConfig:
    """``cfg`` (a copy) with ``train.by_method[train.method]`` merged into ``train.*``."""
    return merge_method_settings(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))


def merge_method_settings(cfg: DictConfig) -> DictConfig:
    """``method_train`` on a copy the caller owns: changes and returns it (a whole config's copy is
    the costly part, and the Snakefile makes one per sweep run at every parse)."""
    own = cfg.train.by_method.get(cfg.train.method)
    if own:
        for key, value in own.items():
            cfg.train[key] = value
    return cfg
