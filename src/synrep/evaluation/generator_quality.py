"""Do generated images follow their captions? Caption-match accuracy and diversity by w.

The attribute classifier (:mod:`synrep.evaluation.attribute_classifier`) is trained on the toy
world's real train images and used for nothing else. For captions drawn from
the world's templates, the generator makes ``images_per_caption`` images at each guidance scale;
an image matches on an attribute when the classifier reads the value the caption names
(attributes a caption does not name are not scored). Diversity is the mean pairwise RMS pixel
distance (in [0, 1] units) among the images of one caption. A ``real`` row gives the classifier's
accuracy on real test images (the ceiling) and the diversity of real images with equal attributes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.config import run_dir, save_resolved
from synrep.data import toyworld
from synrep.evaluation.attribute_classifier import ATTRIBUTES, predict, train_classifier
from synrep.fileio import atomic_path, write_json, write_text
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
    attrs = [toyworld.Attributes(i % n_shapes, a.colour, a.size, a.background) for i, a in enumerate(attrs)]
    captions = [toyworld.caption_for(a, cfg, rng) for a in attrs]
    return captions, [toyworld.parse_caption(c, cfg) for c in captions]


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


def plot(table: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = table.filter(pl.col("source") == "generated").sort("w")
    real = table.filter(pl.col("source") == "real")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for attr in ATTRIBUTES:
        line = ax1.plot(gen["w"], gen[f"match_{attr}"], marker="o", label=attr)[0]
        ax1.axhline(real[f"match_{attr}"][0], color=line.get_color(), ls=":", lw=1)
    ax1.set(xlabel="guidance scale w", ylabel="caption-match accuracy", ylim=(0, 1.02),
            title="Samples follow their captions (dotted: real-image ceiling)")
    ax1.legend()
    ax2.plot(gen["w"], gen["diversity"], marker="o", color="k")
    ax2.axhline(real["diversity"][0], color="k", ls=":", lw=1, label="real images, same attributes")
    ax2.set(xlabel="guidance scale w", ylabel="mean pairwise RMS distance", title="Diversity per caption")
    ax2.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run(cfg: DictConfig) -> dict[str, Path]:
    import mlflow
    from PIL import Image

    from synrep.generation.pipelines import load_pipeline
    from synrep.generation.sampling import sample_images
    from synrep.generation.sources import image_seed
    from synrep.generation.toy.train import image_grid
    from synrep.tracking import mlflow_run

    torch.set_num_threads(cfg.threads)
    q = cfg.sample_quality
    out = run_dir(cfg, "sample_quality")
    out.mkdir(parents=True, exist_ok=True)
    classifier, ceiling = train_classifier(cfg, q.seed, q.classifier_epochs)
    with atomic_path(out / "attribute_classifier.pt") as tmp:
        torch.save(classifier.state_dict(), tmp)

    captions, named = evaluation_captions(cfg, q.captions, q.seed)
    k = q.images_per_caption
    prompts = [c for c in captions for _ in range(k)]
    seeds = [image_seed(q.seed, ci, i) for ci in range(len(captions)) for i in range(k)]
    pipe = load_pipeline(cfg.generation.model, cfg.generation.sampler, cfg.generation.dtype, cfg.generation.device)

    rows = [{"source": "real", "w": None, **{f"match_{a}": ceiling[a] for a in ATTRIBUTES},
             "diversity": real_diversity(cfg, k, q.seed)}]
    grids = {}
    for w in tqdm(list(q.guidance_scales), desc="sample quality by w", unit="w"):
        images = sample_images(pipe, prompts, seeds, w, cfg.generation)
        pred = predict(classifier, images)
        row: dict = {"source": "generated", "w": float(w)}
        for attr in ATTRIBUTES:
            wanted = np.array([n[attr] if n[attr] is not None else -1 for n in named for _ in range(k)])
            scored = wanted >= 0
            row[f"match_{attr}"] = float((pred[attr][scored] == wanted[scored]).mean()) if scored.any() else None
        row["diversity"] = diversity([images[i * k:(i + 1) * k] for i in range(len(captions))])
        rows.append(row)
        grids[w] = image_grid(images[: 8 * k], rows=8, scale=4)

    table = pl.DataFrame(rows)
    outputs = {"csv": out / "caption_match.csv", "markdown": out / "caption_match.md",
               "json": out / "caption_match.json", "plot": out / "caption_match.png"}
    with atomic_path(outputs["csv"]) as tmp:
        table.write_csv(tmp)
    write_text(outputs["markdown"], markdown_table(table))
    write_json(outputs["json"], {"rows": table.to_dicts(), "captions": captions})
    plot(table, outputs["plot"])
    for w, grid in grids.items():
        path = out / f"samples_w{w:g}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        outputs[f"grid_w{w:g}"] = path
    save_resolved(cfg, out)

    with mlflow_run(cfg, "sample_quality", sections=("sample_quality", "generation")):
        for row in rows:
            prefix = "real" if row["source"] == "real" else f"w{row['w']:g}"
            mlflow.log_metrics({f"{prefix}.{key}": v for key, v in row.items()
                                if key not in ("source", "w") and v is not None})
        for key, path in outputs.items():
            mlflow.log_artifact(str(path), artifact_path="grids" if key.startswith("grid_") else None)
    return outputs
