"""The alignment filter (``sources.<name>.filter``): each generated image scored against its caption
by a CLIP, and the source's index keeping only the images of each caption that match it best.

The score is CLIPScore as torchmetrics defines it, 100 * max(cos(E_I, E_T), 0), of one image and its
caption, with any open_clip local-dir model (the toy CLIP on the toy world). A shard's scores are
computed once per CLIP and cached beside the shard (``shard-<i>.clipscore-<CLIP hash>.parquet``,
stamped with the shard's sha256), so a changed ``keep_fraction`` or ``min_score`` costs a read of
small tables, and nothing is regenerated: the generation spec (``sources.source_spec``, which every
record carries) leaves the filter out; the index spec (``index_spec``) adds it.

The index step writes each shard's kept images (``kept/shard-<i>.parquet`` beside the source's
index: key, image) and the index rows name that file and the filter's settings; the stream reads
only the kept images, and training refuses an index made under another filter (``check_index``).
Where image 0 of each caption is its real image (mode inpaint with ``keep_real``), the filter keeps
it and judges only the generated images: it filters what a generator made, not the data set's photos.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig

from synrep import source_modes
from synrep.data.shards import read_shard
from synrep.diffusion.clip_model import check_clip_folder
from synrep.diffusion.pipelines import weights_sha256
from synrep.fileio import atomic_path
from synrep.generation.sources import source_spec
from synrep.settings import InputError

SCORES_STAMP = "synrep.shard_sha256"  # parquet metadata: the shard the cached scores belong to
KEPT_DIR = "kept"


def filter_spec(cfg: DictConfig, name: str) -> dict | None:
    """The source's filter as its index records it (with the CLIP's weights' hash, so that a
    retrained CLIP re-indexes); None without a filter."""
    f = cfg.sources[name].filter
    if f is None:
        return None
    folder = check_clip_folder(f.clip_model, f"sources.{name}.filter.clip_model")
    spec = {"clip_model": str(f.clip_model), "clip_sha256": weights_sha256(folder), "min_images": int(f.min_images)}
    if f.keep_fraction is not None:
        spec["keep_fraction"] = float(f.keep_fraction)
    else:
        spec["min_score"] = float(f.min_score)
    # read off the config, not the resolved spec: index_spec and the sweep's check resolve that already
    source = cfg.sources[name]
    if source_modes.get(source.mode).first_is_real(source):  # absent otherwise: other filters keep their hash
        spec["real_first"] = True
    return spec


def index_spec(cfg: DictConfig, name: str) -> dict:
    """What a source's index is made from: its generation spec, and its filter when it has one
    (absent without one, so that unfiltered sources keep their hash)."""
    spec = source_spec(cfg, name)
    f = filter_spec(cfg, name)
    return spec if f is None else {**spec, "filter": f}


def clip_scores(clip_model: str, images: np.ndarray, captions: list[str]) -> np.ndarray:
    """CLIPScore of each image (uint8 [N, H, W, 3]) and its caption: 100 * max(cos, 0)."""
    # here, not at the top: the Snakefile imports this module's spec functions at every parse
    # (every cluster job's too), and torch takes seconds to import
    import torch

    from synrep.diffusion.clip_guidance import load_guide

    guide = load_guide(clip_model)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        cos = guide.similarity(x, guide.text_embeddings(captions))
    return (100 * cos.clamp(min=0)).numpy().astype(np.float64)


def scores_path(shard: str | Path, clip_sha256: str) -> Path:
    shard = Path(shard)
    return shard.with_name(f"{shard.name.removesuffix('.tar')}.clipscore-{clip_sha256[:16]}.parquet")


def shard_scores(shard: str | Path, shard_sha256: str, f: dict) -> pl.DataFrame:
    """key, image, score of every image of a shard: from the cache when it was made for this shard
    (its sha256) by this CLIP (its hash names the file), else scored and cached."""
    path = scores_path(shard, f["clip_sha256"])
    if path.exists() and pl.read_parquet_metadata(path).get(SCORES_STAMP) == shard_sha256:
        return pl.read_parquet(path)
    keys, images, captions = [], [], []
    for sample in read_shard(shard):
        keys += [sample["key"]] * len(sample["images"])
        images += sample["images"]
        captions += [sample["record"]["caption"]] * len(sample["images"])
    scores = clip_scores(f["clip_model"], np.stack(images), captions) if images else np.zeros(0)
    table = pl.DataFrame({"key": keys, "image": _image_numbers(keys), "score": scores},
                         schema={"key": pl.Utf8, "image": pl.Int64, "score": pl.Float64})
    with atomic_path(path) as tmp:
        table.write_parquet(tmp, metadata={SCORES_STAMP: shard_sha256})
    return table


def _image_numbers(keys: list[str]) -> list[int]:
    """0, 1, ... within each run of one key (a sample's images in stored order)."""
    out, previous, i = [], None, 0
    for key in keys:
        i = i + 1 if key == previous else 0
        out.append(i)
        previous = key
    return out


def kept_images(scores: np.ndarray, f: dict) -> list[int]:
    """The images of one caption the filter keeps, in stored order: the best ``keep_fraction`` of
    them (rounded up), or those scoring at least ``min_score``; never fewer than ``min_images``
    (the best ones), nor more than there are. Ties go to the earlier image. With ``real_first``
    image 0 is the caption's real image: always kept, and the filter judges only the generated
    ones (``keep_fraction`` of them; ``min_images`` counts the real one too)."""
    first = int(f.get("real_first", False))
    generated = scores[first:]
    n = len(generated)
    k = fewest_kept(len(scores), f) - first if "keep_fraction" in f else min(
        n, max(int((generated >= f["min_score"]).sum()), f["min_images"] - first))
    best = np.argsort(-generated, kind="stable")[:k]
    return list(range(first)) + sorted(first + int(i) for i in best)


def fewest_kept(n: int, f: dict) -> int:
    """The fewest images the filter keeps of a caption's ``n``: with ``keep_fraction`` the count
    every caption keeps; with ``min_score`` the floor, ``min_images`` (with ``real_first``, the real
    image and the share of the generated ones)."""
    first = int(f.get("real_first", False))
    k = first + math.ceil(round(f["keep_fraction"] * (n - first), 9)) if "keep_fraction" in f else 0
    return min(n, max(k, f["min_images"]))


def kept_path(folder: Path, shard: int) -> Path:
    return folder / KEPT_DIR / f"shard-{shard:06d}.parquet"


def filter_rows(rows: list[dict], f: dict, folder: Path) -> list[dict]:
    """The index rows of a filtered source: each shard's kept images written beside the index, and
    its row naming them (``kept``), counting them (``images``) and recording the filter."""
    settings = json.dumps(f, sort_keys=True)
    out = []
    for row in rows:
        scores = shard_scores(row["path"], row["sha256"], f)
        kept = {"key": [], "image": []}
        for (key,), group in scores.group_by("key", maintain_order=True):
            chosen = kept_images(group["score"].to_numpy(), f)
            kept["key"] += [key] * len(chosen)
            kept["image"] += group["image"].gather(chosen).to_list()
        path = kept_path(folder, row["shard"])
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            pl.DataFrame(kept, schema={"key": pl.Utf8, "image": pl.Int64}).write_parquet(tmp)
        out.append({**row, "images": len(kept["key"]), "kept": str(path), "filter": settings})
    return out


def check_index(cfg: DictConfig, source: str, index: pl.DataFrame, index_path: str) -> None:
    """Refuse an index made under another filter than the config's (or with none where it asks for
    one, or one where it asks for none): its kept images would be read under the new label."""
    wanted = filter_spec(cfg, source)
    made = json.loads(index["filter"][0]) if "filter" in index.columns and len(index) else None
    if made != wanted:
        raise InputError(f"{index_path} was indexed with filter {made}, the config asks for {wanted} "
                         f"(sources.{source}.filter); rerun `python -m synrep index --source {source}`")

