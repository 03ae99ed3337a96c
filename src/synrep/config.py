"""Structured configuration: one dataclass tree, defaults in ``config/config.yaml``.

Loading merges, in order: the dataclass defaults, ``config/config.yaml``, an optional
``config/experiment/<name>.yaml`` and ``key=value`` overrides. Unknown keys, wrong types and
values outside their allowed set fail at load time with the key's dotted path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from synrep.fileio import write_text
from synrep.source_modes import MODES as SOURCE_MODES
from synrep.source_modes import owners
from synrep.training_methods import METHODS


def config_dir() -> Path:
    """``config/`` of the working tree synrep runs in (``SYNREP_CONFIG_DIR`` overrides it).

    Read from the current directory, not from where the package was installed: a non-editable
    install and a venv shared by two clones each read the config of the clone they run in.
    """
    return Path(os.environ.get("SYNREP_CONFIG_DIR") or Path.cwd() / "config")


class InputError(ValueError):
    """What the user gave cannot be used: an input file malformed, truncated or of another run, a
    model or data set that does not fit the config. The command line prints it as one line; any
    other exception is a bug and keeps its traceback."""


class ConfigError(InputError):
    """A configuration key is unknown, has the wrong type or a value outside its allowed set."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class PathsConfig:
    data_dir: str = "data"
    results_dir: str = "results"
    # Empty means sqlite:///<absolute results_dir>/mlflow.db
    mlflow_uri: str = ""


@dataclass
class ToyWorldConfig:
    seed: int = 0
    image_size: int = 16
    n_train: int = 6000
    n_val: int = 1000
    n_test: int = 2000
    shapes: list[str] = field(
        default_factory=lambda: ["circle", "ring", "square", "frame", "triangle", "cross"]
    )
    colours: list[str] = field(
        default_factory=lambda: ["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"]
    )
    # Distractor specks per image: clutter that no caption mentions.
    clutter_max: int = 2
    max_rotation_deg: float = 30.0
    # Fractions of extra rows in the raw caption file that repeat an earlier caption, exactly or
    # with case / whitespace / Unicode changes.
    exact_duplicate_rate: float = 0.08
    near_duplicate_rate: float = 0.08
    # Other domains of the same objects (drawing | negative | pixelated), with captions that name
    # them: the toy CLIP's corpus beside the photos, never the generator's (toyworld.py)
    domains: list[str] = field(default_factory=lambda: ["drawing", "negative", "pixelated"])
    n_domain_train: int = 1000  # images per domain
    n_domain_test: int = 300


@dataclass
class ConceptsConfig:
    """``captions.format: concepts``: captions synthesised by templates from a concept list
    (SynCLR's route; data/concepts.py), deduplicated like any caption file."""

    # A YAML file: `concepts: {slot: [concept, ...]}` (a concept: a word, or a list of its
    # paraphrases) and `templates: ["a photo of a {slot} ...", ...]`; null: the toy world's own
    # concepts (shapes, colours, sizes, backgrounds) in its caption templates
    file: Optional[str] = None
    # Distinct captions to make; null: as many as the run's caption set (the `captions` step's)
    count: Optional[int] = None
    seed: int = 0
    # Toy world only: add its other domains (toyworld.domains) as a concept slot. Off by default:
    # the toy generator learnt photo captions only, and reads a domain's words as unknown tokens
    domains: bool = False


@dataclass
class CaptionSkewRule:
    """One rule of a skewed caption set (``captions.skew``): of the captions it matches, keep a fraction."""

    # What a caption must be to match (every entry): a toy world attribute (shape, colour, size,
    # background) and a value or list of values, read from the caption's own image (its toy://
    # url); or `caption`: a regular expression searched in the caption's text (any caption file)
    match: dict[str, Any] = field(default_factory=dict)
    keep: float = 1.0  # the fraction of the matching captions kept, in [0, 1]


@dataclass
class CaptionsConfig:
    # toyworld files are written in the cc3m format
    format: str = "cc3m"  # cc3m | cc12m | redcaps | laion | table | concepts
    path: str = "${paths.data_dir}/toyworld/captions_raw.tsv"
    # Column holding the caption, for format=table (csv/tsv/parquet/jsonl)
    column: str = "caption"
    max_length: int = 500
    # Keep only the first N deduplicated captions (null keeps all)
    limit: Optional[int] = None
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)  # format concepts
    # A deliberately skewed caption set: rules applied after the dedup and before the limit, e.g.
    # [{match: {shape: ring, background: light}, keep: 0.1}] (rings mostly on dark backgrounds).
    # A caption several rules match is kept with the product of their fractions; [] (off): all kept
    skew: list[CaptionSkewRule] = field(default_factory=list)
    skew_seed: int = 0  # which captions a fraction keeps (one uniform draw per caption)
    # Attribute pairs no training caption may show together (toy world), e.g. [{colour: red, shape:
    # ring}]: every caption whose image has both is removed, and runs with a text tower report
    # zero-shot accuracy on the test images of these pairs against the seen ones; [] (off)
    held_out: list[dict[str, str]] = field(default_factory=list)


@dataclass
class ToyGeneratorModelConfig:
    sample_size: int = 16
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_caption_tokens: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"


@dataclass
class ToyGeneratorConfig:
    """Training recipe of the toy GLIDE-style generator (``python -m synrep train_generator``)."""

    output_dir: str = "${paths.results_dir}/${name}/toy_generator"
    model: ToyGeneratorModelConfig = field(default_factory=ToyGeneratorModelConfig)
    steps: int = 5000
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    # GLIDE: replace the caption by the empty caption for this fraction of training examples
    caption_dropout: float = 0.15
    # Min-SNR-gamma loss weighting (Hang et al. 2023); null trains with GLIDE's plain L_simple
    snr_gamma: Optional[float] = 5.0
    seed: int = 0
    log_every: int = 100


@dataclass
class ToyClipModelConfig:
    """open_clip's CLIP at toy scale (``open_clip.model.CLIP``: a ViT image tower, a text
    transformer with open_clip's BPE tokenizer); saved as an open_clip ``local-dir:`` model."""

    embed_dim: int = 64
    patch_size: int = 4
    vision_width: int = 96
    vision_layers: int = 4
    vision_head_width: int = 32
    mlp_ratio: float = 2.0
    context_length: int = 20  # the toy world's longest caption: 15 BPE tokens with start and end
    text_width: int = 64
    text_heads: int = 2
    text_layers: int = 2


@dataclass
class ToyClipConfig:
    """Training recipe of the toy CLIP (``python -m synrep train_clip``): the toy world's real photos
    and its other domains (``toyworld.domains``), with their captions."""

    output_dir: str = "${paths.results_dir}/${name}/toy_clip"
    model: ToyClipModelConfig = field(default_factory=ToyClipModelConfig)
    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    # RandomResizedCrop scale and a horizontal flip (open_clip trains with scale (0.9, 1.0)); at
    # 16 px a smaller crop cuts the object
    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])
    seed: int = 0


@dataclass
class ToyNoisedClipConfig:
    """GLIDE's noised CLIP (``python -m synrep train_noised_clip``): the toy CLIP's image tower
    fine-tuned on noised photos x_t with their timestep t, its text tower frozen
    (generation/noised_clip.py; training in learning/toy_clip.py)."""

    output_dir: str = "${paths.results_dir}/${name}/toy_noised_clip"
    base_clip: str = "models/toy_clip"  # the CLIP it starts from (an open_clip local-dir folder)
    generator: str = "models/toy_generator"  # the pipeline whose noise schedule (ᾱ_t) it learns
    epochs: int = 20
    batch_size: int = 256
    lr: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    seed: int = 0


@dataclass
class ToyInpaintConfig:
    """Fine-tune of the toy generator into GLIDE-style inpainting (``python -m synrep train_inpaint``):
    extra input channels for the mask and the masked image (generation/toy/inpaint.py)."""

    output_dir: str = "${paths.results_dir}/${name}/toy_inpaint"
    base: str = "models/toy_generator"  # the text-to-image pipeline it starts from
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    caption_dropout: float = 0.15  # kept from the base recipe: classifier-free guidance still works
    snr_gamma: Optional[float] = 5.0
    # Shares of the regions regenerated in training: the object, the background, GLIDE's random
    # box, the whole image (text-to-image)
    mask_mix: dict[str, float] = field(default_factory=lambda: {"object": 0.3, "background": 0.3, "box": 0.3,
                                                                "all": 0.1})
    dilate: int = 1  # pixels the object's mask grows by (its anti-aliased edge goes with it)
    seed: int = 0
    log_every: int = 100


@dataclass
class ToyUnclipConfig:
    """Training recipe of the toy DALL-E 2 / unCLIP (``python -m synrep train_unclip``): a diffusion
    prior from the toy CLIP's text outputs to its image embedding, and a decoder fine-tuned from the
    toy generator to invert that embedding (generation/toy/unclip.py, generation/toy/train_unclip.py)."""

    output_dir: str = "${paths.results_dir}/${name}/toy_unclip"
    generator: str = "models/toy_generator"  # the toy generator (ToyGlidePipeline folder) the decoder starts from
    clip_model: str = "models/toy_clip"  # the CLIP (open_clip local-dir folder) whose embeddings it works in
    # The prior: a PriorTransformer predicting the clean (normalised) image embedding
    prior_layers: int = 4
    prior_heads: int = 2
    prior_head_dim: int = 32
    prior_steps: int = 1500
    prior_batch_size: int = 128
    prior_lr: float = 1e-3
    prior_caption_dropout: float = 0.1  # the empty caption instead, for the prior's guidance
    # The decoder: the toy generator plus unCLIP's text_proj (image embedding -> extra context tokens
    # and an additive embedding), fine-tuned together
    decoder_steps: int = 1500
    decoder_batch_size: int = 32
    decoder_lr: float = 5e-4
    decoder_ema_decay: float = 0.995
    extra_context_tokens: int = 4
    # unCLIP drops the image embedding 10% (the null embedding instead) and the caption 50% (the
    # empty caption instead), independently: guidance and variations work by dropping them
    embedding_dropout: float = 0.1
    caption_dropout: float = 0.5
    snr_gamma: Optional[float] = 5.0  # min-SNR-gamma weighting of the decoder's loss, as the toy generator's
    warmup_steps: int = 50
    seed: int = 0
    log_every: int = 50


@dataclass
class DreamBoothQualityConfig:
    """DreamBooth's own metrics (evaluation/dreambooth_quality.py, ``python -m synrep dreambooth_quality``),
    for the base generator and each fine-tuned model, over sampling seeds: subject fidelity (toy CLIP
    image embeddings of "<instance_prompt>" samples against held-out real subject images), prompt
    fidelity (the judge reads the background and size the prompt asks for), language drift (the
    judge's ring accuracy on class-prompt samples) and class diversity."""

    output_dir: str = "${paths.results_dir}/${name}/dreambooth_quality"
    # Fine-tuned models (train_dreambooth output folders); each is labelled by its own saved config
    # (with_prior_preservation), so the ablation is these two runs
    models: list[str] = field(default_factory=lambda: ["${paths.results_dir}/${name}/dreambooth/prior",
                                                       "${paths.results_dir}/${name}/dreambooth/no_prior"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # sampling seeds: the 95% intervals
    images: int = 32  # samples per prompt set (instance, background, size, class) and seed
    reference_images: int = 64  # held-out real subject images, and as many near-miss rings
    clip_model: str = "models/toy_clip"  # the image tower that scores subject fidelity
    # A StableRep run folder (model.pt + config.yaml) whose encoder also scores subject fidelity; null: none
    encoder: Optional[str] = None
    seed: int = 1234


@dataclass
class SubjectProbeConfig:
    """Does StableRep tell the subject from other rings better once the subject's DreamBooth images are
    in its data? (experiments/subject_probe.py, ``python -m synrep subject_probe``): a 4-way linear probe
    (subject, no notch, one tone, plain ring) on real renders, for the sweep's runs of ``method`` on
    each of ``sources``."""

    sources: list[str] = field(default_factory=list)  # e.g. [w2, w2_subject, w2_class]; []: no probe
    method: str = "stablerep"
    images: int = 64  # real renders per class and split (train, val, test)
    seed: int = 4321
    output_dir: str = "${paths.results_dir}/${name}/subject_probe"


@dataclass
class DreamBoothConfig:
    """DreamBooth (Ruiz et al. 2023; generation/dreambooth.py, ``python -m synrep train_dreambooth``):
    fine-tune a text-to-image pipeline (the toy generator or Stable Diffusion) on a few images of one
    subject, the toy world's notched two-tone ring, under "<instance_prompt>", optionally with the
    class-specific prior-preservation loss. The options named as in diffusers'
    examples/dreambooth/train_dreambooth.py mean what they mean there; the defaults are the toy's."""

    generator: str = "models/toy_generator"  # the pipeline fine-tuned (folder or hub id)
    output_dir: str = "${paths.results_dir}/${name}/dreambooth/prior"
    # Class images generated by the frozen generator, cached per (prompt, seed, model, sampler) in a
    # sub-folder with their provenance; a second run reuses them
    class_data_dir: str = "${paths.results_dir}/${name}/dreambooth/class_images"
    # "sks": a word the toy tokenizer does not know, so it maps to [UNK], an id that no training
    # caption holds (its embedding is still the random initial one: no prior); the same role as
    # diffusers' "sks" (a rare token) in Stable Diffusion's vocabulary
    instance_prompt: str = "a sks ring"
    class_prompt: str = "a ring"
    with_prior_preservation: bool = True  # diffusers' default is false; the paper's method is true
    prior_loss_weight: float = 1.0  # lambda
    num_class_images: int = 100  # at least this many class images (the cache is topped up)
    # diffusers: 5e-6 for SD's 860M-parameter UNet; the toy UNet (a few M) needs a larger step
    learning_rate: float = 1e-4
    max_train_steps: int = 400
    train_batch_size: int = 4  # instance images per step (as many class images join them)
    train_text_encoder: bool = False
    sample_batch_size: int = 50  # class images per sampling call (diffusers: 4, sized for a GPU)
    lr_scheduler: str = "constant"  # linear | cosine | cosine_with_restarts | polynomial | constant | constant_with_warmup
    lr_warmup_steps: int = 0  # diffusers' argparse default is 500; its documented runs use 0
    adam_weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    seed: int = 0
    # Not diffusers options: the toy subject, how class images are sampled, logging
    num_instance_images: int = 5  # instance images of the subject (the paper: 3-5)
    # diffusers' --instance_data_dir: a folder of real photos of the subject instead of the toy one
    instance_data_dir: Optional[str] = None
    subject_seed: int = 0  # which renders of the subject are the instance images
    sampler: Optional[str] = None  # null: generation.sampler
    steps: Optional[int] = None  # sampling steps; null: generation.steps
    # Classifier-free guidance of class and evaluation samples. "a ring" names no colour, unlike
    # every training caption: at w = 2 the judge reads a ring in a third of the toy generator's
    # samples (frames the rest), at w = 4 in about half
    guidance_scale: float = 4.0
    log_every: int = 50
    quality: DreamBoothQualityConfig = field(default_factory=DreamBoothQualityConfig)
    probe: SubjectProbeConfig = field(default_factory=SubjectProbeConfig)
    # Part of `snakemake`'s default target: both fine-tunes (with and without prior preservation)
    # and their quality table (experiment toy_adaptation turns it on)
    enabled: bool = False


@dataclass
class NadaConfig:
    """StyleGAN-NADA's text-only domain adaptation of the toy generator (``python -m synrep train_nada``,
    generation/toy/nada.py), in DiffusionCLIP's form: a trained copy of the UNet is fine-tuned through a
    short DDIM chain so that, from the same noise and caption, its images differ from the frozen copy's
    along the toy CLIP's text direction source -> target. Measured by ``python -m synrep nada_quality``
    (evaluation/nada_quality.py) with a domain classifier (``python -m synrep domain_classifier``)."""

    # generator/ (the adapted ToyGlidePipeline, a source's `generator:`), snapshots/ (the trained
    # layers every eval_every steps) and quality/ (the measurement)
    output_dir: str = "${paths.results_dir}/${name}/nada"
    generator: str = "models/toy_generator"  # the ToyGlidePipeline folder adapted (both copies start from it)
    # The CLIPs of the loss (open_clip local-dir folders) and their weights, as NADA's --clip_models and
    # --clip_model_weights: the loss and the layer choice sum each CLIP's, weighted. The first also
    # measures cos(dI, dT) in nada_quality
    clip_models: list[str] = field(default_factory=lambda: ["models/toy_clip"])
    clip_model_weights: list[float] = field(default_factory=lambda: [1.0])
    # Domains: photo or one of toyworld.domains' names (drawing | negative | pixelated); the text
    # direction uses the world's own wording for each, which the toy CLIP learnt
    source: str = "photo"
    target: str = "drawing"
    # Prompt templates with {x} for the object ("a red circle"); null: the world's wording of the domain
    source_templates: Optional[list[str]] = None
    target_templates: Optional[list[str]] = None
    steps: int = 280  # optimiser steps (about 7 minutes on one CPU thread)
    batch_size: int = 4  # noises (and captions) per step
    lr: float = 2e-4  # Adam, betas (0, 0.99) as NADA's generator
    guidance_scale: float = 2.0  # classifier-free guidance in the chain (as a w2 source samples)
    ddim_steps: int = 4  # deterministic DDIM steps of the chain (999, 749, 499, 249 at 4)
    # The adapted UNet takes the steps where alpha_bar_t >= this, the frozen one the steps above
    # without gradient (training, and every sampler of the saved pipeline). At t = 999 alpha_bar is
    # 2.4e-9 and x0-hat undefined; 0.078 is DiffusionCLIP's t0 = 500 on its linear schedule (toy t 818)
    min_alpha_bar: float = 0.078
    loss: str = "directional"  # directional (NADA) | global: 1 - cos(E_I(G), E_T(target)), its ablation
    l1_weight: float = 0.0  # DiffusionCLIP's content term: L1 of trained vs frozen images (0: off)
    # NADA's adaptive layer choice: units of the UNet ranked by how far they move under select_iters
    # SGD steps of the global CLIP loss toward the target text; the top k are trained, all else frozen
    layer_unit: str = "module"  # module (each resnet / attention / resampler) | block (down, mid, up blocks)
    k: int = 6
    select_iters: int = 1  # NADA's auto_layer_iters
    select_lr: float = 0.01  # SGD, as NADA's latent-code step
    reselect_every: int = 0  # choose the layers again every N steps (NADA: every step, 1); 0: once
    eval_every: int = 20  # snapshot of the trained layers every N steps (the measured curve)
    # The measurement: fixed noises and captions, sampled with generation.sampler and generation.steps
    eval_captions: int = 16
    eval_images_per_caption: int = 4
    # Photo vs other-domain classifier (evaluation/domain_classifier.py): loaded from this folder when
    # its recipe matches, else trained and saved there
    domain_classifier: str = "${paths.results_dir}/${name}/domain_classifier"
    classifier_epochs: int = 6
    # The target domain rendered as a toy world of real images (train / val / test): StableRep's
    # evaluation set for the domain-shift gain (eval.root: ${nada.target_world} in toy_adaptation)
    target_world: str = "${paths.results_dir}/${name}/nada/target_world"
    seed: int = 0
    # Part of `snakemake`'s default target: adaptation, measurement (experiment toy_adaptation turns it on)
    enabled: bool = False


@dataclass
class GenerationConfig:
    """Defaults of every source (``sources.<name>`` fields left null) and how generation runs."""

    # A diffusers pipeline folder, a hub id, or the shipped toy generator
    model: str = "models/toy_generator"
    # The CLIP that guides sources of guidance.kind clip (an open_clip local-dir folder)
    clip_model: str = "models/toy_clip"
    sampler: str = "ddim"  # ddim | ddpm | dpmsolver | euler | pndm
    steps: int = 20
    eta: float = 0.0
    guidance_rescale: float = 0.0
    images_per_caption: int = 4  # l stored per caption
    # Generation resolution (null: the model's native size) and the size images are saved at
    resolution: Optional[int] = None
    save_size: Optional[int] = None
    seed: int = 0
    captions_per_shard: int = 64
    # torch threads of a generation (and sample-quality) job; null: `threads`. On a 2-core CPU the
    # toy generator makes 1.3x the images/s as two 1-thread jobs side by side, with identical images
    threads: Optional[int] = None
    batch_size: int = 128
    dtype: str = "float32"  # float32 | float16 | bfloat16
    device: str = "auto"  # auto | cpu | cuda
    image_format: str = "png"  # png | jpg
    # A shard job saves its finished captions every this many images (rounded up to whole sampling
    # batches) as part files, so that a killed or requeued job resumes there; smaller shards are
    # written in one go. The images are the same either way.
    resume_images: int = 512
    # Images in the per-w sample grid logged to MLflow
    grid_captions: int = 8


@dataclass
class GuidanceConfig:
    """How a source guides its sampler. ``cfg``: classifier-free guidance at scale ``w``.
    ``clip``: the same, plus GLIDE's CLIP guidance at ``clip_scale`` (generation/clip_guidance.py)."""

    kind: str = "cfg"  # cfg | clip
    # A number (e.g. 2), or a set such as [2, 3]: each image then draws its scale from the set
    # (seeded; recorded in its provenance) and its noise seed depends on the drawn scale.
    # With kind clip, w = 1 is CLIP guidance alone.
    w: Any = 2.0
    # kind clip: the gradient's scale s, the guiding CLIP (an open_clip local-dir folder; null:
    # generation.clip_model) and the number of random cut-outs it scores (0: the whole image)
    clip_scale: float = 0.0
    clip_model: Optional[str] = None
    cutouts: int = 0
    # kind clip with a plain CLIP (on x̂0): steps with alpha_bar_t below this are not CLIP-guided
    # (x̂0 is undefined there; benchmarks/clip_guidance_steps.py); 0: guide every step
    min_alpha_bar: float = 1.0e-3


@dataclass
class InpaintSourceConfig:
    """Mode ``inpaint``: each caption's real image with a region regenerated under the caption
    (GLIDE's text-guided inpainting; generation/toy/inpaint.py)."""

    region: str = "background"  # object | background: what is regenerated (the rest is kept)
    dilate: int = 1  # pixels the object's mask grows by
    # Image 0 of a caption is its real image and images 1..l-1 are inpainted variants of it, so that
    # StableRep takes the real image and its variants as one caption's positives
    keep_real: bool = True


@dataclass
class AlignmentFilterConfig:
    """The alignment filter of a source (generation/alignment_filter.py): each image scored against
    its caption by a CLIP (CLIPScore, 100 * max(cos, 0)); the index keeps each caption's best."""

    clip_model: str = "models/toy_clip"  # an open_clip local-dir folder (e.g. models/toy_clip)
    # Keep this fraction of each caption's images, the best by score (rounded up); or, instead,
    # every image scoring at least min_score (0 to 100). Exactly one of the two is set
    keep_fraction: Optional[float] = None
    min_score: Optional[float] = None
    # At least this many images of each caption are kept (the best), whatever their scores: the
    # multi-positive loss needs two or more images per caption
    min_images: int = 2


@dataclass
class UnclipSourceConfig:
    """Modes ``unclip`` (caption -> prior -> CLIP image embedding -> decoder) and ``variation`` (a
    caption's real image -> its CLIP image embedding -> l decodings), DALL-E 2's
    (generation/toy/unclip.py). The source's ``generator`` is an unCLIP pipeline (models/toy_unclip,
    or diffusers' UnCLIPPipeline / UnCLIPImageVariationPipeline folders)."""

    # The CLIP whose embeddings the toy unCLIP works in (the one it was trained with); null:
    # generation.clip_model. diffusers' unCLIP pipelines carry their own.
    clip_model: Optional[str] = None
    prior_steps: int = 25
    prior_w: float = 1.0  # the prior's classifier-free guidance scale
    # unclip: prior samples drawn per image, the one with the highest z_i . z_t kept (DALL-E 2 draws 2)
    prior_samples: int = 1
    # unclip: false decodes the caption's CLIP *text* embedding, no prior (DALL-E 2's ablation)
    use_prior: bool = True
    # variation: the decoder also sees the caption (DALL-E 2's variations see none)
    caption: bool = False


@dataclass
class SourceConfig:
    """A named synthetic data source: how its images are made. Null fields take ``generation.*``.
    Mode ``union`` makes nothing: it is the listed sources' shards read as one data set."""

    generator: Optional[str] = None  # diffusers pipeline folder or hub id; null: generation.model
    mode: str = "text2img"  # text2img | inpaint | unclip | variation | union (synrep/source_modes.py)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    inpaint: InpaintSourceConfig = field(default_factory=InpaintSourceConfig)  # mode inpaint
    unclip: UnclipSourceConfig = field(default_factory=UnclipSourceConfig)  # modes unclip and variation
    sampler: Optional[str] = None
    steps: Optional[int] = None
    l: Optional[int] = None  # images per caption; null: generation.images_per_caption
    seed: Optional[int] = None
    # Only the first N captions of the caption set (a small source, e.g. the default run's preview of
    # a mode); null: every caption
    captions: Optional[int] = None
    # Prompts of its own instead of the caption set: a text file, one prompt per line (e.g. a
    # DreamBooth subject in new contexts, "a sks ring on a dark background"); null: the caption set
    prompts: Optional[str] = None
    # Mode union: the sources whose shards this one joins (e.g. [w2, subject]); nothing is generated
    union: list[str] = field(default_factory=list)
    image_format: Optional[str] = None  # png | jpg (JPEG quality 95); null: generation.image_format
    # A caption set of its own instead of the run's (a `captions` section, e.g. {format: concepts}),
    # made by the captions step into <run>/source_captions/<name>; null: the run's caption set
    caption_set: Optional[CaptionsConfig] = None
    # Keep only the images that match their caption best, by a CLIP's score (a change re-indexes
    # the shards, it regenerates nothing); null: every image
    filter: Optional[AlignmentFilterConfig] = None


@dataclass
class InpaintQualityConfig:
    """GLIDE's inpainting measured by the judge (evaluation/inpaint_quality.py): edit accuracy,
    kept attributes and PSNR of the kept region, per model, edit and w, over sampling seeds."""

    # An inpainting model, and a text-to-image one (it inpaints by replacement)
    models: list[str] = field(default_factory=lambda: ["models/toy_inpaint", "models/toy_generator"])
    edits: list[str] = field(default_factory=lambda: ["background", "colour"])
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    images: int = 64  # real test images edited per setting
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # sampling seeds: the intervals
    dilate: int = 1
    seed: int = 1234
    enabled: bool = False  # part of `snakemake`'s default target (toy world only)


@dataclass
class SampleQualityConfig:
    """Caption-match accuracy and diversity of a generator, measured by an attribute classifier."""

    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
    captions: int = 48
    images_per_caption: int = 6
    classifier_epochs: int = 8
    # The judge: loaded from this folder when it was trained on this world with these epochs and
    # seed (models/ ships the default world's), else trained anew (evaluation/attribute_classifier.py)
    classifier: Optional[str] = "models/attribute_classifier"
    # GLIDE's CLIP guidance rows: one per scale s, at CFG scale clip_w (1: CLIP guidance alone), guided
    # by generation.clip_model; every row is scored by that CLIP when it exists
    clip_scales: list[float] = field(default_factory=list)
    clip_w: float = 1.0
    cutouts: int = 0
    # The CLIP rows' guidance.min_alpha_bar, one set of rows each (e.g. [0, 1e-3]: without and with the skip)
    clip_min_alpha_bars: list[float] = field(default_factory=lambda: [1.0e-3])
    # A second CLIP (another training seed) that scores every row and guides none: GLIDE's test of
    # whether CLIP guidance raises its own CLIP's score more than what a held-out judge sees
    heldout_clip: Optional[str] = None
    heldout_clip_seed: int = 1  # toy_clip.seed of the held-out CLIP, when Snakemake trains it
    # GLIDE's own form: rows guided by a noised CLIP on x_t (toy_noised_clip), one per scale s, at clip_w
    noised_clip: Optional[str] = "models/toy_noised_clip"
    noised_clip_scales: list[float] = field(default_factory=list)
    # Sources judged by source_quality (so generated) although no run of the sweep trains on them: the
    # default run's small previews of each generation mode (their rows of the generator-family table)
    sources: list[str] = field(default_factory=list)
    seed: int = 1234
    # Part of `snakemake`'s default target (toy world only: the classifier reads toy attributes)
    enabled: bool = True


@dataclass
class AugmentConfig:
    """SimCLR / StableRep augmentation (the papers' values as defaults), scaled to the image size in synrep.learning.augment."""

    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    # The official --downsample: with this probability, before the crop, resize the stored image to
    # one of these fractions of its side and back (official: 64 or 128 px of 256)
    downsample_p: float = 0.05
    downsample_sizes: list[float] = field(default_factory=lambda: [0.25, 0.5])


@dataclass
class TextTowerConfig:
    """open_clip text transformer of CLIP and StableRep+ (open_clip's BPE tokenizer)."""

    context_length: int = 32
    width: int = 64
    heads: int = 2
    layers: int = 2
    embed_dim: int = 64


@dataclass
class TrainConfig:
    """One training run. A sweep (``sweep``) sets method, data, l, m and seed per run."""

    method: str = "stablerep"  # stablerep | simclr | clip | stablerep_plus
    # Training images: "real" (the captions' own images) or the name of a source in `sources`
    data: str = "w2"
    l: int = 4  # images per caption used (the first l of those stored)
    m: int = 4  # images per caption in a batch row (StableRep, StableRep+)
    seed: int = 0
    output_dir: str = "${paths.results_dir}/${name}/runs/single"
    # Shards of the captions' real images (data = real): made by the real_shards step for the toy
    # world; for real data, an img2dataset output folder
    real_shards: str = "${paths.results_dir}/${name}/real_shards"
    encoder: str = "toy_cnn"  # any timm model name, e.g. vit_base_patch16_224
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int = 16
    head_hidden: int = 512
    head_out: int = 128
    temperature: float = 0.1
    # StableRep+: L = L_image + text_loss_weight * (L_i2t + L_t2i)
    text_loss_weight: float = 0.5
    # Length, as the official --epochs / --warmup_epochs: passes over the run's captions (each pass
    # shows every caption once: m images for StableRep, two crops of one image for SimCLR, one image
    # for CLIP). epoch_unit=simclr counts SimCLR-equivalent epochs instead (every method sees
    # epochs * 2 crops per caption: equal compute whatever the method and m; the toy default).
    epochs: float = 10.0
    epoch_unit: str = "pass"  # pass | simclr
    # Linear warm-up from 0 over this many epochs (same unit), then half-cycle cosine to 0
    warmup_epochs: float = 1.0
    batch_images: int = 256  # crops per step, all ranks (n captions x m images x crops per image)
    # Peak lr: `lr` when set (the official --lr), else the official rule
    # base_lr * images per step / 256 * crops per image / 2 (= base_lr * crops per step / 512)
    lr: Optional[float] = None
    base_lr: float = 2e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    # The l ablation at a fixed generation budget T: the run trains on the first T // l captions
    # (l = 1: T captions of one image); its length is counted on all captions, so compute is fixed
    image_budget: Optional[int] = None
    # Per-method values of train.* keys, e.g. {clip: {lr: 5.0e-4, weight_decay: 0.5}}: a method's own
    # optimiser and length (applied to a run of that method, and part of its identity)
    by_method: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 0  # DataLoader worker processes per rank
    # Least time between two checkpoints (checkpoints/last.pt, saved at the end of a pass; 0: every
    # pass). A preempted run loses at most this much work plus a pass; not part of a run's identity.
    # Every pass was 7 s of a 47 s toy CLIP run (80 passes of 4 steps, a 42 MB state each).
    checkpoint_seconds: float = 30.0
    # Keep decoded images in memory (each loader process): for small sources such as the toy world's
    cache_decoded: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)


@dataclass
class EvalConfig:
    """Frozen-feature evaluation: linear probe, few-shot and zero-shot."""

    # toyworld: the embedded world's real splits; imagefolder: <root>/{train,val,test}/<class>/*;
    # a torchvision dataset class name (e.g. CIFAR10) under root with download=False
    dataset: str = "toyworld"
    root: str = "${paths.data_dir}/toyworld"
    # Toy world labels to evaluate; the first is the headline number
    targets: list[str] = field(default_factory=lambda: ["shape", "size"])
    batch_size: int = 512
    # Selection split where the data set has no split of its own beside the reported one
    # (ImageNet {train, val}: val is reported): train images held out, stratified by class; >= 1 a
    # count (ImageNet: 10,000, ~10 a class), < 1 a fraction of train
    holdout: float = 10000
    # Linear probe (the official main_linear.py): SGD momentum 0.9, no weight decay, cosine; every
    # lr trained at once; the lr (and with probe_eval_every, the epoch) chosen on the selection split
    probe_lrs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    probe_epochs: int = 30
    probe_batch_size: int = 256
    # BatchNorm without affine (eps 1e-6) in front of the heads: the official --use_bn
    probe_batchnorm: bool = True
    # Evaluate every N epochs and choose (lr, epoch) on the selection split (official: 10); null:
    # the lr at the last epoch
    probe_eval_every: Optional[int] = None
    # Train the probe on RandomResizedCrop + flip through the frozen encoder each epoch (official);
    # false: on cached centre-crop features
    probe_augment: bool = False
    # Evaluation transform: Resize(image_size / crop_pct) + CenterCrop(image_size) (official 0.875)
    crop_pct: float = 1.0
    # Zero-shot class names on an ImageFolder: a text file, one per class in folder order (null:
    # ImageNet's names for wnid folders, else the folder names)
    class_names: Optional[str] = None
    # Few-shot classifier: logistic regression on l2-normalised features, as StableRep (after
    # Tian et al. 2020), or the nearest class mean
    fewshot_classifier: str = "logistic"
    fewshot_episodes: int = 600
    fewshot_ways: int = 5
    fewshot_shots: int = 5
    fewshot_queries: int = 15
    zero_shot: bool = True
    # The raw-pixel baseline pools images to at most this side first (224 px ImageNet would be a
    # 150,528-dim x 1.28M matrix; 16 px gives 768 dims); null leaves the baseline out
    raw_pixels_size: Optional[int] = 16
    # Worst-group accuracy of the first target's probe (toyworld only): its test predictions split
    # by each grouping of toy world attributes, e.g. [[shape, background], [shape, colour]]; per
    # grouping the worst group's accuracy, the mean over groups and a table of every group
    # (eval.json); [] (off): no new metric
    groups: list[list[str]] = field(default_factory=list)
    # Groups with fewer test images than this are listed with their count but left out of the worst
    # and the mean (a handful of images says little)
    group_min_images: int = 5


@dataclass
class SweepGrid:
    """One block of a sweep: the cartesian product of its lists (null: the train.* value)."""

    method: Optional[list[str]] = None
    data: Optional[list[str]] = None
    l: Optional[list[int]] = None
    m: Optional[list[int]] = None
    # Generation budgets T in images (train.image_budget): a run trains on the first T // l captions
    budget: Optional[list[int]] = None


@dataclass
class SweepConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    grids: list[SweepGrid] = field(default_factory=list)
    # Also evaluate a randomly initialised encoder and raw pixels (no training)
    baselines: bool = True
    # Sweep runs trained one after another in one process (one Snakemake job), per seed: a toy run
    # takes seconds, and a new process pays several of them to import torch, timm and MLflow. Each
    # run keeps its own folder, metrics.json and MLflow run; 1 (a job per run) suits a cluster
    runs_per_job: int = 1


@dataclass
class LaunchConfig:
    """``python -m synrep launch``: the sweep through submitit (SLURM job arrays, or local processes)."""

    # null: submitit's auto-detection (SLURM whenever srun is on PATH); slurm | local | debug
    cluster: Optional[str] = None
    folder: str = "${paths.results_dir}/${name}/submitit"
    partition: Optional[str] = None
    account: Optional[str] = None
    timeout_min: int = 240
    nodes: int = 1
    tasks_per_node: int = 1  # > 1: DDP over srun tasks (train() reads SLURM's environment)
    cpus_per_task: Optional[int] = None  # null: threads
    gpus_per_node: int = 0
    mem_gb: int = 16
    array_parallelism: int = 32
    # Skip runs whose metrics.json exists; wait for the array, then write the report
    only_missing: bool = True
    wait: bool = True


@dataclass
class PlanConfig:
    """``python -m synrep plan``: the GPU-hours a config will cost."""

    # Deduplicated captions; null: counted from the captions step's output
    captions: Optional[int] = None
    # One generated image on one GPU (StableRep reports, for SD v1.5, 50 DDIM steps, 512 px: 0.8 s on an A100,
    # 2.2 s on a V100); measure yours with benchmarks/generation_speed.py
    seconds_per_image: float = 0.8
    # One training step on launch.nodes x launch.gpus_per_node GPUs; null: training not estimated
    # (measure with benchmarks/train_step.py)
    seconds_per_train_step: Optional[float] = None
    # One image through the frozen encoder (forward only) on one GPU; null: evaluation not
    # estimated (benchmarks/train_step.py prints it beside the training step)
    seconds_per_eval_image: Optional[float] = None
    # Images of the evaluation set's train split (the probe's) and of its other splits; null:
    # evaluation not estimated (ImageNet-1k: 1,281,167 and 50,000)
    eval_train_images: Optional[int] = None
    eval_other_images: Optional[int] = None


@dataclass
class Config:
    name: str = "toy"
    # CPU threads for torch in each step (Snakemake rules pass theirs)
    threads: int = 2
    paths: PathsConfig = field(default_factory=PathsConfig)
    toyworld: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    toy_generator: ToyGeneratorConfig = field(default_factory=ToyGeneratorConfig)
    toy_clip: ToyClipConfig = field(default_factory=ToyClipConfig)
    toy_noised_clip: ToyNoisedClipConfig = field(default_factory=ToyNoisedClipConfig)
    toy_unclip: ToyUnclipConfig = field(default_factory=ToyUnclipConfig)
    toy_inpaint: ToyInpaintConfig = field(default_factory=ToyInpaintConfig)
    nada: NadaConfig = field(default_factory=NadaConfig)
    dreambooth: DreamBoothConfig = field(default_factory=DreamBoothConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Named synthetic data sources; `train.data` and the sweep's `data` axis name them
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    sample_quality: SampleQualityConfig = field(default_factory=SampleQualityConfig)
    inpaint_quality: InpaintQualityConfig = field(default_factory=InpaintQualityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    # A named schedule from `schedules` (e.g. 1x, 2x, 3x), merged into train.* at load time
    schedule: Optional[str] = None
    schedules: dict[str, Any] = field(default_factory=dict)


# Values outside these sets fail at load time.
CHOICES: dict[str, tuple[str, ...]] = {
    "captions.format": ("cc3m", "cc12m", "redcaps", "laion", "table", "concepts"),
    "generation.sampler": ("ddim", "ddpm", "dpmsolver", "euler", "pndm"),
    "generation.dtype": ("float32", "float16", "bfloat16"),
    "generation.device": ("auto", "cpu", "cuda"),
    "generation.image_format": ("png", "jpg"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.epoch_unit": ("pass", "simclr"),
    "eval.fewshot_classifier": ("logistic", "prototype"),
    "launch.cluster": ("slurm", "local", "debug"),
}
POSITIVE: tuple[str, ...] = (
    "threads",
    "toyworld.image_size",
    "toyworld.n_train",
    "toy_generator.steps",
    "toy_generator.batch_size",
    "toy_clip.epochs",
    "toy_clip.batch_size",
    "toy_clip.lr",
    "toy_noised_clip.epochs",
    "toy_noised_clip.batch_size",
    "toy_noised_clip.lr",
    "toy_inpaint.steps",
    "toy_inpaint.batch_size",
    "toy_inpaint.lr",
    "generation.steps",
    "generation.images_per_caption",
    "generation.captions_per_shard",
    "sweep.runs_per_job",
    "generation.threads",
    "generation.batch_size",
    "generation.resume_images",
    "sample_quality.captions",
    "sample_quality.images_per_caption",
    "inpaint_quality.images",
    "dreambooth.probe.images",
    "train.l",
    "train.m",
    "train.image_size",
    "train.epochs",
    "train.batch_images",
    "train.base_lr",
    "train.lr",
    "train.image_budget",
    "train.temperature",
    "eval.batch_size",
    "eval.probe_epochs",
    "eval.fewshot_episodes",
    "eval.fewshot_ways",
    "eval.fewshot_shots",
    "eval.fewshot_queries",
    "eval.raw_pixels_size",
    "eval.holdout",
    "eval.probe_eval_every",
    "eval.crop_pct",
    "eval.group_min_images",
    "launch.timeout_min",
    "launch.nodes",
    "launch.tasks_per_node",
    "launch.mem_gb",
)
FRACTIONS: tuple[str, ...] = (
    "toyworld.exact_duplicate_rate",
    "toyworld.near_duplicate_rate",
    "toy_generator.caption_dropout",
    "toy_generator.ema_decay",
    "toy_inpaint.caption_dropout",
    "toy_inpaint.ema_decay",
    "generation.guidance_rescale",
    "train.augment.color_jitter_p",
    "train.augment.grayscale_p",
    "train.augment.blur_p",
    "train.augment.downsample_p",
)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _describe(err: OmegaConfBaseException, source: str, within: str | None = None) -> ConfigError:
    """One line: OmegaConf appends full_key / reference_type / object_type lines to its messages."""
    key = getattr(err, "full_key", None) or "?"
    if within and not key.startswith(within):
        # an element of a list of structs is checked detached from its parent: name both
        key = f"{within}' at '{key}"
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0].strip()
    return ConfigError(f"{source}: config key '{key}': {msg}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise _describe(err, source) from None


def _fails(cfg: DictConfig, item: str) -> bool:
    try:
        OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException:
        return True
    return False


def _load_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        mark = err.context_mark or err.problem_mark
        what = ", ".join(filter(None, (err.context, err.problem)))
        raise ConfigError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: cannot parse YAML: {what}") from None
    except Exception as err:  # other yaml.YAMLError and friends
        raise ConfigError(f"{path}: cannot parse YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return loaded


def experiment_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    return config_dir() / "experiment" / f"{name}.yaml"


def _get(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted, throw_on_missing=True)


def validate(cfg: DictConfig) -> None:
    """Check what the type system cannot: allowed values and ranges, with the key's path."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise _describe(err, "config") from None
    if cfg.train.method not in METHODS:
        raise ConfigError(f"config key 'train.method': {cfg.train.method!r} is not one of {list(METHODS)}")
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(allowed)}")
    for key in POSITIVE:
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {value!r}")
    for key in FRACTIONS:
        value = _get(cfg, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key '{key}': must be in [0, 1], got {value!r}")
    for name, source in cfg.sources.items():
        check_source(name, source)
    for name, source in cfg.sources.items():
        check_union(cfg, name, source)
    for i, name in enumerate(cfg.dreambooth.probe.sources):
        check_data_source(cfg, name, f"dreambooth.probe.sources[{i}]")
    if cfg.dreambooth.probe.method not in METHODS:
        raise ConfigError(f"config key 'dreambooth.probe.method': {cfg.dreambooth.probe.method!r} is not one of "
                          f"{list(METHODS)}")
    for i, name in enumerate(cfg.sample_quality.sources):
        check_data_source(cfg, name, f"sample_quality.sources[{i}]")
        if name == "real":
            raise ConfigError(f"config key 'sample_quality.sources[{i}]': 'real' is not a synthetic source")
    for i, value in enumerate(cfg.sample_quality.clip_min_alpha_bars):
        if not 0 <= value < 1:
            raise ConfigError(f"config key 'sample_quality.clip_min_alpha_bars[{i}]': must be in [0, 1), got {value!r}")
    if cfg.train.checkpoint_seconds < 0:
        raise ConfigError(f"config key 'train.checkpoint_seconds': must be >= 0, got {cfg.train.checkpoint_seconds!r}")
    if cfg.toyworld.image_size % 4:
        raise ConfigError("config key 'toyworld.image_size': must be a multiple of 4")
    check_data_source(cfg, cfg.train.data, "train.data")
    for i, grid in enumerate(cfg.sweep.grids):
        for key in ("method", "data", "l", "m", "budget"):
            values = grid[key]
            if values is not None and len(values) == 0:
                raise ConfigError(f"config key 'sweep.grids[{i}].{key}': empty list (use null for the train.* value)")
        for j, method in enumerate(grid.method or []):
            if method not in METHODS:
                raise ConfigError(f"config key 'sweep.grids[{i}].method[{j}]': {method!r} is not one of {list(METHODS)}")
        for j, data in enumerate(grid.data or []):
            check_data_source(cfg, data, f"sweep.grids[{i}].data[{j}]")
        for key in ("l", "m", "budget"):
            for j, value in enumerate(grid[key] or []):
                if value <= 0:
                    raise ConfigError(f"config key 'sweep.grids[{i}].{key}[{j}]': must be > 0, got {value}")
    for method, own in cfg.train.by_method.items():
        key = f"train.by_method.{method}"
        if method not in METHODS:
            raise ConfigError(f"config key '{key}': {method!r} is not one of {list(METHODS)}")
        if not isinstance(own, DictConfig):
            raise ConfigError(f"config key '{key}': expected a mapping of train.* keys")
        for name in own:
            if name in ("by_method", "method", "output_dir") or name not in cfg.train:
                raise ConfigError(f"config key '{key}.{name}': not a train.* key a method can set")
        try:
            OmegaConf.merge(OmegaConf.structured(TrainConfig), own)
        except OmegaConfBaseException as err:
            msg = (getattr(err, "msg", None) or str(err)).splitlines()[0].strip()
            raise ConfigError(f"config key '{key}.{getattr(err, 'full_key', '?')}': {msg}") from None
    if not cfg.sweep.seeds:
        raise ConfigError("config key 'sweep.seeds': at least one seed")
    for i, fraction in enumerate(cfg.train.augment.downsample_sizes):
        if not 0 < fraction < 1:
            raise ConfigError(f"config key 'train.augment.downsample_sizes[{i}]': a fraction of the side in (0, 1), "
                              f"got {fraction}")
    if cfg.eval.crop_pct > 1:
        raise ConfigError(f"config key 'eval.crop_pct': the centre crop's share of the resized side, in (0, 1], "
                          f"got {cfg.eval.crop_pct}")
    lo, hi = cfg.train.augment.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"config key 'train.augment.crop_scale': need 0 < min <= max <= 1, got {[lo, hi]}")
    for i, edit in enumerate(cfg.inpaint_quality.edits):
        if edit not in ("background", "colour"):
            raise ConfigError(f"config key 'inpaint_quality.edits[{i}]': {edit!r} is not one of ['background', 'colour']")
    mix = cfg.toy_inpaint.mask_mix
    unknown = set(mix) - set(INPAINT_TRAINING_MASKS)
    if unknown or any(v < 0 for v in mix.values()) or abs(sum(mix.values()) - 1) > 1e-6:
        raise ConfigError(f"config key 'toy_inpaint.mask_mix': shares of {list(INPAINT_TRAINING_MASKS)} that sum to "
                          f"1, got {dict(mix)}")
    check_eval_groups(cfg.eval)
    check_caption_set(cfg.captions, "captions")
    check_caption_selection(cfg.captions, "captions", cfg.toyworld)
    for name, source in cfg.sources.items():
        if source.caption_set is not None:
            check_caption_selection(source.caption_set, f"sources.{name}.caption_set", cfg.toyworld)
    if cfg.captions.held_out and cfg.eval.dataset != "toyworld":
        raise ConfigError(f"config key 'captions.held_out': the seen / held-out zero-shot needs test images labelled "
                          f"with both attributes (eval.dataset toyworld, not {cfg.eval.dataset!r}); on other "
                          "captions remove pairs with captions.skew rules on the caption text, keep 0")


# The toy world's attributes, the labels of every real image (data.toyworld names their values)
TOY_ATTRIBUTES = ("shape", "colour", "size", "background")
# The values of the attributes that toyworld.* does not list (data.toyworld reads them here)
TOY_SIZES = ("small", "large")
TOY_BACKGROUNDS = ("dark", "light")


def toy_attribute_values(toyworld: DictConfig) -> dict[str, list[str]]:
    """Each toy world attribute's value names, in index order."""
    return {"shape": list(toyworld.shapes), "colour": list(toyworld.colours), "size": list(TOY_SIZES),
            "background": list(TOY_BACKGROUNDS)}


def check_caption_selection(captions: DictConfig, key: str, toyworld: DictConfig) -> None:
    """``skew`` rules and ``held_out`` pairs of a captions section: known attributes and values, a
    fraction in [0, 1], a regular expression that compiles, two distinct attributes a pair."""
    values = toy_attribute_values(toyworld)

    def check_value(attribute: str, value: Any, where: str) -> None:
        if attribute not in values:
            raise ConfigError(f"config key '{where}': {attribute!r} is not a toy world attribute "
                              f"({list(TOY_ATTRIBUTES)}) or 'caption'")
        wanted = list(value) if isinstance(value, (list, ListConfig)) else [value]
        if not wanted:
            raise ConfigError(f"config key '{where}': an empty list of values")
        for v in wanted:
            if v not in values[attribute]:
                raise ConfigError(f"config key '{where}': {v!r} is not a {attribute} ({values[attribute]})")

    for i, rule in enumerate(captions.skew):
        where = f"{key}.skew[{i}]"
        if not rule.match:
            raise ConfigError(f"config key '{where}.match': empty (name the attributes or the caption text it matches)")
        if not 0.0 <= rule.keep <= 1.0:
            raise ConfigError(f"config key '{where}.keep': must be in [0, 1], got {rule.keep!r}")
        for attribute, value in rule.match.items():
            if attribute == "caption":
                try:
                    re.compile(str(value))
                except re.error as err:
                    raise ConfigError(f"config key '{where}.match.caption': not a regular expression ({err})") from None
                continue
            check_value(attribute, value, f"{where}.match.{attribute}")
    for i, pair in enumerate(captions.held_out):
        where = f"{key}.held_out[{i}]"
        if len(pair) != 2:
            raise ConfigError(f"config key '{where}': a pair of two attributes, e.g. {{colour: red, shape: ring}}; "
                              f"got {dict(pair)}")
        for attribute, value in pair.items():
            check_value(attribute, value, f"{where}.{attribute}")


def check_eval_groups(e: DictConfig) -> None:
    for i, grouping in enumerate(e.groups):
        if e.dataset != "toyworld":
            raise ConfigError(f"config key 'eval.groups[{i}]': groups are toy world attributes; "
                              f"eval.dataset is {e.dataset!r}")
        if not grouping:
            raise ConfigError(f"config key 'eval.groups[{i}]': an empty grouping (name one or more attributes)")
        for j, name in enumerate(grouping):
            if name not in TOY_ATTRIBUTES:
                raise ConfigError(f"config key 'eval.groups[{i}][{j}]': {name!r} is not a toy world attribute "
                                  f"({list(TOY_ATTRIBUTES)})")
            if name in grouping[:j]:
                raise ConfigError(f"config key 'eval.groups[{i}][{j}]': {name!r} is listed twice")


def check_caption_set(captions: DictConfig, key: str) -> None:
    """A `captions` section: the run's, or a source's own (sources.<name>.caption_set)."""
    if captions.format not in CHOICES["captions.format"]:
        raise ConfigError(f"config key '{key}.format': {captions.format!r} is not one of {list(CHOICES['captions.format'])}")
    if captions.format == "table" and not captions.column:
        raise ConfigError(f"config key '{key}.column': required when {key}.format=table")
    concepts = captions.concepts
    if concepts.count is not None and concepts.count < 1:
        raise ConfigError(f"config key '{key}.concepts.count': must be >= 1 or null (the run's caption count), "
                          f"got {concepts.count}")
    if concepts.file is not None and not Path(concepts.file).is_file():
        raise ConfigError(f"config key '{key}.concepts.file': {concepts.file} is not a file")


SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# Each mode's settings section: its dataclass (another mode's must stay at its defaults), its name in messages
MODE_SETTINGS = {"inpaint": ("inpainting", InpaintSourceConfig), "unclip": ("unCLIP", UnclipSourceConfig)}
INPAINT_TRAINING_MASKS = ("object", "background", "box", "all")
GUIDANCE_KINDS = ("cfg", "clip")


def guidance_scales(w: Any, key: str) -> list[float]:
    """A source's ``guidance.w`` as a list: one number, or a set of distinct numbers >= 1."""
    values = list(w) if isinstance(w, (list, tuple, ListConfig)) else [w]
    if not values:
        raise ConfigError(f"config key '{key}': an empty set of guidance scales")
    out = []
    for value in values:
        if isinstance(value, str):  # Snakemake's --config passes nested numbers as text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': {value!r} is not a number (a guidance scale, or a list of them)")
        if value < 1.0:
            raise ConfigError(f"config key '{key}': guidance scale {value} < 1 "
                              "(w = 1 is the conditional model without guidance)")
        out.append(float(value))
    if len(set(out)) != len(out):
        raise ConfigError(f"config key '{key}': guidance scales must be distinct, got {values}")
    return out


def check_source(name: str, source: DictConfig) -> None:
    key = f"sources.{name}"
    if name == "real" or not SOURCE_NAME.match(name):
        raise ConfigError(f"config key '{key}': {name!r} cannot name a source (letters, digits, _ . + -; not 'real')")
    if source.mode not in SOURCE_MODES:
        raise ConfigError(f"config key '{key}.mode': {source.mode!r} is not one of {list(SOURCE_MODES)}")
    mode = SOURCE_MODES[source.mode]
    if source.captions is not None and source.captions <= 0:
        raise ConfigError(f"config key '{key}.captions': must be > 0 (null: every caption), got {source.captions!r}")
    if source.caption_set is not None:
        check_caption_set(source.caption_set, f"{key}.caption_set")
        if source.prompts is not None or mode.real_image or not mode.generates:
            raise ConfigError(f"config key '{key}.caption_set': a caption set of its own suits a mode that generates "
                              f"from captions alone, without prompts of its own (mode {source.mode})")
    if source.prompts is not None:
        if not Path(source.prompts).is_file():
            raise ConfigError(f"config key '{key}.prompts': {source.prompts} is not a file (one prompt per line)")
        if not mode.own_prompts:
            suit = " and ".join(m.name for m in SOURCE_MODES.values() if m.own_prompts)
            raise ConfigError(f"config key '{key}.prompts': mode {source.mode} starts from each caption's real image; "
                              f"prompts of its own suit modes {suit}")
    if (not mode.generates) != bool(source.union):
        raise ConfigError(f"config key '{key}.union': mode union needs the sources it joins, and only mode union "
                          f"takes them (mode {source.mode}, union {list(source.union)})")
    for where, message in mode.checks(source):
        raise ConfigError(f"config key '{key}.{where}': {message}")
    for section, (label, defaults) in MODE_SETTINGS.items():
        if section not in mode.settings and source[section] != OmegaConf.structured(defaults):
            raise ConfigError(f"config key '{key}.{section}': {label} settings need mode: {' or '.join(owners(section))}")
    if source.guidance.kind not in GUIDANCE_KINDS:
        raise ConfigError(f"config key '{key}.guidance.kind': {source.guidance.kind!r} is not one of {list(GUIDANCE_KINDS)}")
    guidance_scales(source.guidance.w, f"{key}.guidance.w")
    g = source.guidance
    if g.kind == "clip":
        if g.clip_scale <= 0:
            raise ConfigError(f"config key '{key}.guidance.clip_scale': must be > 0 with guidance.kind clip, got {g.clip_scale!r}")
        if g.cutouts < 0:
            raise ConfigError(f"config key '{key}.guidance.cutouts': must be >= 0, got {g.cutouts!r}")
        if not 0 <= g.min_alpha_bar < 1:
            raise ConfigError(f"config key '{key}.guidance.min_alpha_bar': must be in [0, 1), got {g.min_alpha_bar!r}")
        sampler = source.sampler
        if sampler in ("euler",):
            raise ConfigError(f"config key '{key}.sampler': CLIP guidance steps on alpha_t; use ddim, ddpm, dpmsolver or pndm")
    elif g.clip_scale or g.clip_model is not None or g.cutouts or g.min_alpha_bar != GuidanceConfig.min_alpha_bar:
        raise ConfigError(f"config key '{key}.guidance.clip_scale': CLIP guidance settings need guidance.kind: clip")
    if source.sampler is not None and source.sampler not in CHOICES["generation.sampler"]:
        raise ConfigError(f"config key '{key}.sampler': {source.sampler!r} is not one of {list(CHOICES['generation.sampler'])}")
    formats = CHOICES["generation.image_format"]
    if source.image_format is not None and source.image_format not in formats:
        raise ConfigError(f"config key '{key}.image_format': {source.image_format!r} is not one of {list(formats)}")
    for field_name in ("steps", "l"):
        value = source[field_name]
        if value is not None and value <= 0:
            raise ConfigError(f"config key '{key}.{field_name}': must be > 0, got {value!r}")
    if source.filter is not None:
        check_alignment_filter(source.filter, f"{key}.filter")


def check_alignment_filter(f: DictConfig, key: str) -> None:
    """A source's ``filter``: one rule (a fraction kept or a minimum score), at least two images kept."""
    if (f.keep_fraction is None) == (f.min_score is None):
        raise ConfigError(f"config key '{key}': set one of keep_fraction and min_score, got keep_fraction "
                          f"{f.keep_fraction!r} and min_score {f.min_score!r}")
    if f.keep_fraction is not None and not 0 < f.keep_fraction <= 1:
        raise ConfigError(f"config key '{key}.keep_fraction': must be in (0, 1], got {f.keep_fraction!r}")
    if f.min_score is not None and not 0 <= f.min_score <= 100:
        raise ConfigError(f"config key '{key}.min_score': must be in [0, 100] (CLIPScore), got {f.min_score!r}")
    if f.min_images < 2:
        raise ConfigError(f"config key '{key}.min_images': must be >= 2 (the multi-positive loss needs two images "
                          f"of a caption), got {f.min_images!r}")
    if not f.clip_model:
        raise ConfigError(f"config key '{key}.clip_model': an open_clip local-dir folder is needed (e.g. models/toy_clip)")


def check_union(cfg: DictConfig, name: str, source: DictConfig) -> None:
    """A union joins declared, generated sources (not real images, not other unions), each once,
    with as many images per caption each, so that a run's l means the same for every caption."""
    ls = set()
    for i, member in enumerate(source.union):
        key = f"sources.{name}.union[{i}]"
        if member not in cfg.sources or member == name:
            raise ConfigError(f"config key '{key}': {member!r} is not another source: one of {list(cfg.sources)}")
        if not SOURCE_MODES[cfg.sources[member].mode].generates:
            raise ConfigError(f"config key '{key}': {member!r} is itself a union (list its sources instead)")
        if cfg.sources[member].filter is not None:
            raise ConfigError(f"config key '{key}': {member!r} is filtered; a union joins whole sources "
                              f"(give the union the filter: sources.{name}.filter)")
        if member in list(source.union)[:i]:
            raise ConfigError(f"config key '{key}': {member!r} is listed twice")
        ls.add(cfg.sources[member].l or cfg.generation.images_per_caption)
    if len(ls) > 1:
        raise ConfigError(f"config key 'sources.{name}.union': its sources store different numbers of images per "
                          f"caption ({sorted(ls)}); give them one l")


def check_data_source(cfg: DictConfig, value: str, key: str) -> None:
    """``real`` or the name of a source in ``sources``."""
    if value != "real" and value not in cfg.sources:
        raise ConfigError(f"config key '{key}': {value!r} is not a data source: 'real' or one of "
                          f"{list(cfg.sources)} (define it under 'sources:')")


def load_config(
    overrides: Iterable[str] = (),
    *,
    experiment: str | None = None,
    config_file: str | os.PathLike | None = None,
    base: dict | None = None,
) -> DictConfig:
    """Load and validate a config.

    Merged in order: the dataclass defaults; ``config_file`` (default ``config/config.yaml``; e.g. a
    resolved config written by Snakemake); the ``experiment`` file in ``config/experiment/``;
    ``base``, a plain mapping (Snakemake's ``--config`` / ``--configfile`` values); ``overrides``,
    ``key=value`` strings. An
    ``experiment=NAME`` item among the overrides is the same as ``experiment=NAME``.
    """
    overrides = list(overrides)
    dotlist = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        if key == "experiment":
            experiment = value
        else:
            dotlist.append(item)

    default_file = Path(config_file) if config_file else config_dir() / "config.yaml"
    if not config_file and not default_file.exists():
        raise ConfigError(f"config file not found: {default_file} (run synrep from the root of a checkout, "
                          "or set SYNREP_CONFIG_DIR)")
    if base:
        base = dict(base)
        experiment = experiment or base.pop("experiment", None)
        base.pop("experiment", None)
    # Layers, lowest first: the experiment file overrides the defaults; Snakemake's --config and
    # key=value override both. A named schedule slots in above the experiment file.
    files = [(str(default_file), _load_yaml(default_file))]
    if experiment:
        files += experiment_layers(experiment_path(experiment))
    overlays = [("snakemake config", OmegaConf.create(base))] if base else []
    cfg = _merge_layers(files, overlays, dotlist)
    if cfg.schedule is not None:
        if cfg.schedule not in cfg.schedules:
            raise ConfigError(f"config key 'schedule': {cfg.schedule!r} is not one of {list(cfg.schedules)} "
                              "(defined under 'schedules:')")
        values = OmegaConf.create({"train": OmegaConf.to_container(cfg.schedules[cfg.schedule])})
        cfg = _merge_layers(files + [(f"config key 'schedules.{cfg.schedule}'", values)], overlays, dotlist)
    validate(cfg)
    return cfg


def experiment_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """An experiment file, after the file it ``extends`` (another experiment's name), if any."""
    layer = _load_yaml(path)
    parent = layer.pop("extends", None)
    if parent is None:
        return [(str(path), layer)]
    parent_path = experiment_path(str(parent))
    if parent_path in seen or parent_path == path:
        raise ConfigError(f"{path}: 'extends: {parent}' makes a cycle")
    return experiment_layers(parent_path, seen + (path,)) + [(str(path), layer)]


def _merge_layers(files: list[tuple[str, DictConfig]], overlays: list[tuple[str, DictConfig]],
                  dotlist: list[str]) -> DictConfig:
    cfg = OmegaConf.structured(Config)
    for source, layer in files + overlays:
        cfg = _merge(cfg, layer, source)
    if dotlist:
        try:
            cli = OmegaConf.from_dotlist(dotlist)
        except OmegaConfBaseException as err:
            raise _describe(err, "command line") from None
        try:
            cfg = OmegaConf.merge(cfg, cli)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or ""
            within = None
            if not any(key.startswith(item.split("=", 1)[0]) for item in dotlist):
                # OmegaConf lost the path (list elements are checked detached): find the item
                within = next((item.split("=", 1)[0] for item in dotlist if _fails(cfg, item)), None)
            raise _describe(err, "command line", within) from None
    OmegaConf.set_readonly(cfg, False)
    return cfg


def method_train(cfg: DictConfig) -> DictConfig:
    """``cfg`` (a copy) with ``train.by_method[train.method]`` merged into ``train.*``."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    own = cfg.train.by_method.get(cfg.train.method)
    if own:
        for key, value in own.items():
            cfg.train[key] = value
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)


# Keys added to a section after its hash was published: left out of the hash while all of them
# are at their defaults, so that a config without them keeps its hashes (and Snakemake does not
# rerun its steps)
HASH_OMITS_AT_DEFAULT = {"captions": {"skew": [], "skew_seed": 0, "held_out": []}}


def hashed_section(key: str, value: dict) -> dict:
    """A section's plain dict as hashes see it (``HASH_OMITS_AT_DEFAULT``)."""
    omit = HASH_OMITS_AT_DEFAULT.get(key, {})
    if omit and all(value.get(k) == v for k, v in omit.items()):
        return {k: v for k, v in value.items() if k not in omit}
    return value


def section_hash(cfg: DictConfig, *keys: str) -> str:
    """A short hash of some config sections: Snakemake params, so a rule reruns when they change."""
    payload = {}
    for key in keys:
        value = OmegaConf.select(cfg, key)
        plain = to_dict(value) if isinstance(value, (DictConfig, ListConfig)) else value
        payload[key] = hashed_section(key, plain) if isinstance(plain, dict) else plain
    return digest(payload)


def digest(data: Any) -> str:
    """A short hash of plain data (JSON with sorted keys): Snakemake params, source specs, run identities."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def save_resolved(cfg: DictConfig, directory: str | os.PathLike, filename: str = "config.yaml") -> Path:
    """Write the resolved config beside a step's outputs."""
    return write_text(Path(directory) / filename, to_yaml(cfg))


def run_dir(cfg: DictConfig, *parts: str) -> Path:
    """``<results_dir>/<name>/<parts...>``"""
    return Path(cfg.paths.results_dir, cfg.name, *parts)


def json_schema() -> dict:
    """A JSON schema of the config tree, derived from the dataclasses (for Snakemake's validate)."""
    import dataclasses
    import typing

    def schema_of(tp: Any) -> dict:
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            props = {f.name: schema_of(hints[f.name]) for f in dataclasses.fields(tp)}
            return {"type": "object", "properties": props, "additionalProperties": False}
        if origin is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            inner = schema_of(args[0])
            types = inner.get("type")
            if isinstance(types, str):
                inner = dict(inner, type=[types, "null"])
            return inner
        if origin is list:
            (item,) = typing.get_args(tp)
            return {"type": "array", "items": schema_of(item)}
        if origin is dict:
            return {"type": "object"}
        mapping = {str: "string", int: "integer", float: "number", bool: "boolean"}
        if tp in mapping:
            # "${...}" interpolations are strings in the raw YAML
            return {"type": [mapping[tp], "string"]} if tp is not str else {"type": "string"}
        return {}

    schema = schema_of(Config)
    # Snakemake validates with Draft 2020-12 and warns about any other identifier
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = "synrep config; generated from synrep.config.Config, do not edit"
    schema["properties"]["experiment"] = {"type": "string"}
    return schema
