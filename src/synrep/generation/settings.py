"""Config sections of generation: how generation runs, and the named synthetic data sources
(their guidance, per-mode settings and alignment filter), with the checks of a source."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from synrep.data.settings import CaptionsConfig
from synrep.settings import ConfigError, section_check, setting
from synrep.source_modes import MODES as SOURCE_MODES
from synrep.source_modes import owners

SAMPLERS = ("ddim", "ddpm", "dpmsolver", "euler", "pndm")
IMAGE_FORMATS = ("png", "jpg")
GUIDANCE_KINDS = ("cfg", "clip")
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class GenerationConfig:
    """Defaults of every source (``sources.<name>`` fields left null) and how generation runs."""

    model: str = setting("models/toy_generator", "A diffusers pipeline folder, a hub id, or the shipped toy generator")
    clip_model: str = setting("models/toy_clip", "The CLIP that guides sources of guidance.kind clip (an open_clip "
                              "local-dir folder)")
    sampler: str = setting("dpmsolver", "The diffusers scheduler", choices=SAMPLERS)
    steps: int = setting(10, "Sampling steps", gt=0)
    eta: float = setting(0.0, "The sampler's eta (diffusers' argument; 0 for DDIM: deterministic)")
    guidance_rescale: float = setting(0.0, "diffusers' guidance_rescale of classifier-free guidance (0: off)",
                                      ge=0, le=1)
    images_per_caption: int = setting(4, "l: images stored per caption", gt=0)
    resolution: Optional[int] = setting(None, "Generation resolution (null: the model's native size)")
    save_size: Optional[int] = setting(None, "The size images are saved at (null: as generated)")
    seed: int = setting(0, "Seed of the sampling noise")
    captions_per_shard: int = setting(128, "Captions per shard (one generation job each)", gt=0)
    threads: Optional[int] = setting(
        None, "torch threads of a generation (and sample-quality) job; null: `threads`. On a 2-core CPU the toy "
        "generator makes 1.3x the images/s as two 1-thread jobs side by side, with identical images", gt=0)
    batch_size: int = setting(128, "Images per pipeline call", gt=0)
    dtype: str = setting("float32", "The pipeline's weights and activations", choices=("float32", "float16", "bfloat16"))
    device: str = setting("auto", "Where generation runs (auto: cuda when there is one)", choices=("auto", "cpu", "cuda"))
    image_format: str = setting("png", "Format of the stored images (jpg: JPEG quality 95)", choices=IMAGE_FORMATS)
    resume_images: int = setting(
        512, "A shard job saves its finished captions every this many images (rounded up to whole sampling "
        "batches) as part files, so that a killed or requeued job resumes there; smaller shards are written in "
        "one go. The images are the same either way.", gt=0)
    grid_captions: int = setting(8, "Images in the per-w sample grid logged to MLflow")


@dataclass
class GuidanceConfig:
    """How a source guides its sampler. ``cfg``: classifier-free guidance at scale ``w``.
    ``clip``: the same, plus GLIDE's CLIP guidance at ``clip_scale`` (diffusion/clip_guidance.py)."""

    kind: str = setting("cfg", "cfg: classifier-free guidance; clip: plus GLIDE's CLIP guidance", choices=GUIDANCE_KINDS)
    w: Any = setting(2.0, "A number (e.g. 2), or a set such as [2, 3]: each image then draws its scale from the "
                     "set (seeded; recorded in its provenance) and its noise seed depends on the drawn scale. With "
                     "kind clip, w = 1 is CLIP guidance alone.")
    clip_scale: float = setting(0.0, "kind clip: the gradient's scale s")
    clip_model: Optional[str] = setting(None, "kind clip: the guiding CLIP (an open_clip local-dir folder; null: "
                                        "generation.clip_model)")
    cutouts: int = setting(0, "kind clip: the number of random cut-outs the CLIP scores (0: the whole image)")
    min_alpha_bar: float = setting(
        1.0e-3, "kind clip with a plain CLIP (on x̂0): steps with alpha_bar_t below this are not CLIP-guided (x̂0 is "
        "undefined there; benchmarks/clip_guidance_steps.py); 0: guide every step")


@dataclass
class InpaintSourceConfig:
    """Mode ``inpaint``: each caption's real image with a region regenerated under the caption
    (GLIDE's text-guided inpainting; diffusion/toy/inpaint.py)."""

    region: str = setting("background", "object | background: what is regenerated (the rest is kept)")
    dilate: int = setting(1, "Pixels the object's mask grows by")
    keep_real: bool = setting(
        True, "Image 0 of a caption is its real image and images 1..l-1 are inpainted variants of it, so that "
        "StableRep takes the real image and its variants as one caption's positives")


@dataclass
class AlignmentFilterConfig:
    """The alignment filter of a source (generation/alignment_filter.py): each image scored against
    its caption by a CLIP (CLIPScore, 100 * max(cos, 0)); the index keeps each caption's best."""

    clip_model: str = setting("models/toy_clip", "The scoring CLIP: an open_clip local-dir folder (e.g. models/toy_clip)")
    keep_fraction: Optional[float] = setting(
        None, "Keep this fraction of each caption's images, the best by score (rounded up); exactly one of "
        "keep_fraction and min_score is set", gt=0, le=1)
    min_score: Optional[float] = setting(
        None, "Instead: keep every image scoring at least this (0 to 100)", ge=0, le=100, note="CLIPScore")
    min_images: int = setting(
        2, "At least this many images of each caption are kept (the best), whatever their scores: the "
        "multi-positive loss needs two or more images per caption", ge=2,
        note="the multi-positive loss needs two images of a caption")


DEFAULT_ROUNDS = 2  # a refreshing source's rounds when it names none


def refresh_rounds(refresh: DictConfig) -> int:
    """The rounds a generating source's ``refresh`` makes."""
    return DEFAULT_ROUNDS if refresh.rounds is None else int(refresh.rounds)


@dataclass
class RefreshConfig:
    """Fresh images during training: a source generates ``rounds`` rounds of its l images per caption,
    each round with its own noise seeds, and training reads round floor(pass / every) mod rounds of
    each caption, so every ``every`` passes it sees new images of the same captions (data/rounds.py)."""

    every: int = setting(1, "Passes over the captions per round", ge=1)
    rounds: Optional[int] = setting(
        None, "Rounds generated (after the last, training begins again at round 0); one round is no refresh "
        f"(refresh: null); null: {DEFAULT_ROUNDS}. A union of one refreshing source leaves it null: it reads that "
        "source's rounds on its own `every`", ge=2)


@section_check(AlignmentFilterConfig)
def check_alignment_filter(f: DictConfig, key: str, cfg: DictConfig) -> None:
    """A source's ``filter``: one rule (a fraction kept or a minimum score), at least two images kept."""
    if (f.keep_fraction is None) == (f.min_score is None):
        raise ConfigError(f"config key '{key}': set one of keep_fraction and min_score, got keep_fraction "
                          f"{f.keep_fraction!r} and min_score {f.min_score!r}")
    if not f.clip_model:
        raise ConfigError(f"config key '{key}.clip_model': an open_clip local-dir folder is needed (e.g. models/toy_clip)")


@dataclass
class UnclipSourceConfig:
    """Modes ``unclip`` (caption -> prior -> CLIP image embedding -> decoder) and ``variation`` (a
    caption's real image -> its CLIP image embedding -> l decodings), DALL-E 2's
    (diffusion/toy/unclip.py). The source's ``generator`` is an unCLIP pipeline (models/toy_unclip,
    or diffusers' UnCLIPPipeline / UnCLIPImageVariationPipeline folders)."""

    clip_model: Optional[str] = setting(
        None, "The CLIP whose embeddings the toy unCLIP works in (the one it was trained with); null: "
        "generation.clip_model. diffusers' unCLIP pipelines carry their own.")
    prior_steps: int = setting(25, "Sampling steps of the prior")
    prior_w: float = setting(1.0, "The prior's classifier-free guidance scale")
    prior_samples: int = setting(1, "unclip: prior samples drawn per image, the one with the highest z_i . z_t kept "
                                 "(DALL-E 2 draws 2)")
    use_prior: bool = setting(True, "unclip: false decodes the caption's CLIP *text* embedding, no prior (DALL-E 2's "
                              "ablation)")
    caption: bool = setting(False, "variation: the decoder also sees the caption (DALL-E 2's variations see none)")


# Each mode's settings section: its dataclass (another mode's must stay at its defaults), its name in messages
MODE_SETTINGS = {"inpaint": ("inpainting", InpaintSourceConfig), "unclip": ("unCLIP", UnclipSourceConfig)}


@dataclass
class SourceConfig:
    """A named synthetic data source: how its images are made. Null fields take ``generation.*``.
    Mode ``union`` makes nothing: it is the listed sources' shards read as one data set."""

    generator: Optional[str] = setting(None, "diffusers pipeline folder or hub id; null: generation.model")
    mode: str = setting("text2img", "How its images are made (synrep/source_modes.py)", choices=SOURCE_MODES)
    guidance: GuidanceConfig = setting(GuidanceConfig, "How it guides its sampler")
    inpaint: InpaintSourceConfig = setting(InpaintSourceConfig, "Mode inpaint's settings")
    unclip: UnclipSourceConfig = setting(UnclipSourceConfig, "Modes unclip and variation's settings")
    sampler: Optional[str] = setting(None, "null: generation.sampler", choices=SAMPLERS)
    steps: Optional[int] = setting(None, "Sampling steps; null: generation.steps", gt=0)
    l: Optional[int] = setting(None, "Images per caption; null: generation.images_per_caption", gt=0)
    seed: Optional[int] = setting(None, "Seed of the sampling noise; null: generation.seed")
    captions: Optional[int] = setting(
        None, "Only the first N captions of the caption set (a small source, e.g. the default run's preview of a "
        "mode); null: every caption", gt=0, note="null: every caption")
    prompts: Optional[str] = setting(
        None, "Prompts of its own instead of the caption set: a text file, one prompt per line (e.g. a DreamBooth "
        "subject in new contexts, \"a sks ring on a dark background\"); null: the caption set")
    union: list[str] = setting([], "Mode union: the sources whose shards this one joins (e.g. [w2, subject]); "
                               "nothing is generated")
    image_format: Optional[str] = setting(None, "png | jpg (JPEG quality 95); null: generation.image_format",
                                          choices=IMAGE_FORMATS)
    caption_set: Optional[CaptionsConfig] = setting(
        None, "A caption set of its own instead of the run's (a `captions` section, e.g. {format: concepts}), made "
        "by the captions step into <run>/source_captions/<name>; null: the run's caption set")
    filter: Optional[AlignmentFilterConfig] = setting(
        None, "Keep only the images that match their caption best, by a CLIP's score (a change re-indexes the "
        "shards, it regenerates nothing); null: every image")
    refresh: Optional[RefreshConfig] = setting(
        None, "Fresh images during training: rounds of l images per caption, one round read every `every` passes "
        "(l x rounds stored per caption; a union of this source reads them all as one set, or with a refresh of its "
        "own, `{every: k}`, the same rounds every k passes: another schedule of the same images); null: one set of "
        "l images, read every pass")


# The default run's sources: a source per w, and each generation mode in its smallest form on the first
# 32 captions (judged by source_quality for the generator-family table, trained on by no default run)
DEFAULT_SOURCES = {
    "w2": SourceConfig(guidance=GuidanceConfig(kind="cfg", w=2)),  # the small w StableRep prefers
    "w8": SourceConfig(guidance=GuidanceConfig(kind="cfg", w=8)),  # the large w SimCLR prefers
    "clip30": SourceConfig(captions=32, guidance=GuidanceConfig(kind="clip", w=1, clip_scale=30)),  # GLIDE: CLIP guidance
    "inpaint": SourceConfig(captions=32, generator="models/toy_inpaint", mode="inpaint"),  # GLIDE: inpainting
    "unclip": SourceConfig(captions=32, generator="models/toy_unclip", mode="unclip"),  # DALL-E 2: prior + decoder
    "variation": SourceConfig(captions=32, generator="models/toy_unclip", mode="variation"),  # DALL-E 2: variations
}


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


@section_check(SourceConfig)
def check_source(source: DictConfig, key: str, cfg: DictConfig) -> None:
    name = key.split(".", 1)[1]
    if name == "real" or not SOURCE_NAME.match(name):
        raise ConfigError(f"config key '{key}': {name!r} cannot name a source (letters, digits, _ . + -; not 'real')")
    mode = SOURCE_MODES[source.mode]
    if source.caption_set is not None and (source.prompts is not None or mode.real_image or not mode.generates):
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
    guidance_scales(source.guidance.w, f"{key}.guidance.w")
    g = source.guidance
    if g.kind == "clip":
        if g.clip_scale <= 0:
            raise ConfigError(f"config key '{key}.guidance.clip_scale': must be > 0 with guidance.kind clip, got {g.clip_scale!r}")
        if g.cutouts < 0:
            raise ConfigError(f"config key '{key}.guidance.cutouts': must be >= 0, got {g.cutouts!r}")
        if not 0 <= g.min_alpha_bar < 1:
            raise ConfigError(f"config key '{key}.guidance.min_alpha_bar': must be in [0, 1), got {g.min_alpha_bar!r}")
        if source.sampler in ("euler",):
            raise ConfigError(f"config key '{key}.sampler': CLIP guidance steps on alpha_t; use ddim, ddpm, dpmsolver or pndm")
    elif g.clip_scale or g.clip_model is not None or g.cutouts or g.min_alpha_bar != GuidanceConfig.min_alpha_bar:
        raise ConfigError(f"config key '{key}.guidance.clip_scale': CLIP guidance settings need guidance.kind: clip")


@section_check(SourceConfig)
def check_refresh(source: DictConfig, key: str, cfg: DictConfig) -> None:
    """A source's ``refresh`` (its bounds are its fields'): on a source that generates its images (not
    filtered, no real image standing first in every round), or on a union of one refreshing source,
    which reads that source's rounds on its own schedule."""
    if source.refresh is None:
        return
    if not SOURCE_MODES[source.mode].generates:
        members = list(source.union)
        if len(members) != 1 or members[0] not in cfg.sources or cfg.sources[members[0]].refresh is None:
            raise ConfigError(f"config key '{key}.refresh': a union reads its sources' images as one set; only a "
                              "union of one refreshing source reads its rounds on a schedule of its own")
        if source.refresh.rounds is not None:
            raise ConfigError(f"config key '{key}.refresh.rounds': a union reads the rounds of {members[0]!r} "
                              f"({refresh_rounds(cfg.sources[members[0]].refresh)}); leave rounds out")
    if source.filter is not None:
        raise ConfigError(f"config key '{key}.refresh': a filtered source cannot refresh (the filter keeps images "
                          "across rounds); use one of refresh and filter")
    if SOURCE_MODES[source.mode].first_is_real(source):
        raise ConfigError(f"config key '{key}.refresh': with inpaint.keep_real every caption's image 0 is its real "
                          "image, which no round can renew; set inpaint.keep_real: false")


@section_check(SourceConfig)
def check_union(source: DictConfig, key: str, cfg: DictConfig) -> None:
    """A union joins declared, generated sources (not real images, not other unions), each once,
    with as many images per caption each, so that a run's l means the same for every caption."""
    name = key.split(".", 1)[1]
    ls = set()
    for i, member in enumerate(source.union):
        where = f"{key}.union[{i}]"
        if member not in cfg.sources or member == name:
            raise ConfigError(f"config key '{where}': {member!r} is not another source: one of {list(cfg.sources)}")
        if not SOURCE_MODES[cfg.sources[member].mode].generates:
            raise ConfigError(f"config key '{where}': {member!r} is itself a union (list its sources instead)")
        if cfg.sources[member].filter is not None:
            raise ConfigError(f"config key '{where}': {member!r} is filtered; a union joins whole sources "
                              f"(give the union the filter: sources.{name}.filter)")
        if member in list(source.union)[:i]:
            raise ConfigError(f"config key '{where}': {member!r} is listed twice")
        refresh = cfg.sources[member].refresh  # a refreshing source stores l images per round
        ls.add((cfg.sources[member].l or cfg.generation.images_per_caption) * (refresh_rounds(refresh) if refresh else 1))
    if len(ls) > 1:
        raise ConfigError(f"config key '{key}.union': its sources store different numbers of images per "
                          f"caption ({sorted(ls)}); give them one l")


def check_data_source(cfg: DictConfig, value: str, key: str) -> None:
    """``real`` or the name of a source in ``sources``."""
    if value != "real" and value not in cfg.sources:
        raise ConfigError(f"config key '{key}': {value!r} is not a data source: 'real' or one of "
                          f"{list(cfg.sources)} (define it under 'sources:')")
