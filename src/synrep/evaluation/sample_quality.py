"""Do generated images follow their captions? Caption-match accuracy and diversity by w.

The attribute classifier (:mod:`synrep.evaluation.attribute_classifier`) is trained on the toy
world's real train images and used for nothing else. For captions drawn from
the world's templates, the generator makes ``images_per_caption`` images at each guidance scale;
an image matches on an attribute when the classifier reads the value the caption names
(attributes a caption does not name are not scored). Diversity is the mean pairwise RMS pixel
distance (in [0, 1] units) among the images of one caption. A ``real`` row gives the classifier's
accuracy on real test images (the ceiling), the diversity of real images with all four attributes
equal (``diversity``), and ``diversity_matched``: that of real images chosen per evaluation caption
as a generated row's are, agreeing on the attributes the caption names and free in the others
(``matched_real_diversity``). Pixel RMS depends on the domain (a line drawing of one shape and colour
is mostly blank page), so a source is compared with real images of its own domain, never across.

With ``sample_quality.clip_scales``, rows of GLIDE's CLIP guidance (kind ``clip``, scale s) join the
classifier-free rows (kind ``cfg``, scale w). Every row is also scored by CLIPs: ``clip_guiding``,
the mean cosine similarity of image and caption under ``generation.clip_model`` (the CLIP that
guides), and ``clip_heldout`` under ``sample_quality.heldout_clip`` (one that guides nothing). GLIDE
found that CLIP guidance raises the guiding CLIP's score faster than true caption match (it is
partly adversarial) while classifier-free guidance improves both; the third plot shows it.
``sample_quality.noised_clip_scales`` add rows guided by GLIDE's own form, a noised CLIP on x_t
(kind ``clip_noised``, by ``sample_quality.noised_clip``), scored also by that CLIP (``clip_noised``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.data import toy_vocabulary, toyworld
from synrep.diffusion.sampling import sample_images
from synrep.evaluation import study
from synrep.evaluation.attribute_classifier import ATTRIBUTES, predict
from synrep.fileio import atomic_path, write_figure
from synrep.generation.settings import GuidanceConfig
from synrep.generation.source_images import sampling_of
from synrep.images import image_grid
from synrep.pixels import unit_range
from synrep.settings import run_dir, to_dict
from synrep.tables import markdown_table


def diversity(groups: list[np.ndarray]) -> float:
    """Mean pairwise RMS distance between images of one group, averaged over groups."""
    values = []
    for images in groups:
        flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
        for a, b in itertools.combinations(range(len(flat)), 2):
            values.append(np.sqrt(np.mean((flat[a] - flat[b]) ** 2)))
    return float(np.mean(values))


def evaluation_captions(cfg: DictConfig, n: int, seed: int) -> tuple[list[str], list[dict]]:
    """Captions from the world's templates, cycling through the shapes so that each is covered."""
    rng = np.random.default_rng(seed)
    attrs = toyworld.sample_attributes(cfg, n, rng)
    n_shapes = len(cfg.toyworld.shapes)
    attrs = [toy_vocabulary.Attributes(i % n_shapes, a.colour, a.size, a.background) for i, a in enumerate(attrs)]
    captions = [toy_vocabulary.caption_for(a, cfg, rng) for a in attrs]
    return captions, [toy_vocabulary.parse_caption(c, cfg) for c in captions]


def real_diversity(cfg: DictConfig, group_size: int, seed: int) -> float:
    test = toyworld.load_split(cfg, "test")
    keys = np.stack([test[k] for k in ATTRIBUTES], 1)
    rng = np.random.default_rng(seed)
    groups = []
    for key in np.unique(keys, axis=0):
        members = np.flatnonzero((keys == key).all(1))
        if len(members) >= group_size:
            groups.append(test["images"][rng.choice(members, group_size, replace=False)])
    return diversity(groups)


def matched_real_diversity(cfg: DictConfig, named: list[dict], k: int, seed: int, domain: str = "photo"
                           ) -> list[float | None]:
    """Per caption (its ``parse_caption`` attributes), the diversity of k real test images of
    ``domain`` ("photo" or one of toyworld.domains) that agree with every attribute the caption
    names, drawn at random: what a generator that draws the domain's real variety would score on
    that caption. None where fewer than k such images exist."""
    if domain == "photo":
        test = toyworld.load_split(cfg, "test")
    else:
        test = toyworld.load_split(cfg, "domains_test")
        keep = test["domain"] == list(cfg.toyworld.domains).index(domain)
        test = {key: value[keep] for key, value in test.items() if len(value) == len(keep)}
    rng = np.random.default_rng(seed)
    out = []
    for attrs in named:
        ok = np.ones(len(test["images"]), bool)
        for attr, value in attrs.items():
            # a drawing has no background (toyworld.render): its captions name none
            if value is not None and attr in test and not (attr == "background" and domain == "drawing"):
                ok &= test[attr] == value
        members = np.flatnonzero(ok)
        out.append(diversity([test["images"][rng.choice(members, k, replace=False)]]) if len(members) >= k else None)
    return out


def clip_scores(guides: dict, images: np.ndarray, captions: list[str], k: int) -> dict[str, float]:
    """Mean cosine similarity of each image and its caption under each CLIP (``clip_<name>``)."""
    out = {}
    x = unit_range(images)
    for name, guide in guides.items():
        text = guide.text_embeddings(captions).repeat_interleave(k, 0)
        with torch.no_grad():
            out[f"clip_{name}"] = float(guide.similarity(x, text).mean())
    return out


def variant_name(kind: str, w: float, s: float | None, min_alpha_bar: float | None = None) -> str:
    """w2, clip_s30_w1, noised_s30_w1: a row's name in grids and MLflow metrics; a plain-CLIP row
    whose min_alpha_bar is not guidance.min_alpha_bar's default adds it (clip_s30_w1_ab0)."""
    if kind == "cfg":
        return f"w{w:g}"
    name = f"{'clip' if kind == 'clip' else 'noised'}_s{s:g}_w{w:g}"
    if kind == "clip" and min_alpha_bar is not None and min_alpha_bar != GuidanceConfig.min_alpha_bar:
        name += f"_ab{min_alpha_bar:g}"
    return name


def plot(table: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = table.filter((pl.col("source") == "generated") & (pl.col("kind") == "cfg")).sort("w")
    clip = table.filter(pl.col("kind") == "clip").sort("min_alpha_bar", "clip_scale")
    noised = table.filter(pl.col("kind") == "clip_noised").sort("clip_scale")
    real = table.filter(pl.col("source") == "real")
    scored = "clip_guiding" in table.columns
    fig, axes = plt.subplots(1, 3 if scored else 2, figsize=(15 if scored else 10, 4))
    ax1, ax2 = axes[:2]
    for attr in ATTRIBUTES:
        line = ax1.plot(gen["w"], gen[f"match_{attr}"], marker="o", label=attr)[0]
        ax1.axhline(real[f"match_{attr}"][0], color=line.get_color(), ls=":", lw=1)
    ax1.set(xlabel="guidance scale w", ylabel="caption-match accuracy", ylim=(0, 1.02),
            title="Does a larger w make samples follow their captions?\n(dotted: the real images, the ceiling)")
    ax1.legend()
    ax2.plot(gen["w"], gen["diversity"], marker="o", color="k")
    ax2.axhline(real["diversity"][0], color="k", ls=":", lw=1, label="real images, same attributes")
    ax2.set(xlabel="guidance scale w", ylabel="mean pairwise RMS distance",
            title="What does a larger w cost in diversity per caption?")
    ax2.legend()
    if scored:
        ax3 = axes[2]
        match = [f"match_{a}" for a in ATTRIBUTES]
        families = [("classifier-free (w)", gen, "o", "clip_guiding")]
        for (floor,), rows in clip.group_by("min_alpha_bar", maintain_order=True):
            families.append((f"CLIP guidance (s, steps with ᾱ ≥ {floor:g})", rows, "s", "clip_guiding"))
        families.append(("noised-CLIP guidance (s)", noised, "^", "clip_noised"))
        for family, rows, marker, guiding in families:
            if rows.height == 0:
                continue
            mean_match = rows.select(pl.mean_horizontal(match)).to_series()
            for col, style in ((guiding, "-"), ("clip_heldout", "--")):
                if col in rows.columns and rows[col].null_count() < rows.height:
                    ax3.plot(rows[col], mean_match, style, marker=marker,
                             label=f"{family}, {'held-out' if col == 'clip_heldout' else 'guiding'} CLIP")
        ax3.set(xlabel="CLIP score (cosine, image vs caption)", ylabel="caption match, mean of attributes",
                title="Does a higher CLIP score mean samples that\nmatch their captions? (per guidance family)")
        ax3.legend(fontsize=7)
    fig.tight_layout()
    write_figure(path, fig)


def run(cfg: DictConfig) -> dict[str, Path]:
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.clip_model import check_clip_folder, is_clip_folder
    from synrep.diffusion.pipelines import load_pipeline

    q = cfg.sample_quality
    out = run_dir(cfg, "sample_quality")
    classifier, ceiling, _ = study.load_judge(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "attribute_classifier.pt") as tmp:
        torch.save(classifier.state_dict(), tmp)
    pipe = load_pipeline(cfg.generation.model, cfg.generation.sampler, cfg.generation.dtype, cfg.generation.device)
    guides = {}
    # the guiding CLIP scores every row when it exists, and must exist when rows are CLIP-guided
    if q.clip_scales or is_clip_folder(cfg.generation.clip_model):
        guides["guiding"] = load_guide(str(check_clip_folder(cfg.generation.clip_model, "generation.clip_model")))
    if q.heldout_clip:
        guides["heldout"] = load_guide(q.heldout_clip)
    if q.noised_clip_scales:
        from synrep.diffusion.noised_clip import is_noised_clip_folder

        if not is_noised_clip_folder(q.noised_clip or ""):
            raise FileNotFoundError(f"config key 'sample_quality.noised_clip': {q.noised_clip!r} is not a noised CLIP "
                                    "folder (`python -m synrep train_noised_clip`)")
        guides["noised"] = load_guide(q.noised_clip)
    rows, captions, grids = measure(cfg, classifier, ceiling, pipe, guides)
    files, metrics = summary(rows, captions, grids)
    return study.report(cfg, out, files, "sample_quality", ("sample_quality", "generation"), metrics,
                        artifact_folders={key: "grids" for key in files if key.startswith("grid_")})


def measure(cfg: DictConfig, classifier, ceiling: dict[str, float], pipe, guides: dict
            ) -> tuple[list[dict], list[str], dict[str, np.ndarray]]:
    """The ``real`` row and one row per guidance setting; the evaluation captions; a grid of each
    setting's first images by its ``variant_name``."""
    from synrep.generation.sources import image_seed

    q = cfg.sample_quality
    captions, named = evaluation_captions(cfg, q.captions, q.seed)
    k = q.images_per_caption
    prompts = [c for c in captions for _ in range(k)]
    seeds = [image_seed(q.seed, ci, i) for ci in range(len(captions)) for i in range(k)]
    matched = [v for v in matched_real_diversity(cfg, named, k, q.seed) if v is not None]
    rows = [{"source": "real", "kind": None, "w": None, "clip_scale": None, "min_alpha_bar": None,
             **{f"match_{a}": ceiling[a] for a in ATTRIBUTES}, "diversity": real_diversity(cfg, k, q.seed),
             "diversity_matched": float(np.mean(matched)) if matched else None}]
    settings = {**to_dict(cfg.generation), "guidance": {}}
    # (kind, w, s, min ᾱ): classifier-free rows by w, then CLIP-guided rows by min ᾱ and s
    variants = [("cfg", float(w), None, None) for w in q.guidance_scales]
    variants += [("clip", float(q.clip_w), float(s), float(a)) for a in q.clip_min_alpha_bars for s in q.clip_scales]
    variants += [("clip_noised", float(q.clip_w), float(s), None) for s in q.noised_clip_scales]
    grids = {}
    for kind, w, s, floor in tqdm(variants, desc="sample quality by guidance", unit="setting"):
        if kind == "clip":
            settings["guidance"] = {"kind": "clip", "clip_model": cfg.generation.clip_model, "clip_scale": s,
                                    "cutouts": q.cutouts, "min_alpha_bar": floor}
        elif kind == "clip_noised":
            settings["guidance"] = {"kind": "clip", "clip_model": q.noised_clip, "clip_scale": s, "cutouts": 0}
        images = sample_images(pipe, prompts, seeds, w, sampling_of(settings))
        pred = predict(classifier, images)
        row: dict = {"source": "generated", "kind": kind, "w": w, "clip_scale": s, "min_alpha_bar": floor}
        for attr in ATTRIBUTES:
            wanted = np.array([n[attr] if n[attr] is not None else -1 for n in named for _ in range(k)])
            scored = wanted >= 0
            row[f"match_{attr}"] = float((pred[attr][scored] == wanted[scored]).mean()) if scored.any() else None
        row["diversity"] = diversity([images[i * k:(i + 1) * k] for i in range(len(captions))])
        row.update(clip_scores(guides, images, captions, k))
        rows.append(row)
        grids[variant_name(kind, w, s, floor)] = image_grid(images[: 8 * k], rows=8, scale=4)
    return rows, captions, grids


def summary(rows: list[dict], captions: list[str], grids: dict[str, np.ndarray]
            ) -> tuple[dict[str, tuple[str, study.Content]], list[tuple[dict[str, float], None]]]:
    """The files (caption_match csv, markdown, json and plot; the grids) and the MLflow metrics of
    the rows, each named by its row's ``variant_name`` (``real`` for the real row)."""
    table = pl.DataFrame(rows)
    files = {"csv": ("caption_match.csv", table), "markdown": ("caption_match.md", markdown_table(table)),
             "json": ("caption_match.json", {"rows": table.to_dicts(), "captions": captions}),
             "plot": ("caption_match.png", lambda path: plot(table, path)),
             **{f"grid_{name}": (f"samples_{name}.png", grid) for name, grid in grids.items()}}
    metrics = []
    for row in rows:
        prefix = "real" if row["source"] == "real" else variant_name(row["kind"], row["w"], row["clip_scale"],
                                                                     row["min_alpha_bar"])
        metrics.append(({f"{prefix}.{key}": v for key, v in row.items()
                         if key not in ("source", "kind", "w", "clip_scale", "min_alpha_bar") and v is not None}, None))
    return files, metrics
