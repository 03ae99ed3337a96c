"""Named data sources: what makes a synthetic data set, and how each image's seed and w are drawn.

A source (``sources.<name>`` in the config) names a generator, a mode, its guidance and sampler,
l and a seed; fields it leaves null take the ``generation.*`` value. ``source_spec`` resolves it to
the plain dict that every provenance record carries, so that a record alone regenerates its image
and a shard is reused only when the record matches the spec asked for.

Modes (``mode``): ``text2img``, a caption to l images; ``inpaint``, the caption's real image with
a region (``inpaint.region``: the object or the background) regenerated under the caption, l
variants (the first the real image itself with ``inpaint.keep_real``); ``unclip``, DALL-E 2's caption
-> prior -> CLIP image embedding -> decoder; ``variation``, the caption's real image -> its CLIP image
embedding -> l decodings (positives of one real image). Guidance (``guidance``): ``cfg``,
classifier-free guidance at scale ``w``; ``w`` may be a set, from which each image draws its scale;
``clip``, the same plus GLIDE's CLIP guidance at ``clip_scale`` by an open_clip model (on x̂0), or by
GLIDE's noised CLIP (on x_t) when ``clip_model`` is one (diffusion/noised_clip.py).

What a source generates: the caption set, or its own ``prompts`` (a text file, one prompt a line:
e.g. a DreamBooth subject in new contexts), the first ``captions`` of them when set. Mode ``union``
generates nothing: it joins other sources' shards into one data set (``union: [w2, subject]``), which
any run trains on by its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from synrep import source_modes
from synrep.generation.settings import guidance_scales, refresh_rounds
from synrep.settings import ConfigError, hashed_section, to_dict

if TYPE_CHECKING:
    import polars as pl

# Generation settings that change the images (and so belong to a source's identity)
IMAGE_SETTINGS = ("eta", "guidance_rescale", "resolution", "save_size", "dtype", "batch_size", "image_format",
                  "captions_per_shard")


def source_spec(cfg: DictConfig, name: str) -> dict:
    """The resolved spec of source ``name``: plain data, with every default filled in."""
    if name not in cfg.sources:
        raise ConfigError(f"{name!r} is not a source: one of {list(cfg.sources)} (config key 'sources')")
    source, g = cfg.sources[name], cfg.generation
    mode = source_modes.get(source.mode)
    if not mode.generates:
        members = [source_spec(cfg, member) for member in source.union]
        return {"name": name, "mode": mode.name, "union": members, "l": members[0]["l"]}
    scales = guidance_scales(source.guidance.w, f"sources.{name}.guidance.w")
    spec = {
        "name": name,
        "generator": source.generator or g.model,
        "mode": source.mode,
        "guidance": guidance_spec(source.guidance, scales, g, f"sources.{name}.guidance"),
        "sampler": source.sampler or g.sampler,
        "steps": source.steps or g.steps,
        "l": source.l or g.images_per_caption,
        "seed": g.seed if source.seed is None else source.seed,
    }
    if source.refresh is not None:  # rounds of l images, stored one after another: l x rounds per caption
        spec["refresh"] = {"rounds": refresh_rounds(source.refresh), "images_per_round": spec["l"]}
        spec["l"] *= spec["refresh"]["rounds"]
    # absent when unset, so that the specs of sources without them keep their hash
    if source.captions is not None:
        spec["captions"] = source.captions
    if source.prompts is not None:
        spec["prompts"] = prompts_spec(source.prompts)
    if source.caption_set is not None:  # its own caption set (the captions step's source_captions/<name>)
        spec["caption_set"] = hashed_section("captions", to_dict(source.caption_set))
    elif source.prompts is None and (cfg.captions.skew or cfg.captions.held_out):
        # the run's caption set is skewed or holds pairs out: which captions exist changed with it
        spec["caption_selection"] = {k: to_dict(cfg.captions)[k] for k in ("skew", "skew_seed", "held_out")}
    settings = to_dict(g)
    spec.update({key: settings[key] for key in IMAGE_SETTINGS})
    if source.image_format is not None:  # a source's own format (e.g. JPEG for a large one)
        spec["image_format"] = source.image_format
    # the mode's own settings: the unCLIP ones resolved with the CLIP they work in
    for section in mode.settings:
        spec[section] = unclip_spec(cfg, name, spec["generator"]) if section == "unclip" else to_dict(source[section])
    return spec


def unclip_spec(cfg: DictConfig, name: str, generator: str) -> dict:
    """The unCLIP settings of the mode, and for the toy unCLIP the CLIP it works in with its weights'
    hash (diffusers' unCLIP pipelines carry their own CLIP, hashed with their weights)."""
    source, generation = cfg.sources[name], cfg.generation
    out = to_dict(source.unclip)
    for key in source_modes.get(source.mode).record_omits:
        out.pop(key)
    if out.get("prior_samples") == 1:  # absent at its default, so that earlier unclip sources keep their hash
        out.pop("prior_samples")
    if is_toy_unclip(cfg, name, generator):
        from synrep.diffusion.clip_model import check_clip_folder
        from synrep.diffusion.pipelines import weights_sha256

        key = f"sources.{name}.unclip.clip_model" if source.unclip.clip_model else "generation.clip_model"
        out["clip_model"] = source.unclip.clip_model or generation.clip_model
        out["clip_sha256"] = weights_sha256(check_clip_folder(out["clip_model"], key))
    else:
        out.pop("clip_model")
    return out


def is_toy_unclip(cfg: DictConfig, name: str, generator: str) -> bool:
    """Whether the source's generator is a toy unCLIP: the folder the ``train_unclip`` rule makes
    (known before it exists, so that Snakemake plans the rule and the source together), or a saved
    ``ToyUnCLIPPipeline`` folder."""
    from synrep.diffusion.pipelines import model_folder

    if Path(generator).resolve() == Path(cfg.toy_unclip.output_dir).resolve():
        return True
    folder = model_folder(generator, f"sources.{name}.generator")
    return '"ToyUnCLIPPipeline"' in (folder / "model_index.json").read_text()


def refresh_reading(cfg: DictConfig, name: str) -> tuple[int, int, int] | None:
    """How training reads a refreshing source: (passes per round, rounds, images per round); None
    for real images, a source without ``refresh`` or a union without one (it reads every round as
    one set). A union with a refresh reads its one source's rounds every ``every`` passes of its own.
    ``every`` is not part of the source's spec (it changes no image): the training identity has it."""
    if name == "real" or cfg.sources[name].refresh is None:
        return None
    spec = source_spec(cfg, name)
    rounds = (spec["union"][0] if "union" in spec else spec)["refresh"]
    return int(cfg.sources[name].refresh.every), rounds["rounds"], rounds["images_per_round"]


def needs_real_images(spec: dict) -> bool:
    """Whether the mode starts from each caption's real image (and its object mask)."""
    return source_modes.get(spec["mode"]).real_image


def guidance_spec(guidance: DictConfig, scales: list[float], generation: DictConfig, key: str) -> dict:
    """kind and w; with CLIP guidance also its scale, cut-outs, the guiding CLIP and its weights'
    hash (a retrained CLIP makes the source's shards stale)."""
    spec = {"kind": guidance.kind, "w": scales if isinstance(to_dict(guidance)["w"], list) else scales[0]}
    if guidance.kind == "clip":
        from synrep.diffusion.clip_model import check_clip_folder
        from synrep.diffusion.noised_clip import is_noised_clip_folder
        from synrep.diffusion.pipelines import weights_sha256

        model = guidance.clip_model or generation.clip_model
        where = f"{key}.clip_model" if guidance.clip_model else "generation.clip_model"
        folder = check_clip_folder(model, where)
        if is_noised_clip_folder(folder) and guidance.cutouts:
            raise ConfigError(f"config key '{key}.cutouts': a noised CLIP ({where}: {model}) scores the whole x_t; "
                              "cut-outs are for a plain CLIP on x̂0")
        spec.update(clip_scale=float(guidance.clip_scale), cutouts=int(guidance.cutouts), clip_model=model,
                    clip_sha256=weights_sha256(folder))
        if not is_noised_clip_folder(folder):  # a noised CLIP guides every step (clip_guidance)
            spec["min_alpha_bar"] = float(guidance.min_alpha_bar)
    return spec


def scale_set(spec: dict) -> list[float]:
    w = spec["guidance"]["w"]
    return list(w) if isinstance(w, list) else [float(w)]


def w_params(spec: dict) -> dict:
    """The source's w for tables and MLflow: a number, or the set as text and its mean. With CLIP
    guidance ``w_set`` names it too (``2+CLIP s=30``), so that tables keep such a source apart from
    a classifier-free one at the same w."""
    if not source_modes.get(spec["mode"]).generates:  # a union: tables keep a union apart from its sources: w_set names them
        ws = [w_params(member)["w"] for member in spec["union"]]
        return {"w": float(np.mean(ws)), "w_set": "+".join(member["name"] for member in spec["union"])}
    g = spec["guidance"]
    w = g["w"]
    if isinstance(w, list):
        out = {"w": float(np.mean(w)), "w_set": "{" + ",".join(f"{v:g}" for v in w) + "}"}
    else:
        out = {"w": float(w), "w_set": None}
    if g["kind"] == "clip":
        out["w_set"] = f"{out['w_set'] or format(out['w'], 'g')}+CLIP s={g['clip_scale']:g}"
    return out


def prompts_spec(path: str) -> dict:
    """A prompts file as a source's spec holds it: where, how many prompts, and its content's hash
    (a changed file makes the source's shards stale)."""
    import hashlib

    data = Path(path).read_bytes()
    return {"path": str(path), "count": len(parse_prompts(data.decode("utf-8"))),
            "sha256": hashlib.sha256(data).hexdigest()}


def read_prompts(path: str) -> list[str]:
    """The prompts of a file, one a line (blank lines are skipped)."""
    return parse_prompts(Path(path).read_text(encoding="utf-8"))


def parse_prompts(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def source_captions(spec: dict, captions: "pl.DataFrame") -> "pl.DataFrame":
    """The captions a source generates (caption_id, caption[, url]): the caption set's, or its own
    prompts (ids 0, 1, ... in file order), the first ``captions`` of them when set."""
    import polars as pl

    if "prompts" in spec:
        texts = read_prompts(spec["prompts"]["path"])
        captions = pl.DataFrame({"caption_id": list(range(len(texts))), "caption": texts})
    return captions.head(source_caption_count(spec, len(captions)))


def source_caption_count(spec: dict, n_captions: int) -> int:
    """How many captions the source generates, from a caption set of ``n_captions``: the first ones
    (of its own prompts, when it has them); a union, those of its sources together."""
    if not source_modes.get(spec["mode"]).generates:
        return sum(source_caption_count(member, n_captions) for member in spec["union"])
    n = spec["prompts"]["count"] if "prompts" in spec else n_captions
    return min(n, spec["captions"]) if spec.get("captions") else n


def referenced_sources(cfg: DictConfig) -> list[str]:
    """The sources that training reads (``train.data`` and the sweep's data axis, in config order),
    then those only judged (``sample_quality.sources``, when sample quality is measured)."""
    names = [cfg.train.data]
    for grid in cfg.sweep.grids:
        names += list(grid.data or [cfg.train.data])
    return made_sources(cfg, names)


def made_sources(cfg: DictConfig, trained: list[str], judged: bool = True) -> list[str]:
    """The sources generated for ``trained`` data names: those (not ``real``), the ones only judged
    (``sample_quality.sources``, when sample quality is measured, unless ``judged`` is false), and
    a union's sources before it (they are generated, the union only joins them)."""
    names = list(trained) + (list(cfg.sample_quality.sources) if judged and cfg.sample_quality.enabled else [])
    return list(dict.fromkeys(member for n in names if n != "real" for member in [*cfg.sources[n].union, n]))


def _seed(*parts: int) -> int:
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def image_seed(base_seed: int, caption_id: int, image_index: int) -> int:
    """The noise seed of image ``image_index`` of caption ``caption_id`` at a single w (the same
    at every single w, so that two one-w sources differ only through guidance)."""
    return _seed(base_seed, caption_id, image_index)


def image_draws(spec: dict, caption_id: int) -> tuple[list[int], list[float]]:
    """Noise seed and guidance scale of each of the caption's l images (l x rounds for a refreshing
    source: image i of round r is image r x l + i, so that the rounds together are the images of a
    source with l x rounds, and each round has its own seeds).

    With a set of scales, image i draws its scale from the set (seeded by the source's seed, the
    caption and i), and its noise seed includes the drawn scale, so that images pooled from
    several scales never share their noise.
    """
    scales = scale_set(spec)
    l, seed = spec["l"], spec["seed"]
    if len(scales) == 1:
        return [image_seed(seed, caption_id, i) for i in range(l)], scales * l
    drawn = [scales[np.random.default_rng([seed, caption_id, i, 1]).integers(len(scales))] for i in range(l)]
    seeds = [_seed(seed, caption_id, i, round(w * 1000)) for i, w in enumerate(drawn)]
    return seeds, drawn
