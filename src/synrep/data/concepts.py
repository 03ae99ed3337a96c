"""Captions synthesised from a concept list by templates (``captions.format: concepts``), SynCLR's
route to captions without collecting any.

A concept list is a set of *slots* (shape, colour, ...), each a list of concepts, and templates
that name slots (``"a photo of a {colour} {shape}"``). A concept is a word or phrase, or a list of
paraphrases (its first names it). Each caption draws a template uniformly; each slot the template
names takes the next concept of that slot's own shuffled cycle (every concept of a slot once per
cycle, so that every concept appears once the slot has been used as often as it has concepts) and
one of its paraphrases uniformly; "a" before a vowel becomes "an".

The toy world's list (``concepts.file`` null) is its shapes and colours (``toyworld``), sizes and
backgrounds, with the paraphrases and templates its real captions are written in
(data/toyworld.py), and with ``concepts.domains`` its other domains as a slot. On real data, a YAML
file::

    concepts:
      object: [dog, [car, automobile], bicycle]
      place: [a beach, a kitchen]
    templates:
      - "a photo of a {object} on {place}"
      - "{object}"

Captions are drawn until ``count`` distinct ones (after the dedup's normalisation) are made, and
read by the captions step as any caption file (:class:`ConceptStream`, a CaptionStream), so that
they are deduplicated, counted and recorded like any other. A file that cannot be used raises
:class:`CaptionFormatError` naming it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
from omegaconf import DictConfig

from synrep.data import toy_vocabulary
from synrep.data.caption_lines import BadRows, CaptionFormatError, Tally
from synrep.data.caption_readers import CaptionStream
from synrep.data.dedup import normalize_series

__all__ = ["ConceptList", "ConceptStream", "load_concept_file", "synthesise", "toy_concepts"]

# Draws per wanted caption before giving up on finding more distinct ones
MAX_DRAWS_PER_CAPTION = 50
_SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ARTICLE = re.compile(r"\ba (?=[aeiouAEIOU])")


class ConceptList:
    """Slots of concepts (each concept a list of paraphrases, its first the concept's name) and templates."""

    def __init__(self, slots: dict[str, list[list[str]]], templates: list[str], where: str) -> None:
        self.slots, self.templates, self.where = slots, templates, where
        if not templates:
            raise CaptionFormatError(f"{where}: no templates")
        used: set[str] = set()
        for template in templates:
            names = _SLOT.findall(template)
            unknown = [n for n in names if n not in slots]
            if unknown:
                raise CaptionFormatError(f"{where}: template {template!r} names unknown slot(s) {unknown}; "
                                         f"slots: {sorted(slots)}")
            used.update(names)
        for name, concepts in slots.items():
            if not concepts:
                raise CaptionFormatError(f"{where}: slot {name!r} has no concepts")
            if name not in used:
                raise CaptionFormatError(f"{where}: slot {name!r} appears in no template")

    def names(self) -> dict[str, list[str]]:
        return {slot: [c[0] for c in concepts] for slot, concepts in self.slots.items()}


def toy_concepts(cfg: DictConfig, domains: bool = False) -> ConceptList:
    """The toy world's concepts in the templates of its own captions ({s} size, {c} colour, {o}
    shape, {b} background); with ``domains`` its other domains too, as a phrase before the object."""
    tw = cfg.toyworld
    slots = {
        "shape": [list(toy_vocabulary.SHAPE_WORDS[s]) for s in tw.shapes],
        "colour": [[c] for c in tw.colours],
        "size": [list(toy_vocabulary.SIZE_WORDS[s]) for s in toy_vocabulary.SIZES],
        "background": [list(toy_vocabulary.BACKGROUND_WORDS[b]) for b in toy_vocabulary.BACKGROUNDS],
    }
    rename = {"{s}": "{size}", "{c}": "{colour}", "{o}": "{shape}", "{b}": "{background}"}
    templates = []
    for template in toy_vocabulary.TEMPLATES_PLAIN + toy_vocabulary.TEMPLATES_SIZE + toy_vocabulary.TEMPLATES_BACKGROUND:
        for short, long in rename.items():
            template = template.replace(short, long)
        templates.append(template)
    if domains and tw.domains:
        # a domain's phrases that come before the object ("a sketch of {x}")
        slots["domain"] = [[t[: -len("{x}")].strip() for t in toy_vocabulary.DOMAIN_TEMPLATES[d] if t.endswith("{x}")]
                           for d in tw.domains]
        templates += ["{domain} a {colour} {shape}", "{domain} a {size} {colour} {shape}"]
    return ConceptList(slots, templates, "the toy world's concept list")


def load_concept_file(path: str | Path) -> ConceptList:
    """A YAML concept list (module docstring); a file that cannot be used raises CaptionFormatError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CaptionFormatError(f"{path}: no such concept file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CaptionFormatError(f"{path}: not a YAML concept list ({first})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("concepts"), dict) or not isinstance(doc.get("templates"), list):
        raise CaptionFormatError(f"{path}: expected a mapping with 'concepts' (slot: [concepts]) and 'templates' "
                                 "(a list of strings)")
    slots: dict[str, list[list[str]]] = {}
    for slot, concepts in doc["concepts"].items():
        if not isinstance(slot, str) or not _SLOT.fullmatch("{" + slot + "}"):
            raise CaptionFormatError(f"{path}: slot name {slot!r} is not a word (letters, digits, _)")
        if not isinstance(concepts, list):
            raise CaptionFormatError(f"{path}: slot {slot!r}: expected a list of concepts, got {type(concepts).__name__}")
        slots[slot] = []
        for i, concept in enumerate(concepts):
            words = concept if isinstance(concept, list) else [concept]
            if not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise CaptionFormatError(f"{path}: slot {slot!r} concept {i}: expected a word or a list of words, "
                                         f"got {concept!r}")
            slots[slot].append([w.strip() for w in words])
    templates = doc["templates"]
    for i, template in enumerate(templates):
        if not isinstance(template, str) or not template.strip():
            raise CaptionFormatError(f"{path}: template {i}: expected text, got {template!r}")
    return ConceptList(slots, [t.strip() for t in templates], str(path))


def synthesise(concepts: ConceptList, count: int, seed: int) -> tuple[list[str], dict]:
    """``count`` distinct captions (after normalisation) from ``concepts``, drawn with ``seed``, and
    their record: draws made, and how often each concept appears in the captions kept. Raises
    CaptionFormatError when the list cannot make that many distinct captions."""
    rng = np.random.default_rng(seed)
    cycles: dict[str, list[int]] = {slot: [] for slot in concepts.slots}

    def next_concept(slot: str) -> int:
        if not cycles[slot]:
            cycles[slot] = list(rng.permutation(len(concepts.slots[slot])))
        return int(cycles[slot].pop())

    captions: list[str] = []
    seen: set[str] = set()
    used: Counter = Counter()
    draws = 0
    batch = max(64, count)
    while len(captions) < count and draws < MAX_DRAWS_PER_CAPTION * count:
        drawn, picks = [], []
        for _ in range(batch):
            template = concepts.templates[rng.integers(len(concepts.templates))]
            chosen: dict[str, int] = {}
            words = {}
            for slot in dict.fromkeys(_SLOT.findall(template)):
                chosen[slot] = next_concept(slot)
                paraphrases = concepts.slots[slot][chosen[slot]]
                words[slot] = paraphrases[rng.integers(len(paraphrases))]
            drawn.append(_ARTICLE.sub("an ", template.format(**words)))
            picks.append(chosen)
        draws += batch
        # the dedup's own normalisation, so that every caption kept here survives it
        for text, norm, chosen in zip(drawn, normalize_series(pl.Series(drawn)).to_list(), picks):
            if norm in seen or len(captions) == count:
                continue
            seen.add(norm)
            captions.append(text)
            used.update((slot, i) for slot, i in chosen.items())
    if len(captions) < count:
        raise CaptionFormatError(f"{concepts.where}: makes only {len(captions)} distinct captions in {draws} draws, "
                                 f"{count} asked (more concepts or templates, or a smaller count)")
    names = concepts.names()
    record = {
        "slots": {slot: len(c) for slot, c in concepts.slots.items()},
        "templates": len(concepts.templates),
        "draws": draws,
        "concept_counts": {slot: {name: used[(slot, i)] for i, name in enumerate(names[slot])} for slot in names},
    }
    record["concepts_missing"] = [f"{slot}:{name}" for slot, counts in record["concept_counts"].items()
                                  for name, n in counts.items() if n == 0]
    return captions, record


class ConceptStream(CaptionStream):
    """Synthesised captions read as a caption file (row index positions, no urls): what the captions
    step streams and deduplicates. ``record`` holds the concept list's record once iterated."""

    def __init__(self, cfg: DictConfig, captions: DictConfig, count: int, *, max_length: int = 500) -> None:
        spec = captions.concepts
        self.concept_list = load_concept_file(spec.file) if spec.file else toy_concepts(cfg, spec.domains)
        super().__init__(spec.file or "toyworld concepts", "cc3m", max_length=max_length)
        self.format = "concepts"
        self.position = "row"  # a caption's index in the drawn list
        self._bad = BadRows(self.position)
        self.count, self.seed = count, spec.seed
        self.record: dict = {}

    def _reader(self, tally: Tally) -> Iterator[pl.DataFrame]:
        texts, self.record = synthesise(self.concept_list, self.count, self.seed)
        self.record = {"file": str(self.path), "seed": self.seed, "count": self.count, **self.record}
        tally.rows_in = len(texts)
        yield pl.DataFrame({"source_line": np.arange(len(texts), dtype=np.int64), "caption": texts,
                            "url": [None] * len(texts)}, schema={"source_line": pl.Int64, "caption": pl.String,
                                                                  "url": pl.String})
