"""A personal subject for DreamBooth: one ring instance that the toy world can render but never
does (two tones, a notch), and its near misses for a fine-grained probe (the same ring without the
notch, in one tone, and the world's plain rings), drawn with the world's backgrounds, positions,
clutter and noise."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from synrep.data.toy_vocabulary import BACKGROUNDS, COLOUR_RGB, SIZES, Attributes
from synrep.data.toyworld import draw_canvas, finish_image, render, shape_mask, to_uint8
from synrep.settings import ConfigError, InputError

# The subject: a ring in two tones (left half SUBJECT_COLOURS[0], right half [1]) with a notch cut
# out at its top. No caption names it and no split holds it, so the toy generator never saw it;
# these functions draw from their own seeds and leave the world's streams alone.
SUBJECT_COLOURS = ("orange", "blue")
SUBJECT_NOTCH_DEG = 70.0  # the notch's angular width, centred on the ring's top (object frame)
# The subject and its near misses, for a fine-grained probe: "no_notch" (two tones, whole ring),
# "one_tone" (notch, all SUBJECT_COLOURS[0]) and "plain" (an ordinary ring of the world, render())
RING_VARIANTS = ("subject", "no_notch", "one_tone", "plain")
NEAR_MISS_VARIANTS = RING_VARIANTS[1:]


def _ring_variant_image(variant: str, attrs: Attributes, cfg: DictConfig, rng: np.random.Generator) -> np.ndarray:
    """One ring of ``variant`` ("subject", "no_notch", "one_tone"), float32 [H, W, 3] in [0, 1],
    with the world's background, size, position, rotation, clutter and noise as ``render`` draws
    them. Every variant draws the same numbers from ``rng`` in the same order, so that variants
    rendered from equal generators differ only where the notch or the second tone is."""
    canvas = draw_canvas(attrs, cfg, rng)
    img, u, v = canvas.image, canvas.u, canvas.v
    mask = shape_mask("ring", u, v)
    if variant in ("subject", "one_tone"):
        # angle from the object's up axis; the wedge around it is cut away
        mask &= np.abs(np.arctan2(u, v)) > np.deg2rad(SUBJECT_NOTCH_DEG / 2)
    # both tones are always drawn, so that the variants' streams stay aligned
    tone_a = np.asarray(COLOUR_RGB[SUBJECT_COLOURS[0]]) + rng.normal(0, 0.05, 3)
    tone_b = np.asarray(COLOUR_RGB[SUBJECT_COLOURS[1]]) + rng.normal(0, 0.05, 3)
    shade = rng.uniform(0.85, 1.0)
    colour = np.where((u < 0)[..., None], tone_a, tone_b) if variant in ("subject", "no_notch") else tone_a
    img = np.where(mask[..., None], np.clip(colour * shade, 0, 1), img)

    return finish_image(img, canvas, cfg, rng).astype(np.float32)


def _attribute_index(value, names: tuple[str, ...] | list[str], key: str) -> int | None:
    """None (draw per image), an index, or a name of ``names`` -> an index or None."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in names:
            raise InputError(f"{key} {value!r} is not one of {list(names)}")
        return list(names).index(value)
    if not 0 <= int(value) < len(names):
        raise InputError(f"{key} {value!r} is not an index of {list(names)}")
    return int(value)


def render_subject(cfg: DictConfig, n: int, seed, background=None, size=None, variant: str = "subject"
                   ) -> tuple[np.ndarray, list[Attributes]]:
    """n images of the subject (or of one of its near misses, ``variant`` in ``RING_VARIANTS``):
    uint8 [n, H, W, 3] and each image's Attributes (shape: ring; colour: SUBJECT_COLOURS[0]'s index
    in ``toyworld.colours``, -1 when absent; for "plain", the ring's own world colour).

    Deterministic from ``seed`` (an int, a sequence of ints or a numpy SeedSequence).
    ``background`` ("dark" / "light" or 0 / 1) and ``size`` ("small" / "large" or 0 / 1): fixed,
    or None to draw each image's at random, as the world does."""
    tw = cfg.toyworld
    if "ring" not in tw.shapes:
        raise ConfigError(f"config key 'toyworld.shapes': the subject is a ring, but the world has none ({list(tw.shapes)})")
    if variant not in RING_VARIANTS:
        raise InputError(f"unknown ring variant {variant!r}; one of {list(RING_VARIANTS)}")
    fixed_bg = _attribute_index(background, BACKGROUNDS, "background")
    fixed_size = _attribute_index(size, SIZES, "size")
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    attr_seq, render_seq = root.spawn(2)
    attr_rng = np.random.default_rng(attr_seq)
    backgrounds = attr_rng.integers(0, len(BACKGROUNDS), n)
    sizes = attr_rng.integers(0, len(SIZES), n)
    colours = attr_rng.integers(0, len(tw.colours), n)  # "plain" rings only
    ring = list(tw.shapes).index("ring")
    tone = list(tw.colours).index(SUBJECT_COLOURS[0]) if SUBJECT_COLOURS[0] in tw.colours else -1
    images = np.zeros((n, tw.image_size, tw.image_size, 3), np.uint8)
    attrs = []
    for i, r in enumerate(render_seq.spawn(n)):
        bg = int(backgrounds[i]) if fixed_bg is None else fixed_bg
        sz = int(sizes[i]) if fixed_size is None else fixed_size
        rng = np.random.default_rng(r)
        if variant == "plain":
            a = Attributes(ring, int(colours[i]), sz, bg)
            images[i] = to_uint8(render(a, cfg, rng))
        else:
            a = Attributes(ring, tone, sz, bg)
            images[i] = to_uint8(_ring_variant_image(variant, a, cfg, rng))
        attrs.append(a)
    return images, attrs


def render_other_rings(cfg: DictConfig, n: int, seed, background=None, size=None
                       ) -> tuple[np.ndarray, list[Attributes], list[str]]:
    """n near misses of the subject, the variants of ``NEAR_MISS_VARIANTS`` in turn (ordinary
    rings, rings without the notch, rings in one tone): uint8 [n, H, W, 3], Attributes and each
    image's variant name. Deterministic from ``seed``; each variant has its own stream."""
    names = [NEAR_MISS_VARIANTS[i % len(NEAR_MISS_VARIANTS)] for i in range(n)]
    images = np.zeros((n, cfg.toyworld.image_size, cfg.toyworld.image_size, 3), np.uint8)
    attrs: list[Attributes | None] = [None] * n
    seeds = np.random.SeedSequence(seed).spawn(len(NEAR_MISS_VARIANTS))
    for k, variant in enumerate(NEAR_MISS_VARIANTS):
        index = [i for i, name in enumerate(names) if name == variant]
        if not index:
            continue
        made, made_attrs = render_subject(cfg, len(index), seeds[k], background, size, variant)
        images[index] = made
        for i, a in zip(index, made_attrs):
            attrs[i] = a
    return images, attrs, names
