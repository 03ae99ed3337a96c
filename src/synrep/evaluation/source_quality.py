"""What a data source's images are like, measured on its own shards: the images StableRep trains on.

For every caption of the source, the judge (the attribute classifier, trained on real photos only)
reads each generated image; an image matches on an attribute when it reads the value the caption
names (attributes a caption does not name are not scored). Diversity is the mean pairwise RMS
pixel distance between a caption's images; ``diversity_real`` is the same for k real test photos
per caption that agree with every attribute it names (sample_quality.matched_real_diversity):
the variety a source would have if it drew what the world draws. Every source measured here draws
photos, so the reference is the world's photos (pixel RMS is not comparable across domains: a line
drawing is mostly blank page). CLIP scores: the mean cosine similarity of image and
caption under the guiding CLIP (``generation.clip_model``) and the held-out one
(``sample_quality.heldout_clip``), when they exist. Each value is a mean over captions with its 95%
t-interval over captions (captions are independent draws; a caption's images are not).

Mode ``inpaint`` with ``keep_real`` stores the real image first: it is not scored (it is not made).
The report joins these rows with StableRep's linear probe per source: the generator-family table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig

from synrep import source_modes
from synrep.data import toy_vocabulary
from synrep.data.shards import read_shard, shard_path
from synrep.data.stream import read_kept
from synrep.evaluation import study
from synrep.evaluation.attribute_classifier import ATTRIBUTES, predict
from synrep.evaluation.sample_quality import diversity, matched_real_diversity
from synrep.fileio import write_json
from synrep.generation.alignment_filter import check_index
from synrep.pixels import unit_range
from synrep.settings import run_dir
from synrep.tables import mean_ci


def quality_path(cfg: DictConfig, source: str) -> Path:
    return run_dir(cfg, "source_quality", f"{source}.json")


def over_captions(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean, 95% t-interval half-width (None for one value) and count of the per-caption values
    that are numbers (tables.mean_ci)."""
    values = pl.DataFrame({"value": pl.Series(values, dtype=pl.Float64).fill_nan(None)})
    cells = mean_ci(values.with_columns(all=pl.lit(0)), ["all"], "value")
    if cells.height == 0:
        return {"mean": None, "ci95": None, "n": 0}
    cell = cells.row(0, named=True)
    return {"mean": cell["mean"], "ci95": None if math.isnan(cell["ci95"]) else cell["ci95"], "n": cell["n"]}


def read_source(cfg: DictConfig, source: str) -> tuple[list[str], list[np.ndarray]]:
    """Captions and their generated images (uint8 [k, H, W, 3] each) from the source's shards."""
    from synrep.generation.generate import shards_dir, source_shards
    from synrep.generation.sources import source_spec

    if cfg.sources[source].filter is not None:
        return read_kept_source(cfg, source)
    spec = source_spec(cfg, source)
    captions, groups = [], []
    if not source_modes.get(spec["mode"]).generates:  # a union: its sources' images, one after another
        for member in spec["union"]:
            more = read_source(cfg, member["name"])
            captions, groups = captions + more[0], groups + more[1]
        return captions, groups
    skip = 1 if source_modes.get(spec["mode"]).first_is_real(spec) else 0
    for shard in source_shards(cfg, source):
        path = shard_path(shards_dir(cfg), source, shard.index)
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `python -m synrep generate --source {source}` first")
        for sample in read_shard(path):
            captions.append(sample["record"]["caption"])
            groups.append(np.stack(sample["images"][skip:]))
    return captions, groups


def read_kept_source(cfg: DictConfig, source: str) -> tuple[list[str], list[np.ndarray]]:
    """A filtered source's captions and the images its index keeps of each (what training reads)."""
    path = run_dir(cfg, "shards", source, "index.parquet")
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m synrep index --source {source}` first")
    index = pl.read_parquet(path).sort("shard")
    check_index(cfg, source, index, str(path))
    captions, groups = [], []
    for row in index.iter_rows(named=True):
        kept = read_kept(row["kept"])
        for sample in read_shard(row["path"]):
            captions.append(sample["record"]["caption"])
            groups.append(np.stack([sample["images"][i] for i in sorted(kept[sample["key"]])]))
    return captions, groups


def measure(cfg: DictConfig, source: str, classifier, guides: dict) -> dict:
    from synrep.generation.sources import source_spec, w_params

    captions, groups = read_source(cfg, source)
    spec = source_spec(cfg, source)
    # images per caption: one count, but a filter by min_score keeps each caption's own number
    ks = [len(g) for g in groups]
    k = ks[0] if len(set(ks)) == 1 else None
    ends = np.cumsum(ks)
    images = np.concatenate(groups)
    pred = predict(classifier, images)
    named = [toy_vocabulary.parse_caption(c, cfg) for c in captions]
    row: dict = {"source": source, "mode": spec["mode"], "guidance": w_params(spec)["w_set"] or f"w={w_params(spec)['w']:g}",
                 "captions": len(captions), "images_per_caption": k or float(np.mean(ks))}
    for attr in ATTRIBUTES:
        per_caption = []
        for c, wanted in enumerate(n[attr] for n in named):
            mine = pred[attr][ends[c] - ks[c]:ends[c]]
            per_caption.append(None if wanted is None else float((mine == wanted).mean()))
        row[f"match_{attr}"] = over_captions(per_caption)
    row["diversity"] = over_captions([diversity([g]) for g in groups if len(g) > 1])
    if k is not None and k > 1:  # real photos as many as each caption's images
        row["diversity_real"] = over_captions(matched_real_diversity(cfg, named, k, cfg.sample_quality.seed))
    x = unit_range(images)
    for name, guide in guides.items():
        text = guide.text_embeddings(captions).repeat_interleave(torch.tensor(ks), 0)
        with torch.no_grad():
            similarity = guide.similarity(x, text)
        # one count: the mean of each row of a view (as before); else of each caption's slice
        score = (similarity.view(len(captions), k).mean(1).tolist() if k is not None
                 else [float(part.mean()) for part in similarity.split(ks)])
        row[f"clip_{name}"] = over_captions(score)
    return row


def run(cfg: DictConfig, source: str | None = None) -> dict[str, Path]:
    """``python -m synrep source_quality [--source NAME]``: every source that training reads, or one."""
    from synrep.diffusion.clip_guidance import load_guide
    from synrep.diffusion.clip_model import check_clip_folder, is_clip_folder
    from synrep.generation.sources import referenced_sources

    classifier, _, _ = study.load_judge(cfg)
    guides = {}
    if is_clip_folder(cfg.generation.clip_model):
        guides["guiding"] = load_guide(cfg.generation.clip_model)
    if cfg.sample_quality.heldout_clip:  # as sample_quality: a held-out CLIP named must be there
        heldout = check_clip_folder(cfg.sample_quality.heldout_clip, "sample_quality.heldout_clip")
        guides["heldout"] = load_guide(str(heldout))
    outputs = {}
    for name in [source] if source else referenced_sources(cfg):
        outputs[name] = write_json(quality_path(cfg, name), measure(cfg, name, classifier, guides))
    return outputs
