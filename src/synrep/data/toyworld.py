"""The embedded toy world: captioned images rendered from attributes.

It stands in for a web caption set (CC3M: captions paired with "real" images) and for a labelled
evaluation set (ImageNet: train / val / test splits labelled by attribute), and is deterministic
from a seed. Each image shows one object (shape, colour, size) at a random position and rotation,
with colour jitter, on a two-tone noisy background, with a few distractor specks. Captions name the
colour and shape, and sometimes size and background, through paraphrasing templates, so that many
distinct captions describe the same attributes; the raw caption file also carries exact and near
duplicates (case, whitespace, Unicode variants) for the dedup step to remove.

The world also renders its objects in other *domains* (line drawings, colour negatives, pixelated
pictures) with captions that name the domain ("a line drawing of a red circle"). They are the toy
CLIP's corpus beside the photos, never the generator's: as web-scale CLIP beside a narrower
text-to-image model, the toy CLIP knows words that the toy generator has never seen.

Outputs (under ``<data_dir>/toyworld/``):
    captions_raw.tsv            CC3M format (caption <TAB> url), url = toy://train/<index>
    real/{train,val,test}.npz   images uint8 [N, H, W, 3] and one int array per attribute
    real/domains_{train,test}.npz  the other domains: images, attributes, ``domain`` (index into
                                ``toyworld.domains``) and ``captions``
    attributes.json             attribute names and their class names, and the world's config
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from synrep.data.toy_vocabulary import (
    BACKGROUNDS,
    COLOUR_RGB,
    DOMAIN_TEMPLATES,
    SIZES,
    Attributes,
    attribute_names,
    caption_for,
    check_vocabulary,
    domain_caption_for,
    near_duplicate,
)
from synrep.fileio import atomic_path, write_json, write_text
from synrep.settings import ConfigError, InputError, save_resolved, to_dict

# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_SUPERSAMPLE = 4


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the object's own frame, coordinates in [-1, 1] (v points up)."""
    au, av = np.abs(u), np.abs(v)
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 0.85**2
    if shape == "ring":
        return (r2 <= 0.95**2) & (r2 >= 0.5**2)
    if shape == "square":
        return np.maximum(au, av) <= 0.72
    if shape == "frame":
        m = np.maximum(au, av)
        return (m <= 0.8) & (m >= 0.42)
    if shape == "triangle":
        # apex up at (0, 0.9), base at v = -0.75
        return (v >= -0.75) & (au <= (0.9 - v) * 0.62)
    if shape == "cross":
        return ((au <= 0.28) & (av <= 0.95)) | ((av <= 0.28) & (au <= 0.95))
    raise ValueError(f"unknown shape {shape!r}")


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """``mask`` shrunk by k pixels (4-neighbourhood), outside the image counting as empty."""
    out = mask.copy()
    for axis in (0, 1):
        for shift in (k, -k):
            moved = np.roll(mask, shift, axis=axis)
            edge = [slice(None)] * mask.ndim
            edge[axis] = slice(0, k) if shift > 0 else slice(-k, None)
            moved[tuple(edge)] = False
            out &= moved
    return out


@dataclass
class Canvas:
    """A supersampled image's background and its object's frame, before the object is drawn."""

    xs: np.ndarray  # pixel-centre grid in [0, size), supersampled
    ys: np.ndarray
    image: np.ndarray  # float [H * s, W * s, 3]: the background
    u: np.ndarray  # the object's frame: coordinates in radii, rotated with the object
    v: np.ndarray


def draw_canvas(attrs: Attributes, cfg: DictConfig, rng: np.random.Generator) -> Canvas:
    """The background (a two-tone gradient, dark or light) and the object's size, position and
    rotation, drawn from ``rng`` in a fixed order that every renderer shares."""
    tw = cfg.toyworld
    size = tw.image_size
    coords = (np.arange(size * _SUPERSAMPLE, dtype=np.float32) + 0.5) / _SUPERSAMPLE
    xs, ys = np.meshgrid(coords, coords)
    lo, hi = tw.dark_background if attrs.background == 0 else tw.light_background
    c0 = rng.uniform(lo, hi, 3)
    c1 = rng.uniform(lo, hi, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((xs - size / 2) * np.cos(angle) + (ys - size / 2) * np.sin(angle)) / size + 0.5
    t = np.clip(t, 0, 1)[..., None]
    image = (1 - t) * c0 + t * c1
    radius = (0.20 if attrs.size == 0 else 0.34) * size * rng.uniform(0.9, 1.1)
    margin = radius * 0.95
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    theta = np.deg2rad(rng.uniform(-tw.max_rotation_deg, tw.max_rotation_deg))
    dx, dy = (xs - cx) / radius, -(ys - cy) / radius
    return Canvas(xs, ys, image, dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta))


def finish_image(img: np.ndarray, canvas: Canvas, cfg: DictConfig, rng: np.random.Generator, clutter: bool = True
            ) -> np.ndarray:
    """Clutter (small specks no caption mentions; none drawn, and no number taken, without
    ``clutter``), then a box filter down to the target size (anti-aliasing) and sensor noise."""
    size = cfg.toyworld.image_size
    for _ in range(rng.integers(0, cfg.toyworld.clutter_max + 1) if clutter else 0):
        sx, sy = rng.uniform(0, size, 2)
        half = rng.uniform(0.5, 1.0)
        speck = (np.abs(canvas.xs - sx) <= half) & (np.abs(canvas.ys - sy) <= half)
        img = np.where(speck[..., None], rng.uniform(0, 1, 3), img)
    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(img + rng.normal(0, 0.025, img.shape), 0, 1)


def render(
    attrs: Attributes, cfg: DictConfig, rng: np.random.Generator, domain: str = "photo", with_mask: bool = False,
    *, paper: bool | float | None = None, outline: bool | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render one image, float32 [H, W, 3] in [0, 1]. Jitter comes from ``rng``. ``with_mask``:
    also the object's mask, bool [H, W], the pixels the object covers at least in part (what an
    inpainting edit keeps or regenerates).

    ``domain``: "photo" (the world's own images), or one of ``DOMAIN_TEMPLATES``: "drawing" (the
    object's outline, one pixel wide, in its colour on paper, no clutter), "negative" (the photo
    inverted) or "pixelated" (the photo in 2x2 blocks). A photo draws from ``rng`` exactly as before
    domains existed, so the world's splits did not change with them.

    ``paper`` (the background replaced by paper, without clutter) and ``outline`` (the object drawn
    as its outline) are the two changes that make a drawing of a photo; ``None`` takes the domain's
    own (both for a drawing, neither otherwise), and a number for ``paper`` is the brightness of a
    uniform background in place of a drawing's paper (0.85-0.97). One change alone renders an image
    halfway between the two domains; with ``outline`` alone the draws from ``rng`` are the photo's, so
    only the object's inside differs from the photo of the same ``rng``."""
    tw = cfg.toyworld
    size = tw.image_size
    paper = domain == "drawing" if paper is None else paper
    outline = domain == "drawing" if outline is None else outline
    canvas = draw_canvas(attrs, cfg, rng)
    img, u, v = canvas.image, canvas.u, canvas.v
    mask = shape_mask(tw.shapes[attrs.shape], u, v)[..., None]
    colour = np.asarray(COLOUR_RGB[tw.colours[attrs.colour]]) + rng.normal(0, 0.05, 3)
    shade = rng.uniform(0.85, 1.0)
    if paper is not False:
        img = np.full_like(img, rng.uniform(0.85, 0.97) if paper is True else paper)
    if outline:
        mask = mask & ~_erode(mask[..., 0], _SUPERSAMPLE)[..., None]
    img = np.where(mask, np.clip(colour * shade, 0, 1), img)
    object_mask = mask[..., 0].reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).any(axis=(1, 3))

    img = finish_image(img, canvas, cfg, rng, clutter=paper is False)
    if domain == "negative":
        img = 1.0 - img
    elif domain == "pixelated":
        blocks = img[: size // 2 * 2, : size // 2 * 2].reshape(size // 2, 2, size // 2, 2, 3).mean(axis=(1, 3))
        img = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)
    elif domain not in ("photo", "drawing"):
        raise ValueError(f"unknown domain {domain!r}; known: photo, {', '.join(DOMAIN_TEMPLATES)}")
    return (img.astype(np.float32), object_mask) if with_mask else img.astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def sample_attributes(cfg: DictConfig, n: int, rng: np.random.Generator) -> list[Attributes]:
    tw = cfg.toyworld
    shapes = rng.integers(0, len(tw.shapes), n)
    colours = rng.integers(0, len(tw.colours), n)
    sizes = rng.integers(0, len(SIZES), n)
    backgrounds = rng.integers(0, len(BACKGROUNDS), n)
    return [Attributes(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(shapes, colours, sizes, backgrounds)]


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def world_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.data_dir, "toyworld")


def render_split(cfg: DictConfig, n: int, seed_seq: np.random.SeedSequence, caption_rng=None,
                 domains: list[str] | None = None):
    """n images, their object masks (bool [n, H, W]) and captions (when ``caption_rng`` is given);
    ``domains``: each image's domain (default: photos)."""
    attr_rng, render_seed = (np.random.default_rng(s) for s in seed_seq.spawn(2))
    attrs = sample_attributes(cfg, n, attr_rng)
    render_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(render_seed.integers(2**63)).spawn(n)]
    domains = domains or ["photo"] * n
    size = cfg.toyworld.image_size
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i, (a, r, d) in enumerate(zip(attrs, render_rngs, domains)):
        image, masks[i] = render(a, cfg, r, d, with_mask=True)
        images[i] = to_uint8(image)
    captions = None
    if caption_rng is not None:
        captions = [caption_for(a, cfg, caption_rng) if d == "photo" else domain_caption_for(a, d, cfg, caption_rng)
                    for a, d in zip(attrs, domains)]
    return attrs, images, masks, captions


def render_domains(cfg: DictConfig, n_per_domain: int, seed_seq: np.random.SeedSequence):
    """``n_per_domain`` images of each of ``toyworld.domains``, interleaved, with their captions."""
    names = list(cfg.toyworld.domains)
    domains = [names[i % len(names)] for i in range(n_per_domain * len(names))]
    render_seq, caption_seq = seed_seq.spawn(2)
    attrs, images, _, captions = render_split(cfg, len(domains), render_seq, np.random.default_rng(caption_seq),
                                              domains)
    return attrs, images, captions, np.array([names.index(d) for d in domains], dtype=np.int64)


def _save_split(path: Path, images: np.ndarray, attrs: list[Attributes], captions=None, **extra) -> None:
    arrays = {
        "images": images,
        "shape": np.array([a.shape for a in attrs], dtype=np.int64),
        "colour": np.array([a.colour for a in attrs], dtype=np.int64),
        "size": np.array([a.size for a in attrs], dtype=np.int64),
        "background": np.array([a.background for a in attrs], dtype=np.int64),
    }
    if captions is not None:
        arrays["captions"] = np.array(captions, dtype=object).astype(str)
    arrays.update(extra)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def load_split(cfg_or_dir, split: str) -> dict[str, np.ndarray]:
    """Load a real split: ``images`` uint8 [N, H, W, 3], attribute arrays, ``captions`` (train)."""
    directory = cfg_or_dir if isinstance(cfg_or_dir, (str, Path)) else world_dir(cfg_or_dir)
    path = Path(directory) / "real" / f"{split}.npz"
    if not path.exists():
        raise FileNotFoundError(
            f"toy world split {split!r} not found at {path}; run `python -m synrep toyworld` first"
        )
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


TRAIN_URL = "toy://train/"


def train_index(url: str, what: str = "this step") -> int:
    """The train-split row of a caption's url (``toy://train/<i>``, as the caption file names it)."""
    if not url.startswith(TRAIN_URL):
        raise InputError(f"caption url {url!r} is not a toy world image: {what} reads real images from the toy "
                         "world only")
    return int(url[len(TRAIN_URL):])


def train_images_for(cfg_or_dir, urls: list[str], what: str = "this step") -> dict[str, np.ndarray]:
    """The real train images (uint8 [N, H, W, 3]) and object masks (bool [N, H, W]) of caption urls."""
    split = load_split(cfg_or_dir, "train")
    if "object_mask" not in split:
        raise FileNotFoundError("the toy world's train.npz has no object masks: render it again "
                                "(`python -m synrep toyworld`)")
    index = np.asarray([train_index(u, what) for u in urls], dtype=np.int64)
    return {"images": split["images"][index], "object_mask": split["object_mask"][index]}


def target_world_run(cfg: DictConfig) -> dict[str, Path]:
    """The NADA target domain (``nada.target``) as a toy world of its own under ``nada.target_world``:
    real/{train,val,test}.npz of images in that domain only, sized as the world's domain splits
    (train ``n_domain_train``, val ``n_domain_test``, test ``n_test``), from streams of their own.
    StableRep evaluated with ``eval.root`` there measures how it transfers to the domain."""
    domain = cfg.nada.target
    names = ["photo", *cfg.toyworld.domains]
    if domain not in names:
        raise ConfigError(f"config key 'nada.target': unknown domain {domain!r}; known: {', '.join(names)}")
    out = Path(cfg.nada.target_world)
    # spawn key (6, domain): apart from the world's own streams (0-4) and its domain splits (5)
    seqs = np.random.SeedSequence(cfg.toyworld.seed, spawn_key=(6, names.index(domain))).spawn(3)
    sizes = (cfg.toyworld.n_domain_train, cfg.toyworld.n_domain_test, cfg.toyworld.n_test)
    outputs = {}
    for split, n, seq in zip(("train", "val", "test"), sizes, seqs):
        attrs, images, masks, _ = render_split(cfg, n, seq, domains=[domain] * n)
        outputs[split] = out / "real" / f"{split}.npz"
        _save_split(outputs[split], images, attrs, object_mask=masks)
    save_resolved(cfg, out)
    return outputs


def run(cfg: DictConfig) -> dict[str, Path]:
    """Render the world and write its caption file and real splits."""
    check_vocabulary(cfg)
    out = world_dir(cfg)
    root = np.random.SeedSequence(cfg.toyworld.seed)
    train_seq, val_seq, test_seq, caption_seq, dup_seq = root.spawn(5)
    caption_rng = np.random.default_rng(caption_seq)

    outputs: dict[str, Path] = {}
    train_attrs, train_images, train_masks, train_captions = render_split(cfg, cfg.toyworld.n_train, train_seq,
                                                                          caption_rng)
    _save_split(out / "real" / "train.npz", train_images, train_attrs, train_captions, object_mask=train_masks)
    outputs["train"] = out / "real" / "train.npz"
    for split, n, seq in (("val", cfg.toyworld.n_val, val_seq), ("test", cfg.toyworld.n_test, test_seq)):
        attrs, images, masks, _ = render_split(cfg, n, seq)
        _save_split(out / "real" / f"{split}.npz", images, attrs, object_mask=masks)
        outputs[split] = out / "real" / f"{split}.npz"
    # Spawn key 5: the first five streams (above) are those of a world without domains, unchanged.
    domain_seq = np.random.SeedSequence(cfg.toyworld.seed, spawn_key=(5,))
    for split, n, seq in zip(("train", "test"), (cfg.toyworld.n_domain_train, cfg.toyworld.n_domain_test),
                             domain_seq.spawn(2)):
        attrs, images, captions, domain = render_domains(cfg, n, seq)
        path = out / "real" / f"domains_{split}.npz"
        _save_split(path, images, attrs, captions, domain=domain)
        outputs[f"domains_{split}"] = path

    # The raw caption file: one row per train image, plus repeated rows (exact and near
    # duplicates of earlier captions) inserted at random places, as scraped caption sets have.
    dup_rng = np.random.default_rng(dup_seq)
    rows = [(c, f"toy://train/{i}") for i, c in enumerate(train_captions)]
    n = len(rows)
    n_exact = int(round(cfg.toyworld.exact_duplicate_rate * n))
    n_near = int(round(cfg.toyworld.near_duplicate_rate * n))
    inserts: dict[int, list[tuple[str, str]]] = {}
    for k in range(n_exact + n_near):
        src = int(dup_rng.integers(n))
        text = rows[src][0] if k < n_exact else near_duplicate(rows[src][0], dup_rng)
        # inserted before row `pos`, which lies after its source: the repeat is the later one
        pos = int(dup_rng.integers(src + 1, n + 1))
        inserts.setdefault(pos, []).append((text, rows[src][1]))
    merged: list[tuple[str, str]] = []
    for i, row in enumerate(rows):
        merged.extend(inserts.get(i, []))
        merged.append(row)
    merged.extend(inserts.get(n, []))
    write_text(out / "captions_raw.tsv", "".join(f"{c}\t{u}\n" for c, u in merged))
    outputs["captions"] = out / "captions_raw.tsv"

    write_json(
        out / "attributes.json",
        {"attributes": attribute_names(cfg), "domains": ["photo", *cfg.toyworld.domains], "image_size": cfg.toyworld.image_size,
         "toyworld": to_dict(cfg.toyworld)},
    )
    outputs["attributes"] = out / "attributes.json"
    # Only the toyworld section: data/ is versioned by DVC (data.dvc), and unrelated keys (a run
    # name, a learning rate) must not change its hash.
    save_resolved(OmegaConf.create({"toyworld": to_dict(cfg.toyworld)}), out)
    return outputs
