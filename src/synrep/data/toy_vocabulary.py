"""The toy world's vocabulary: its attribute values (shapes and colours from the config, sizes and
backgrounds fixed), the colour of each colour name, the words and templates that name them, and the
captions made from them: a world caption, a domain's caption, the zero-shot prompts, the parse of a
caption back into attributes, the near-duplicate edits the dedup step must undo. Rendering and the
world's splits are in synrep.data.toyworld."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from synrep.data.settings import TOY_BACKGROUNDS, TOY_SIZES
from synrep.settings import ConfigError

COLOUR_RGB = {
    "red": (0.90, 0.12, 0.12),
    "orange": (0.98, 0.55, 0.08),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.15, 0.75, 0.20),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.25, 0.95),
    "purple": (0.55, 0.15, 0.80),
    "pink": (0.98, 0.50, 0.75),
    "white": (0.95, 0.95, 0.95),
    "grey": (0.55, 0.55, 0.55),
}
SIZES = TOY_SIZES
BACKGROUNDS = TOY_BACKGROUNDS

# Paraphrases: several words for each attribute value.
SHAPE_WORDS = {
    "circle": ["circle", "disc", "round dot"],
    "ring": ["ring", "hoop", "donut"],
    "square": ["square", "filled square", "block"],
    "frame": ["frame", "hollow square", "square outline"],
    "triangle": ["triangle", "wedge", "three-sided shape"],
    "cross": ["cross", "plus sign", "plus"],
}
SIZE_WORDS = {"small": ["small", "tiny", "little"], "large": ["large", "big", "huge"]}
BACKGROUND_WORDS = {"dark": ["dark", "black", "night"], "light": ["light", "pale", "bright"]}

# The other domains and the captions that name them; {x} is the object ("a small red circle").
DOMAIN_TEMPLATES = {
    "drawing": ["a line drawing of {x}", "a sketch of {x}", "{x}, drawn with a pen"],
    "negative": ["a colour negative of {x}", "an inverted photo of {x}", "{x} in negative"],
    "pixelated": ["a pixelated picture of {x}", "pixel art of {x}", "{x}, pixelated"],
}
OBJECT_TEMPLATES = ["a {c} {o}", "a {s} {c} {o}"]

ARTICLE = re.compile(r"\ba (?=[aeiou])")

# {s}: size word, {c}: colour, {o}: shape word, {b}: background word
TEMPLATES_PLAIN = [
    "a {c} {o}",
    "a picture of a {c} {o}",
    "a photo of a {c} {o}",
    "{c} {o}",
    "one {c} {o}",
    "an image showing a {c} {o}",
]
TEMPLATES_SIZE = [
    "a {s} {c} {o}",
    "a photo of a {s} {c} {o}",
    "there is a {s} {o} coloured {c}",
    "a {s} {o} in {c}",
    "{c} {o}, {s}",
]
TEMPLATES_BACKGROUND = [
    "a {c} {o} on a {b} background",
    "a {s} {c} {o} on a {b} background",
    "a {c} {o} against a {b} backdrop",
]


@dataclass(frozen=True)
class Attributes:
    shape: int
    colour: int
    size: int
    background: int


def attribute_names(cfg: DictConfig) -> dict[str, list[str]]:
    return {
        "shape": list(cfg.toyworld.shapes),
        "colour": list(cfg.toyworld.colours),
        "size": list(SIZES),
        "background": list(BACKGROUNDS),
    }


def check_vocabulary(cfg: DictConfig) -> None:
    for i, shape in enumerate(cfg.toyworld.shapes):
        if shape not in SHAPE_WORDS:
            raise ConfigError(
                f"config key 'toyworld.shapes[{i}]': unknown shape {shape!r}; known: {sorted(SHAPE_WORDS)}"
            )
    for i, colour in enumerate(cfg.toyworld.colours):
        if colour not in COLOUR_RGB:
            raise ConfigError(
                f"config key 'toyworld.colours[{i}]': unknown colour {colour!r}; known: {sorted(COLOUR_RGB)}"
            )
    for i, domain in enumerate(cfg.toyworld.domains):
        if domain not in DOMAIN_TEMPLATES:
            raise ConfigError(
                f"config key 'toyworld.domains[{i}]': unknown domain {domain!r}; known: {sorted(DOMAIN_TEMPLATES)}"
            )


def with_articles(text: str) -> str:
    """"a" before a vowel made "an" (templates write "a {c} {o}")."""
    return ARTICLE.sub("an ", text)


def caption_for(attrs: Attributes, cfg: DictConfig, rng: np.random.Generator) -> str:
    """A paraphrased caption that is true of ``attrs``: always colour and shape, sometimes
    size and background."""
    tw = cfg.toyworld
    kind = rng.choice(3, p=[0.4, 0.4, 0.2])
    templates = (TEMPLATES_PLAIN, TEMPLATES_SIZE, TEMPLATES_BACKGROUND)[kind]
    template = templates[rng.integers(len(templates))]
    words = dict(
        c=tw.colours[attrs.colour],
        o=rng.choice(SHAPE_WORDS[tw.shapes[attrs.shape]]),
        s=rng.choice(SIZE_WORDS[SIZES[attrs.size]]),
        b=rng.choice(BACKGROUND_WORDS[BACKGROUNDS[attrs.background]]),
    )
    return ARTICLE.sub("an ", template.format(**words))


def domain_caption_for(attrs: Attributes, domain: str, cfg: DictConfig, rng: np.random.Generator) -> str:
    """A caption of an image in another domain: the domain's phrase around the object, which names
    colour and shape, sometimes size (never the background: a drawing has none)."""
    tw = cfg.toyworld
    obj = OBJECT_TEMPLATES[rng.integers(len(OBJECT_TEMPLATES))].format(
        c=tw.colours[attrs.colour], o=rng.choice(SHAPE_WORDS[tw.shapes[attrs.shape]]),
        s=rng.choice(SIZE_WORDS[SIZES[attrs.size]]))
    templates = DOMAIN_TEMPLATES[domain]
    return ARTICLE.sub("an ", templates[rng.integers(len(templates))].format(x=obj))


def parse_caption(caption: str, cfg: DictConfig) -> dict[str, int | None]:
    """Read the attributes a toy caption names (None where it does not name one).

    Used to score whether generated images match their captions.
    """
    text = " " + unicodedata.normalize("NFKC", caption).lower().replace(",", " ") + " "
    tw = cfg.toyworld
    out: dict[str, int | None] = {"shape": None, "colour": None, "size": None, "background": None}
    # longest phrases first, so "hollow square" is not read as "square"
    shape_phrases = sorted(
        ((w, i) for i, s in enumerate(tw.shapes) for w in SHAPE_WORDS[s]), key=lambda p: -len(p[0])
    )
    for phrase, index in shape_phrases:
        if f" {phrase} " in text:
            out["shape"] = index
            text = text.replace(f" {phrase} ", " ")
            break
    for i, colour in enumerate(tw.colours):
        if f" {colour} " in text:
            out["colour"] = i
    for i, size in enumerate(SIZES):
        if any(f" {w} " in text for w in SIZE_WORDS[size]):
            out["size"] = i
    for i, bg in enumerate(BACKGROUNDS):
        if any(f" {w} " in text for w in BACKGROUND_WORDS[bg]):
            out["background"] = i
    return out


def vocabulary(cfg: DictConfig) -> list[str]:
    """Every word the caption templates can produce (for the toy generator's tokenizer)."""
    words: set[str] = set()
    for template in TEMPLATES_PLAIN + TEMPLATES_SIZE + TEMPLATES_BACKGROUND:
        words.update(template.replace(",", " ").split())
    for group in (SHAPE_WORDS, SIZE_WORDS, BACKGROUND_WORDS):
        for phrases in group.values():
            for phrase in phrases:
                words.update(phrase.split())
    words.update(COLOUR_RGB)
    words = {w for w in words if not w.startswith("{")}
    return sorted(words)


def zero_shot_prompts(cfg: DictConfig, target: str) -> list[list[str]]:
    """Zero-shot prompts per class of an attribute, from the caption templates' own words
    ([] for attributes that captions never name alone)."""
    if target == "shape":
        return [[f"a photo of a {w}" for w in SHAPE_WORDS[s]] + [f"a {w}" for w in SHAPE_WORDS[s]]
                for s in cfg.toyworld.shapes]
    if target == "size":
        return [[f"a {w} {o}" for w in SIZE_WORDS[size] for o in ("circle", "square", "cross")] for size in SIZES]
    return []


NEAR_DUPLICATE_EDITS = ("upper", "title", "spaces", "padding", "fullwidth", "nbsp")


def near_duplicate(caption: str, rng: np.random.Generator) -> str:
    """A variant that normalises (NFKC, lower-case, whitespace) back to ``caption``."""
    edit = NEAR_DUPLICATE_EDITS[rng.integers(len(NEAR_DUPLICATE_EDITS))]
    if edit == "upper":
        return caption.upper()
    if edit == "title":
        return caption.title()
    if edit == "spaces":
        return caption.replace(" ", "  ", 1 + int(rng.integers(3)))
    if edit == "padding":
        return "  " + caption + " "
    if edit == "fullwidth":
        # NFKC maps fullwidth forms (U+FF01..U+FF5E) back to ASCII
        return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in caption)
    return caption.replace(" ", "\u00a0", 1)  # no-break space, NFKC -> space
