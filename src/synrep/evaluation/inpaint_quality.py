"""Does text-guided inpainting edit what the caption asks and keep the rest? GLIDE's inpainting,
measured on the toy world with the independent judge (the attribute classifier).

For ``inpaint_quality.images`` real test images and each edit:

- ``background``: the background is regenerated (the object, grown by ``dilate`` pixels, is
  kept) under a caption that names the *other* background ("a red ring on a dark background");
- ``colour``: the object is regenerated under a caption that names another colour, same shape.

Per model (``inpaint_quality.models``: an inpainting model, and a text-to-image one, which
inpaints by replacement), guidance scale w and sampling seed: *edit accuracy* (the judge reads the
attribute the caption asks for), *kept accuracy* (it still reads the original's shape, and the
attribute the edit did not touch) and two PSNRs of the kept region against the original (dB):
``psnr_kept_model``, of the model's own image before the kept region is copied in (the x̂0 it
predicts at the last step: how much of the original it would have kept), and ``psnr_kept_output``,
of the output, which both samplers copy the original into (exact by construction: 100 dB, the cap,
unless the sampler is broken). Cells are the mean ± 95% t-interval over the sampling seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.data import toy_vocabulary, toyworld
from synrep.diffusion.sampling import sample_images
from synrep.evaluation import study
from synrep.evaluation.attribute_classifier import predict
from synrep.generation.source_images import sampling_of
from synrep.images import image_grid
from synrep.settings import ConfigError, run_dir, to_dict
from synrep.tables import markdown_table, mean_ci_table

EDITS = {"background": "background", "colour": "object"}  # edit -> region regenerated


def edit_captions(cfg: DictConfig, test: dict[str, np.ndarray], edit: str, rng: np.random.Generator
                  ) -> tuple[list[str], np.ndarray]:
    """Captions asking each image for ``edit``, and the attribute value each asks for."""
    tw = cfg.toyworld
    n = len(test["images"])
    captions, wanted = [], np.zeros(n, np.int64)
    for i in range(n):
        attrs = {k: int(test[k][i]) for k in ("shape", "colour", "size", "background")}
        if edit == "background":
            attrs["background"] = 1 - attrs["background"]
            wanted[i] = attrs["background"]
            template = toy_vocabulary.TEMPLATES_BACKGROUND[rng.integers(len(toy_vocabulary.TEMPLATES_BACKGROUND))]
            words = dict(c=tw.colours[attrs["colour"]], o=toy_vocabulary.SHAPE_WORDS[tw.shapes[attrs["shape"]]][0],
                         s=toy_vocabulary.SIZE_WORDS[toy_vocabulary.SIZES[attrs["size"]]][0],
                         b=toy_vocabulary.BACKGROUND_WORDS[toy_vocabulary.BACKGROUNDS[attrs["background"]]][0])
            captions.append(toy_vocabulary.with_articles(template.format(**words)))
        else:
            attrs["colour"] = int((attrs["colour"] + 1 + rng.integers(len(tw.colours) - 1)) % len(tw.colours))
            wanted[i] = attrs["colour"]
            captions.append(toy_vocabulary.caption_for(toy_vocabulary.Attributes(**attrs), cfg, rng))
    return captions, wanted


def psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """PSNR (dB) of each image pair over its kept pixels (uint8 [N, H, W, 3], keep bool [N, H, W])."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
    mse = (diff ** 2 * keep[..., None]).sum(axis=(1, 2, 3)) / np.maximum(keep.sum(axis=(1, 2)) * 3, 1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float [N, H, W, 3] in [0, 1] as sampling.sample_images saves images."""
    return (np.clip(np.asarray(images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)


def measure(cfg: DictConfig, classifier, pipes: dict[str, object]) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """One row per (model, edit, w, seed); and a few results per (model, edit) for a grid."""
    from synrep.diffusion.toy.inpaint import region_masks

    q = cfg.inpaint_quality
    test = toyworld.load_split(cfg, "test")
    test = {k: v[: q.images] for k, v in test.items()}
    settings = {**to_dict(cfg.generation), "mode": "inpaint"}
    if settings["save_size"] and settings["save_size"] != test["images"].shape[1]:
        raise ConfigError("config key 'generation.save_size': inpaint_quality compares images at the world's own size")
    rows, examples = [], {}
    # each edit's captions, asked values and masks: the same for every model, w and seed
    asked = {e: (*edit_captions(cfg, test, e, np.random.default_rng([q.seed, list(EDITS).index(e)])),
                 region_masks(test["object_mask"], EDITS[e], q.dilate)) for e in q.edits}
    jobs = [(m, e, float(w), s) for m in pipes for e in q.edits for w in q.guidance_scales for s in q.seeds]
    for model, edit, w, seed in tqdm(jobs, desc="inpainting edits", unit="setting"):
        captions, wanted, masks = asked[edit]
        seeds = [int(s) for s in np.random.SeedSequence([q.seed, seed]).generate_state(len(captions))]
        pipe = pipes[model]
        pipe.unreplaced.clear()
        images = sample_images(pipe, captions, seeds, w, sampling_of(settings),
                               inputs={"images": test["images"], "masks": masks})
        unreplaced = to_uint8(np.concatenate(pipe.unreplaced))
        pred = predict(classifier, images)
        untouched = "colour" if edit == "background" else "background"
        rows.append({
            "model": model, "edit": edit, "w": w, "seed": seed,
            "edit_accuracy": float((pred["background" if edit == "background" else "colour"] == wanted).mean()),
            "kept_shape": float((pred["shape"] == test["shape"]).mean()),
            f"kept_{untouched}": float((pred[untouched] == test[untouched]).mean()),
            "psnr_kept_model": float(np.mean(psnr(unreplaced, test["images"], ~masks))),
            "psnr_kept_output": float(np.mean(psnr(images, test["images"], ~masks))),
        })
        if seed == q.seeds[0] and w == float(q.guidance_scales[-1]):
            examples[f"{model}_{edit}"] = np.concatenate([test["images"][:8], images[:8]])
    return pl.DataFrame(rows), examples


def summary(rows: pl.DataFrame, examples: dict[str, np.ndarray]
            ) -> tuple[dict[str, tuple[str, study.Content]], list[tuple[dict[str, float], None]]]:
    """The files (per-run csv, the summary table as markdown and json, a grid per model and edit:
    originals on top, edited below) and the MLflow metrics: means over seeds per model, edit and w."""
    table = mean_ci_table(rows, ["model", "edit", "w"])
    files = {"runs": ("inpaint_runs.csv", rows), "table": ("inpaint_edits.md", markdown_table(table)),
             "json": ("inpaint_edits.json", {"rows": rows.to_dicts(), "summary": table.to_dicts()}),
             **{f"grid_{name}": (f"edits_{name}.png", image_grid(images, rows=2, scale=4))
                for name, images in examples.items()}}
    means = rows.group_by("model", "edit", "w").agg(pl.exclude("seed").mean())
    metrics = [({f"{row['model']}.{row['edit']}.w{row['w']:g}.{k}": v for k, v in row.items()
                 if k not in ("model", "edit", "w") and v is not None}, None) for row in means.iter_rows(named=True)]
    return files, metrics


def run(cfg: DictConfig) -> dict[str, Path]:
    from synrep.diffusion.pipelines import load_pipeline
    from synrep.diffusion.toy.inpaint import RecordingInpaintPipeline

    q = cfg.inpaint_quality
    out = run_dir(cfg, "inpaint_quality")
    classifier, _, _ = study.load_judge(cfg)
    g = cfg.generation
    pipes = {Path(m).name: RecordingInpaintPipeline.sharing(load_pipeline(m, g.sampler, g.dtype, g.device))
             for m in q.models}
    rows, examples = measure(cfg, classifier, pipes)
    files, metrics = summary(rows, examples)
    return study.report(cfg, out, files, "inpaint_quality", ("inpaint_quality", "generation"), metrics)
