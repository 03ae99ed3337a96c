"""Does StyleGAN-NADA's adaptation reach the target domain, and what does it keep? The toy
generator adapted by ``train_nada`` (recipes/nada.py), measured at every snapshot of its
training on a fixed set of noises and captions.

``nada.eval_captions`` captions of the world's own kind (``toy_vocabulary.caption_for``: photo captions,
cycling through the shapes), ``nada.eval_images_per_caption`` noises each, sampled as a source
would sample the adapted generator (``generation.sampler``, ``generation.steps``, classifier-free
guidance at ``nada.guidance_scale``). Per row:

- ``target_fraction``: the share of images that the domain classifier (evaluation/domain_classifier.py,
  trained on real images) puts in ``nada.target``; ``domain_<name>``: the share in each domain;
- ``kept_shape`` / ``kept_colour``: the share of images whose shape / colour the attribute classifier
  (the judge, trained on real photos) reads as it reads the frozen generator's image from the same
  noise and caption (content kept);
- ``diversity``: the mean pairwise RMS pixel distance among the images of one caption
  (sample_quality's measure; NADA's global loss collapses it, its directional loss should not);
- ``clip_direction``: the mean cosine of ΔI (adapted minus frozen image embedding) with ΔT under
  the CLIP that trained it (the training objective, on the fixed set).

Rows: ``adapted`` at each snapshot step (step 0: the frozen generator itself), ``baseline``: the
*unadapted* generator prompted with the target domain's words around the same objects ("a line
drawing of a red circle"), and ``real_target``: real target-domain test images, where
``target_fraction`` is the domain classifier's recall and ``kept_*`` the judge's accuracy against
the true labels (how well the judge reads shape and colour in that domain at all: the ceiling of
``kept_*`` for a perfect adaptation).

Outputs under ``<nada.output_dir>/quality/``: ``nada_quality.json``, ``nada_quality.md``,
``nada_curve.png`` and ``samples.png`` (rows: frozen, baseline, adapted at the last step).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.data import toy_vocabulary, toyworld
from synrep.diffusion.sampling import sample_images
from synrep.evaluation import domain_classifier, study
from synrep.evaluation.attribute_classifier import judge, predict
from synrep.evaluation.sample_quality import diversity
from synrep.fileio import write_figure
from synrep.generation.source_images import sampling_of
from synrep.images import image_grid
from synrep.pixels import unit_range
from synrep.recipes import nada, nada_loss
from synrep.settings import to_dict
from synrep.tables import markdown_table

METRICS = ("target_fraction", "kept_shape", "kept_colour", "diversity", "clip_direction")


def eval_set(cfg: DictConfig) -> tuple[list[str], list[str], list[toy_vocabulary.Attributes], list[int]]:
    """(photo captions, the baseline's target-domain prompts for the same objects, their attributes,
    one noise seed per image): fixed by ``nada.seed``."""
    n = cfg.nada
    rng = np.random.default_rng([n.seed, 1])
    shapes = len(cfg.toyworld.shapes)
    attrs = [toy_vocabulary.Attributes(i % shapes, a.colour, a.size, a.background)
             for i, a in enumerate(toyworld.sample_attributes(cfg, n.eval_captions, rng))]
    captions = [toy_vocabulary.caption_for(a, cfg, rng) for a in attrs]
    target = nada.templates(cfg, "target")
    baseline = [toy_vocabulary.with_articles(target[i % len(target)].format(
        x=f"a {cfg.toyworld.colours[a.colour]} {toy_vocabulary.SHAPE_WORDS[cfg.toyworld.shapes[a.shape]][0]}"))
        for i, a in enumerate(attrs)]
    seeds = [int(s) for s in np.random.SeedSequence([n.seed, 2]).generate_state(n.eval_captions * n.eval_images_per_caption)]
    return captions, baseline, attrs, seeds


def text_direction(cfg: DictConfig, guide) -> torch.Tensor:
    """NADA's text direction source -> target under the measuring CLIP ``guide``, as training forms it."""
    objects = nada.objects(cfg)
    return nada_loss.text_direction(guide, nada.prompts(nada.templates(cfg, "source"), objects),
                                    nada.prompts(nada.templates(cfg, "target"), objects))


def reference(images: np.ndarray, classifiers, guide) -> dict:
    """What ``scores`` compares other images with: the judge's reading of uint8 ``images`` and their
    CLIP embeddings (the frozen generator's images, image for image)."""
    with torch.no_grad():
        emb = guide.image_embeddings(unit_range(images))
    return {"read": predict(classifiers[1], images), "embeddings": emb}


def direction_cos(embeddings: torch.Tensor, frozen_embeddings: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """[N]: cos(ΔI, ΔT) of each image, ΔI its CLIP embedding minus its frozen image's (0 where it has
    not moved)."""
    delta = embeddings - frozen_embeddings
    norm = delta.norm(dim=-1)
    return torch.where(norm > 1e-6, (delta @ direction) / norm.clamp_min(1e-6), torch.zeros_like(norm))


def scores(cfg: DictConfig, images: np.ndarray, frozen: dict, classifiers, guide, direction: torch.Tensor,
           target_index: int) -> dict[str, float]:
    """The row's metrics for uint8 images [N, H, W, 3] (k per caption, in caption order) against the
    frozen generator's images (``frozen``: their judge predictions and CLIP embeddings)."""
    domains, attributes = classifiers
    k = cfg.nada.eval_images_per_caption
    predicted = domain_classifier.predict(domains, images)
    read = predict(attributes, images)
    with torch.no_grad():
        emb = guide.image_embeddings(unit_range(images))
    cos = direction_cos(emb, frozen["embeddings"], direction)
    out = {"target_fraction": float((predicted == target_index).mean()),
           "kept_shape": float((read["shape"] == frozen["read"]["shape"]).mean()),
           "kept_colour": float((read["colour"] == frozen["read"]["colour"]).mean()),
           "diversity": diversity([images[i:i + k] for i in range(0, len(images), k)]),
           "clip_direction": float(cos.mean())}
    for i, name in enumerate(domain_classifier.domain_names(cfg)):
        out[f"domain_{name}"] = float((predicted == i).mean())
    return out


def measure(cfg: DictConfig, frozen_pipe, snapshots: dict[int, Path], classifiers, guide, adapted_from: int,
            progress: bool = True) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """One row per snapshot step, the baseline and real target-domain images; and the sample rows
    (frozen, baseline, last step) for a grid. Each snapshot samples as the saved generator does:
    its UNet at t <= ``adapted_from``, the frozen one above."""

    n = cfg.nada
    k = n.eval_images_per_caption
    names = domain_classifier.domain_names(cfg)
    target_index = names.index(n.target)
    captions, baseline_prompts, attrs, seeds = eval_set(cfg)
    sampling = sampling_of(to_dict(cfg.generation))
    w = float(n.guidance_scale)
    direction = text_direction(cfg, guide)

    def sample(pipe, prompts):
        return sample_images(pipe, prompts, seeds, w, sampling, images_per_prompt=k)

    frozen_images = sample(frozen_pipe, captions)
    frozen = reference(frozen_images, classifiers, guide)
    rows = [{"kind": "adapted", "step": 0, **scores(cfg, frozen_images, frozen, classifiers, guide, direction,
                                                    target_index)}]
    baseline_images = sample(frozen_pipe, baseline_prompts)
    rows.append({"kind": "baseline", "step": None,
                 **scores(cfg, baseline_images, frozen, classifiers, guide, direction, target_index)})
    last = frozen_images
    for step, path in tqdm([(s, p) for s, p in snapshots.items() if s > 0], desc="NADA snapshots", unit="snapshot",
                           disable=not progress):
        unet = nada.load_snapshot(copy.deepcopy(frozen_pipe.unet), path)
        pipe = nada.ToyGlideAdaptedPipeline(unet=unet, scheduler=frozen_pipe.scheduler,
                                            text_encoder=frozen_pipe.text_encoder, tokenizer=frozen_pipe.tokenizer,
                                            source_unet=frozen_pipe.unet, adapted_from=adapted_from)
        pipe.set_progress_bar_config(disable=True)
        last = sample(pipe, captions)
        rows.append({"kind": "adapted", "step": step,
                     **scores(cfg, last, frozen, classifiers, guide, direction, target_index)})
    rows.append(real_target_row(cfg, classifiers, target_index))
    examples = {"frozen": frozen_images[::k][:8], "baseline": baseline_images[::k][:8], "adapted": last[::k][:8]}
    return pl.DataFrame(rows, infer_schema_length=None), examples


def real_target_row(cfg: DictConfig, classifiers, target_index: int) -> dict:
    """Real target-domain test images: the domain classifier's recall, the judge's shape and colour
    accuracy against the true labels."""
    domains, attributes = classifiers
    test = toyworld.load_split(cfg, "domains_test")
    chosen = test["domain"] + 1 == target_index
    images = test["images"][chosen]
    read = predict(attributes, images)
    predicted = domain_classifier.predict(domains, images)
    row = {"kind": "real_target", "step": None, "target_fraction": float((predicted == target_index).mean()),
           "kept_shape": float((read["shape"] == test["shape"][chosen]).mean()),
           "kept_colour": float((read["colour"] == test["colour"][chosen]).mean()),
           "diversity": None, "clip_direction": None}
    for i, name in enumerate(domain_classifier.domain_names(cfg)):
        row[f"domain_{name}"] = float((predicted == i).mean())
    return row


def plot(rows: pl.DataFrame, path: Path, target: str) -> None:
    """The curve per step (solid) against the prompted baseline (dashed) and real images (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adapted = rows.filter(pl.col("kind") == "adapted").sort("step")
    baseline = rows.filter(pl.col("kind") == "baseline")
    real = rows.filter(pl.col("kind") == "real_target")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for metric, label in (("target_fraction", f"in the target domain ({target})"), ("kept_shape", "shape kept"),
                          ("kept_colour", "colour kept"), ("clip_direction", "cos(ΔI, ΔT)")):
        line = ax1.plot(adapted["step"], adapted[metric], marker="o", label=label)[0]
        ax1.axhline(baseline[metric][0], color=line.get_color(), ls="--", lw=1)
        if metric != "clip_direction" and real[metric][0] is not None:
            ax1.axhline(real[metric][0], color=line.get_color(), ls=":", lw=1)
    ax1.set(xlabel="NADA step", ylabel="fraction / cosine", ylim=(-0.3, 1.05),
            title="Does NADA reach the target domain and keep the content?\n(dashed: frozen + domain words; dotted: real)")
    ax1.legend(fontsize=7)
    ax2.plot(adapted["step"], adapted["diversity"], marker="o", color="k", label="adapted")
    ax2.axhline(baseline["diversity"][0], color="k", ls="--", lw=1, label="frozen + domain words")
    ax2.set(xlabel="NADA step", ylabel="mean pairwise RMS distance",
            title="Does adapting cost diversity per caption?")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    write_figure(path, fig)


def run(cfg: DictConfig) -> dict[str, Path]:
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.clip_model import check_clip_folder
    from synrep.diffusion.pipelines import load_pipeline

    n = cfg.nada
    torch.set_num_threads(cfg.threads)
    snapshots = nada.snapshot_files(Path(n.output_dir) / "snapshots")
    if not snapshots:
        raise FileNotFoundError(f"no NADA snapshots in {Path(n.output_dir) / 'snapshots'}: run "
                                "`python -m synrep train_nada` first")
    out = Path(n.output_dir) / "quality"
    domains, held_out, origin = domain_classifier.load_or_train(cfg)
    attributes, _, judge_origin = judge(cfg)
    print(f"domain classifier: {origin} (held-out accuracy {held_out['accuracy']:.3f}); judge: {judge_origin}",
          flush=True)
    g = cfg.generation
    frozen_pipe = load_pipeline(str(n.generator), g.sampler, g.dtype, "cpu")
    guide = load_guide(str(check_clip_folder(n.clip_models[0], "nada.clip_models[0]")))  # the measuring CLIP
    # as training switched UNets (recorded in the saved generator), so does every snapshot here
    adapted_from = json.loads((Path(n.output_dir) / "generator" / "model_index.json").read_text())["adapted_from"]
    rows, examples = measure(cfg, frozen_pipe, snapshots, (domains, attributes), guide, adapted_from)
    files, metrics = summary(cfg, rows, examples, held_out)
    return study.report(cfg, out, files, "nada_quality", ("nada", "generation"), metrics)


def summary(cfg: DictConfig, rows: pl.DataFrame, examples: dict[str, np.ndarray], held_out: dict[str, float]
            ) -> tuple[dict[str, tuple[str, study.Content]], list[tuple[dict[str, float], int | None]]]:
    """The files (json, the table as markdown, the curve, the samples grid: rows frozen, baseline
    with domain words, adapted) and the MLflow metrics: the adapted rows' at their NADA step, the
    others' prefixed by their kind."""
    n, g = cfg.nada, cfg.generation
    shown = rows.select("kind", "step", *METRICS, *[f"domain_{d}" for d in domain_classifier.domain_names(cfg)])
    files = {"json": ("nada_quality.json", {"rows": rows.to_dicts(), "domain_classifier_test": held_out,
                                            "source": n.source, "target": n.target,
                                            "guidance_scale": n.guidance_scale, "sampler": g.sampler,
                                            "sampling_steps": g.steps}),
             "table": ("nada_quality.md", f"NADA {n.source} -> {n.target}, w = {n.guidance_scale:g}, {g.sampler} "
                       f"{g.steps} steps, {n.eval_captions} captions x {n.eval_images_per_caption} images\n\n"
                       + markdown_table(shown) + "\n"),
             "curve": ("nada_curve.png", lambda path: plot(rows, path, n.target)),
             "samples": ("samples.png", image_grid(np.concatenate(list(examples.values())), rows=3, scale=4))}
    metrics = []
    for row in rows.iter_rows(named=True):
        values = {k: v for k, v in row.items() if k not in ("kind", "step") and v is not None}
        if row["kind"] == "adapted":
            metrics.append((values, row["step"]))
        else:
            metrics.append(({f"{row['kind']}.{k}": v for k, v in values.items()}, None))
    return files, metrics
