"""Config sections of the data package: the toy world and the caption set."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig

from synrep.settings import ConfigError, section_check, setting

CAPTION_FORMATS = ("cc3m", "cc12m", "redcaps", "laion", "table", "concepts")
# The toy world's attributes, the labels of every real image, and the values of those that
# toyworld.* does not list (data/toyworld.py draws them)
TOY_ATTRIBUTES = ("shape", "colour", "size", "background")
TOY_SIZES = ("small", "large")
TOY_BACKGROUNDS = ("dark", "light")


def toy_attribute_values(toyworld: DictConfig) -> dict[str, list[str]]:
    """Each toy world attribute's value names, in index order."""
    return {"shape": list(toyworld.shapes), "colour": list(toyworld.colours), "size": list(TOY_SIZES),
            "background": list(TOY_BACKGROUNDS)}


@dataclass
class ToyWorldConfig:
    """The embedded toy world (data/toyworld.py): coloured shapes on backgrounds, their captions and
    their other domains."""

    seed: int = setting(0, "Seed of the world's images and captions")
    image_size: int = setting(16, "Side of the rendered images in pixels (a multiple of 4)", gt=0)
    n_train: int = setting(6000, "Real images (and captions) of the train split", gt=0)
    n_val: int = setting(1000, "Real images of the val split")
    n_test: int = setting(2000, "Real images of the test split")
    shapes: list[str] = setting(["circle", "ring", "square", "frame", "triangle", "cross"],
                                "The shapes drawn (each a class of the shape label)")
    colours: list[str] = setting(["red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"],
                                 "The object colours (each a class of the colour label)")
    clutter_max: int = setting(2, "Distractor specks per image: clutter that no caption mentions")
    max_rotation_deg: float = setting(30.0, "Largest rotation of an object, in degrees either way")
    dark_background: list[float] = setting(
        [0.0, 0.28], "Range [low, high] of each channel of a dark background's two tones (a photo's background "
        "is a gradient between two colours drawn from it)", ge=0, le=1)
    light_background: list[float] = setting(
        [0.62, 0.92], "The same range for a light background; the gap between the two ranges is brightness no "
        "photo's background has", ge=0, le=1)
    exact_duplicate_rate: float = setting(
        0.08, "Fraction of extra rows in the raw caption file that repeat an earlier caption exactly", ge=0, le=1)
    near_duplicate_rate: float = setting(
        0.08, "Fraction of extra rows in the raw caption file that repeat an earlier caption with case / "
        "whitespace / Unicode changes", ge=0, le=1)
    domains: list[str] = setting(
        ["drawing", "negative", "pixelated"],
        "Other domains of the same objects (drawing | negative | pixelated), with captions that name them: the "
        "toy CLIP's corpus beside the photos, never the generator's")
    n_domain_train: int = setting(1000, "Images per domain, train split")
    n_domain_test: int = setting(300, "Images per domain, test split")


@section_check(ToyWorldConfig)
def check_toyworld(world: DictConfig, key: str, cfg: DictConfig) -> None:
    if world.image_size % 4:
        raise ConfigError(f"config key '{key}.image_size': must be a multiple of 4")
    for name in ("dark_background", "light_background"):
        low_high = list(world[name])
        if len(low_high) != 2 or not low_high[0] <= low_high[1]:
            raise ConfigError(f"config key '{key}.{name}': must be [low, high] with low <= high, got {low_high}")


@dataclass
class ConceptsConfig:
    """``captions.format: concepts``: captions synthesised by templates from a concept list
    (SynCLR's route; data/concepts.py), deduplicated like any caption file."""

    file: Optional[str] = setting(
        None, "A YAML file: `concepts: {slot: [concept, ...]}` (a concept: a word, or a list of its paraphrases) "
        "and `templates: [\"a photo of a {slot} ...\", ...]`; null: the toy world's own concepts (shapes, colours, "
        "sizes, backgrounds) in its caption templates")
    count: Optional[int] = setting(
        None, "Distinct captions to make; null: as many as the run's caption set (the `captions` step's)")
    seed: int = setting(0, "Seed of the templates' draws")
    domains: bool = setting(
        False, "Toy world only: add its other domains (toyworld.domains) as a concept slot. Off by default: the "
        "toy generator learnt photo captions only, and reads a domain's words as unknown tokens")


@dataclass
class CaptionSkewRule:
    """One rule of a skewed caption set (``captions.skew``): of the captions it matches, keep a fraction."""

    match: dict[str, Any] = setting(
        {}, "What a caption must be to match (every entry): a toy world attribute (shape, colour, size, "
        "background) and a value or list of values, read from the caption's own image (its toy:// url); or "
        "`caption`: a regular expression searched in the caption's text (any caption file)")
    keep: float = setting(1.0, "The fraction of the matching captions kept, in [0, 1]")


@dataclass
class CaptionsConfig:
    """The caption set (data/captions.py): read, normalised and deduplicated; a source may name a
    caption set of its own (``sources.<name>.caption_set``)."""

    format: str = setting("cc3m", "Format of the caption file (the toy world's files are written in the cc3m "
                          "format); concepts: synthesised from a concept list", choices=CAPTION_FORMATS)
    path: str = setting("${paths.data_dir}/toyworld/captions_raw.tsv", "The caption file")
    column: str = setting("caption", "Column holding the caption, for format=table (csv/tsv/parquet/jsonl)")
    max_length: int = setting(500, "Longest caption kept, in characters", gt=0)
    limit: Optional[int] = setting(None, "Keep only the first N deduplicated captions (null keeps all)", ge=1,
                                   note="or null: keep all; 0 would leave later steps no caption")
    concepts: ConceptsConfig = setting(ConceptsConfig, "format concepts: the concept list and templates")
    skew: list[CaptionSkewRule] = setting(
        [], "A deliberately skewed caption set: rules applied after the dedup and before the limit, e.g. "
        "[{match: {shape: ring, background: light}, keep: 0.1}] (rings mostly on dark backgrounds). A caption "
        "several rules match is kept with the product of their fractions; [] (off): all kept")
    skew_seed: int = setting(0, "Which captions a skew rule's fraction keeps (one uniform draw per caption)")
    held_out: list[dict[str, str]] = setting(
        [], "Attribute pairs no training caption may show together (toy world), e.g. [{colour: red, shape: "
        "ring}]: every caption whose image has both is removed, and runs with a text tower report zero-shot "
        "accuracy on the test images of these pairs against the seen ones; [] (off)")


@section_check(CaptionsConfig)
def check_caption_set(captions: DictConfig, key: str, cfg: DictConfig) -> None:
    """A `captions` section: the run's, or a source's own (sources.<name>.caption_set)."""
    if captions.format == "table" and not captions.column:
        raise ConfigError(f"config key '{key}.column': required when {key}.format=table")
    concepts = captions.concepts
    if concepts.count is not None and concepts.count < 1:
        raise ConfigError(f"config key '{key}.concepts.count': must be >= 1 or null (the run's caption count), "
                          f"got {concepts.count}")
    if concepts.file is not None and not Path(concepts.file).is_file():
        raise ConfigError(f"config key '{key}.concepts.file': {concepts.file} is not a file")
    check_caption_selection(captions, key, cfg.toyworld)
    if key == "captions" and captions.held_out and cfg.eval.dataset != "toyworld":
        raise ConfigError(f"config key 'captions.held_out': the seen / held-out zero-shot needs test images labelled "
                          f"with both attributes (eval.dataset toyworld, not {cfg.eval.dataset!r}); on other "
                          "captions remove pairs with captions.skew rules on the caption text, keep 0")


def check_caption_selection(captions: DictConfig, key: str, toyworld: DictConfig) -> None:
    """``skew`` rules and ``held_out`` pairs of a captions section: known attributes and values, a
    fraction in [0, 1], a regular expression that compiles, two attributes a pair."""
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
        if not 0.0 <= rule.keep <= 1.0:  # here, not as the field's bounds: the default run has no rule to check them on
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
