"""Config sections of the data package: the toy world and the caption set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from synrep.settings import ConfigError, section_check, setting

CAPTION_FORMATS = ("cc3m", "cc12m", "redcaps", "laion", "table", "concepts")


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
class CaptionsConfig:
    """The caption set (data/captions.py): read, normalised and deduplicated; a source may name a
    caption set of its own (``sources.<name>.caption_set``)."""

    format: str = setting("cc3m", "Format of the caption file (the toy world's files are written in the cc3m "
                          "format); concepts: synthesised from a concept list", choices=CAPTION_FORMATS)
    path: str = setting("${paths.data_dir}/toyworld/captions_raw.tsv", "The caption file")
    column: str = setting("caption", "Column holding the caption, for format=table (csv/tsv/parquet/jsonl)")
    max_length: int = setting(500, "Longest caption kept, in characters")
    limit: Optional[int] = setting(None, "Keep only the first N deduplicated captions (null keeps all)")
    concepts: ConceptsConfig = setting(ConceptsConfig, "format concepts: the concept list and templates")


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
