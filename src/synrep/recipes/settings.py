"""Config sections of the toy recipes: the toy generator, its inpainting fine-tune, the toy
unCLIP and StyleGAN-NADA's adaptation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig

from synrep.data.toy_vocabulary import DOMAIN_TEMPLATES
from synrep.settings import ConfigError, section_check, setting
from synrep.training_recipes import recipe

# Regions the inpainting fine-tune regenerates in training (toy_inpaint.mask_mix)
INPAINT_TRAINING_MASKS = ("object", "background", "box", "all")
# NADA's units of the UNet the layer choice ranks, and its losses
LAYER_UNITS = ("module", "block")
# how the layer choice scores a unit: its weights' movement, or its own conditioning code's (NADA's W+)
LAYER_SCORES = ("weights", "codes")
LOSSES = ("directional", "global")
NADA_STARTS = ("noise", "inversion")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class ToyGeneratorModelConfig:
    """The toy generator's networks: a diffusers UNet2DConditionModel, a CLIP-style text encoder
    over the toy world's vocabulary and a DDIM noise schedule (recipes/toy_generator.py)."""

    sample_size: int = setting(16, "Side of the images the UNet makes (the toy world's image_size)")
    block_out_channels: list[int] = setting([32, 64, 128], "The UNet's channels per resolution level")
    layers_per_block: int = setting(1, "The UNet's layers per block")
    attention_head_dim: int = setting(8, "The UNet's attention head width")
    norm_num_groups: int = setting(8, "The UNet's GroupNorm groups")
    text_hidden_size: int = setting(64, "Width of the text encoder (the UNet's cross-attention width)")
    text_layers: int = setting(2, "Layers of the text encoder")
    text_heads: int = setting(2, "Attention heads of the text encoder")
    max_caption_tokens: int = setting(16, "Longest caption in tokens (the text encoder's positions)")
    num_train_timesteps: int = setting(1000, "Diffusion timesteps of the noise schedule")
    beta_schedule: str = setting("squaredcos_cap_v2", "The noise schedule (a diffusers beta_schedule)")
    prediction_type: str = setting("epsilon", "What the UNet predicts: epsilon (GLIDE) | v_prediction",
                                   choices=PREDICTION_TYPES)
    rescale_betas_zero_snr: bool = setting(
        False, "Zero terminal SNR (Lin et al. 2024, diffusers' rescale_betas_zero_snr): the last timestep is pure "
        "noise, so x0-hat is defined there (with v_prediction; snr_gamma null)")


@recipe("train_generator", section="toy_generator", run="synrep.recipes.toy_generator:run",
        help="train the toy text-to-image generator", description="The toy generator's training recipe")
@dataclass
class ToyGeneratorConfig:
    """Training recipe of the toy GLIDE-style generator (``python -m synrep train_generator``)."""

    output_dir: str = setting("${paths.results_dir}/${name}/toy_generator", "Where the trained pipeline is saved")
    model: ToyGeneratorModelConfig = setting(ToyGeneratorModelConfig, "Its networks")
    steps: int = setting(5000, "Optimiser steps", gt=0)
    batch_size: int = setting(32, "Images per step", gt=0)
    lr: float = setting(2e-3, "Peak learning rate")
    warmup_steps: int = setting(100, "Steps of linear warm-up")
    weight_decay: float = setting(0.0, "AdamW's weight decay")
    ema_decay: float = setting(0.995, "Decay of the weights' exponential moving average", ge=0, le=1)
    caption_dropout: float = setting(
        0.15, "GLIDE: replace the caption by the empty caption for this fraction of training examples", ge=0, le=1)
    snr_gamma: Optional[float] = setting(
        5.0, "Min-SNR-gamma loss weighting (Hang et al. 2023); null trains with GLIDE's plain L_simple")
    seed: int = setting(0, "Seed of initialisation and training")
    log_every: int = setting(100, "Steps between two logged losses")


@recipe("train_inpaint", section="toy_inpaint", run="synrep.recipes.toy_inpaint:run",
        help="fine-tune the toy generator into a GLIDE-style inpainting model",
        description="The inpainting fine-tune's recipe")
@dataclass
class ToyInpaintConfig:
    """Fine-tune of the toy generator into GLIDE-style inpainting (``python -m synrep train_inpaint``):
    extra input channels for the mask and the masked image (diffusion/toy/inpaint.py)."""

    output_dir: str = setting("${paths.results_dir}/${name}/toy_inpaint", "Where the inpainting pipeline is saved")
    base: str = setting("models/toy_generator", "The text-to-image pipeline it starts from")
    steps: int = setting(1000, "Optimiser steps", gt=0)
    batch_size: int = setting(32, "Images per step", gt=0)
    lr: float = setting(5e-4, "Peak learning rate", gt=0)
    warmup_steps: int = setting(50, "Steps of linear warm-up")
    weight_decay: float = setting(0.0, "AdamW's weight decay")
    ema_decay: float = setting(0.995, "Decay of the weights' exponential moving average", ge=0, le=1)
    caption_dropout: float = setting(
        0.15, "The empty caption instead for this fraction of examples, kept from the base recipe: classifier-free "
        "guidance still works", ge=0, le=1)
    snr_gamma: Optional[float] = setting(5.0, "Min-SNR-gamma loss weighting; null: plain L_simple")
    mask_mix: dict[str, float] = setting(
        {"object": 0.3, "background": 0.3, "box": 0.3, "all": 0.1},
        "Shares of the regions regenerated in training: the object, the background, GLIDE's random box, the whole "
        "image (text-to-image)")
    dilate: int = setting(1, "Pixels the object's mask grows by (its anti-aliased edge goes with it)")
    seed: int = setting(0, "Seed of initialisation and training")
    log_every: int = setting(100, "Steps between two logged losses")


@section_check(ToyGeneratorConfig)
def check_zero_terminal_snr(section: DictConfig, key: str, cfg: DictConfig) -> None:
    """At zero terminal SNR the last step's noise is the image's whole input: epsilon is then
    undefined as a target, and min-SNR-gamma weights that step 0 (min(SNR, gamma) / (SNR + 1))."""
    m = section.model
    if m.rescale_betas_zero_snr and m.prediction_type != "v_prediction":
        raise ConfigError(f"config key '{key}.model.rescale_betas_zero_snr': zero terminal SNR needs "
                          f"{key}.model.prediction_type v_prediction, not {m.prediction_type!r}")
    if m.rescale_betas_zero_snr and section.snr_gamma is not None:
        raise ConfigError(f"config key '{key}.snr_gamma': min-SNR weighting gives the zero-SNR step weight 0; "
                          f"set it to null with {key}.model.rescale_betas_zero_snr")


@section_check(ToyInpaintConfig)
def check_mask_mix(section: DictConfig, key: str, cfg: DictConfig) -> None:
    mix = section.mask_mix
    unknown = set(mix) - set(INPAINT_TRAINING_MASKS)
    if unknown or any(v < 0 for v in mix.values()) or abs(sum(mix.values()) - 1) > 1e-6:
        raise ConfigError(f"config key '{key}.mask_mix': shares of {list(INPAINT_TRAINING_MASKS)} that sum to "
                          f"1, got {dict(mix)}")


@recipe("train_unclip", section="toy_unclip", run="synrep.recipes.toy_unclip:run",
        help="train the toy DALL-E 2 / unCLIP prior and decoder over the toy CLIP's embeddings",
        description="The toy unCLIP's training recipe", reads=("generator", "clip_model"))
@dataclass
class ToyUnclipConfig:
    """Training recipe of the toy DALL-E 2 / unCLIP (``python -m synrep train_unclip``): a diffusion
    prior from the toy CLIP's text outputs to its image embedding, and a decoder fine-tuned from the
    toy generator to invert that embedding (diffusion/toy/unclip.py, recipes/toy_unclip.py)."""

    output_dir: str = setting("${paths.results_dir}/${name}/toy_unclip", "Where the unCLIP pipeline is saved")
    generator: str = setting("models/toy_generator", "The toy generator (ToyGlidePipeline folder) the decoder "
                             "starts from")
    clip_model: str = setting("models/toy_clip", "The CLIP (open_clip local-dir folder) whose embeddings it works in")
    prior_layers: int = setting(4, "The prior, a PriorTransformer predicting the clean (normalised) image "
                                "embedding: its layers", gt=0)
    prior_heads: int = setting(2, "The prior's attention heads", gt=0)
    prior_head_dim: int = setting(32, "The prior's attention head width", gt=0)
    prior_steps: int = setting(1500, "The prior's optimiser steps", gt=0)
    prior_batch_size: int = setting(128, "The prior's captions per step", gt=0)
    prior_lr: float = setting(1e-3, "The prior's learning rate", gt=0)
    prior_caption_dropout: float = setting(0.1, "The empty caption instead, for the prior's guidance", ge=0, le=1)
    decoder_steps: int = setting(
        1500, "The decoder (the toy generator plus unCLIP's text_proj: image embedding -> extra context tokens "
        "and an additive embedding, fine-tuned together): its optimiser steps", gt=0)
    decoder_batch_size: int = setting(32, "The decoder's images per step", gt=0)
    decoder_lr: float = setting(5e-4, "The decoder's learning rate", gt=0)
    decoder_ema_decay: float = setting(0.995, "Decay of the decoder weights' exponential moving average",
                                       ge=0, le=1)
    extra_context_tokens: int = setting(4, "Context tokens the image embedding becomes", gt=0)
    embedding_dropout: float = setting(
        0.1, "unCLIP drops the image embedding 10% (the null embedding instead) and the caption 50% (the empty "
        "caption instead), independently: guidance and variations work by dropping them", ge=0, le=1)
    caption_dropout: float = setting(0.5, "The decoder's share of examples with the empty caption", ge=0, le=1)
    snr_gamma: Optional[float] = setting(5.0, "Min-SNR-gamma weighting of the decoder's loss, as the toy generator's")
    warmup_steps: int = setting(50, "Steps of linear warm-up", ge=0)
    seed: int = setting(0, "Seed of initialisation and training")
    log_every: int = setting(50, "Steps between two logged losses", gt=0)


@recipe("train_nada", section="nada", run="synrep.recipes.nada:run",
        help="StyleGAN-NADA: adapt the toy generator to another domain from text alone (directional CLIP loss)",
        description="StyleGAN-NADA's adaptation and its measurement", rule=False)
@dataclass
class NadaConfig:
    """StyleGAN-NADA's text-only domain adaptation of the toy generator (``python -m synrep train_nada``,
    recipes/nada.py), in DiffusionCLIP's form: a trained copy of the UNet is fine-tuned through a
    short DDIM chain so that, from the same noise and caption, its images differ from the frozen copy's
    along the toy CLIP's text direction source -> target. Measured by ``python -m synrep nada_quality``
    (evaluation/nada_quality.py) with a domain classifier (``python -m synrep domain_classifier``)."""

    output_dir: str = setting(
        "${paths.results_dir}/${name}/nada", "generator/ (the adapted ToyGlidePipeline, a source's `generator:`), "
        "snapshots/ (the trained layers every eval_every steps) and quality/ (the measurement)")
    generator: str = setting("models/toy_generator", "The ToyGlidePipeline folder adapted (both copies start from it)")
    clip_models: list[str] = setting(
        ["models/toy_clip"], "The CLIPs of the loss (open_clip local-dir folders), as NADA's --clip_models: the loss "
        "and the layer choice sum each CLIP's, weighted. The first also measures cos(dI, dT) in nada_quality")
    clip_model_weights: list[float] = setting([1.0], "Their weights, as NADA's --clip_model_weights", gt=0)
    source: str = setting(
        "photo", "Source domain: photo or one of toyworld.domains' names (drawing | negative | pixelated); the text "
        "direction uses the world's own wording for each, which the toy CLIP learnt")
    target: str = setting("drawing", "Target domain, named as the source domain")
    source_templates: Optional[list[str]] = setting(
        None, "Prompt templates with {x} for the object (\"a red circle\"); null: the world's wording of the domain")
    target_templates: Optional[list[str]] = setting(None, "The same for the target domain")
    steps: int = setting(40, "Optimiser steps (280: about 7 minutes on one CPU thread)", gt=0)
    batch_size: int = setting(4, "Noises (and captions) per step", gt=0)
    lr: float = setting(2e-4, "Adam's learning rate, betas (0, 0.99) as NADA's generator")
    guidance_scale: float = setting(2.0, "Classifier-free guidance in the chain (as a w2 source samples)", ge=1)
    ddim_steps: int = setting(4, "Deterministic DDIM steps of the chain (999, 749, 499, 249 at 4)", gt=0)
    min_alpha_bar: float = setting(
        0.078, "The adapted UNet takes the steps where alpha_bar_t >= this, the frozen one the steps above without "
        "gradient (training, and every sampler of the saved pipeline). At t = 999 alpha_bar is 2.4e-9 and x0-hat "
        "undefined; 0.078 is DiffusionCLIP's t0 = 500 on its linear schedule (toy t 818)", ge=0, lt=1)
    start: str = setting(
        "noise", "Where the trained chain starts: noise (NADA: fresh Gaussian noise through the frozen UNet's steps "
        "above min_alpha_bar) | inversion (DiffusionCLIP: real photos of the world's train split, DDIM-inverted to "
        "the first adapted step with their captions)", choices=NADA_STARTS)
    inversion_images: int = setting(50, "start: inversion: the real photos inverted once, before training "
                                    "(DiffusionCLIP's n_precomp_img)", gt=0)
    inversion_steps: int = setting(40, "start: inversion: DDIM inversion steps from t = 0 to the first adapted "
                                   "step (DiffusionCLIP's n_inv_step)", gt=0)
    loss: str = setting("directional", "directional (NADA) | global: 1 - cos(E_I(G), E_T(target)), its ablation",
                        choices=LOSSES)
    l1_weight: float = setting(0.0, "DiffusionCLIP's content term: L1 of trained vs frozen images (0: off)", ge=0)
    layer_unit: str = setting(
        "module", "NADA's adaptive layer choice, by units of the UNet: module (each resnet / attention / resampler) "
        "| block (down, mid, up blocks)", choices=LAYER_UNITS)
    k: int = setting(
        6, "Units trained, all else frozen: the top k by how far they move under select_iters SGD steps of the "
        "global CLIP loss toward the target text", gt=0)
    layer_score: str = setting(
        "weights", "What the layer choice's SGD steps move and score per unit: weights (its relative movement "
        "|dtheta| / |theta|) | codes (NADA's own score: each resnet's own copy of the timestep-and-caption embedding "
        "it projects to a per-channel shift, as a StyleGAN layer's W+ code, each attention's copy of the caption "
        "states; the mean |delta| of the copy; resamplers read no code and are never chosen; layer_unit module only)",
        choices=LAYER_SCORES)
    select_iters: int = setting(1, "NADA's auto_layer_iters", gt=0)
    select_lr: float = setting(0.01, "SGD step of the layer choice, as NADA's latent-code step")
    reselect_every: int = setting(0, "Choose the layers again every N steps (NADA: every step, 1); 0: once", ge=0)
    eval_every: int = setting(20, "Snapshot of the trained layers every N steps (the measured curve)", gt=0)
    eval_captions: int = setting(8, "The measurement's fixed captions, sampled with generation.sampler and "
                                 "generation.steps", gt=0)
    eval_images_per_caption: int = setting(4, "The measurement's fixed noises per caption", gt=0)
    domain_classifier: str = setting(
        "${paths.results_dir}/${name}/domain_classifier", "Photo vs other-domain classifier "
        "(evaluation/domain_classifier.py): loaded from this folder when its recipe matches, else trained and "
        "saved there")
    classifier_epochs: int = setting(2, "Training epochs of the domain classifier")
    target_world: str = setting(
        "${paths.results_dir}/${name}/nada/target_world", "The target domain rendered as a toy world of real images "
        "(train / val / test): StableRep's evaluation set for the domain-shift gain (eval.root: "
        "${nada.target_world} in toy_adaptation)")
    seed: int = setting(0, "Seed of the adaptation")
    enabled: bool = setting(True, "Part of `snakemake`'s default target: adaptation, measurement (experiment "
                            "toy_adaptation turns it on)")


@section_check(NadaConfig)
def check_domains_and_clips(n: DictConfig, key: str, cfg: DictConfig) -> None:
    """The domains are the world's (photo or a wording the toy CLIP learnt), one weight per CLIP,
    and each prompt template has a place for the object."""
    known = ["photo", *DOMAIN_TEMPLATES]
    for name in ("source", "target"):
        if n[name] not in known:
            raise ConfigError(f"config key '{key}.{name}': unknown domain {n[name]!r}; known: {', '.join(known)}")
    if n.source == n.target:
        raise ConfigError(f"config key '{key}.target': the same domain as {key}.source ({n.target!r})")
    # (an unknown name in toyworld.domains is that key's error, reported by its own check)
    if n.enabled and set(cfg.toyworld.domains) <= set(DOMAIN_TEMPLATES) and n.target not in cfg.toyworld.domains:
        raise ConfigError(f"config key '{key}.target': {n.target!r} is not one of toyworld.domains "
                          f"{list(cfg.toyworld.domains)}, the classes of the domain classifier that measures NADA")
    if not n.clip_models or len(n.clip_models) != len(n.clip_model_weights):
        raise ConfigError(f"config key '{key}.clip_model_weights': one weight per CLIP of {key}.clip_models "
                          f"({len(n.clip_models)} CLIPs, {len(n.clip_model_weights)} weights)")
    if n.layer_score == "codes" and n.layer_unit != "module":
        raise ConfigError(f"config key '{key}.layer_score': codes scores each resnet and attention by its own "
                          f"conditioning code; {key}.layer_unit must be module, not {n.layer_unit!r}")
    for name in ("source_templates", "target_templates"):
        for i, template in enumerate(n[name] or []):
            if "{x}" not in template:
                raise ConfigError(f"config key '{key}.{name}[{i}]': {template!r} has no {{x}} for the object")
