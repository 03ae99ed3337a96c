"""The generation step: l images per caption for each data source, written to WebDataset shards.

Image ``i`` of caption ``c`` starts from noise seeded by (source seed, c, i) (and its drawn w, for
a set of scales: ``sources.image_draws``), so every image can be regenerated exactly from its
provenance record (``provenance.regenerate``). A finished shard is reused only when its provenance
matches the source asked for; otherwise it is made again. Shards are written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep.config import run_dir, save_resolved
from synrep.data.shards import (ShardSpec, first_record, remove_stale_temporaries, sample_key, shard_path,
                                shard_ranges, write_shard)
from synrep.generation.pipelines import fingerprint, load_pipeline
from synrep.data import toyworld
from synrep.generation.provenance import input_record, make_record, record_mismatch
from synrep.generation.sampling import caption_images
from synrep.generation.sources import (image_draws, needs_real_images, referenced_sources, source_caption_count,
                                      source_captions, source_spec)


def shards_dir(cfg: DictConfig) -> Path:
    return run_dir(cfg, "shards")


def model_info(cfg: DictConfig, spec: dict) -> dict:
    own = cfg.sources[spec["name"]].generator is not None
    key = f"sources.{spec['name']}.generator" if own else "generation.model"
    return fingerprint(spec["generator"], shards_dir(cfg) / ".fingerprints", key)


def load_captions(cfg: DictConfig) -> pl.DataFrame:
    path = run_dir(cfg, "captions", "captions.parquet")
    if not path.exists():
        raise FileNotFoundError(f"deduplicated captions not found at {path}; run `python -m synrep captions` first")
    # url: where a caption's real image is, for the modes that start from one
    columns = [c for c in ("caption_id", "caption", "url") if c in pl.read_parquet_schema(path)]
    return pl.read_parquet(path, columns=columns)


def source_shards(cfg: DictConfig, source: str, n_captions: int | None = None) -> list[ShardSpec]:
    if n_captions is None:
        n_captions = len(load_captions(cfg))
    spec = source_spec(cfg, source)
    if spec["mode"] == "union":  # its shards are its sources'
        return []
    return shard_ranges(source_caption_count(spec, n_captions), cfg.generation.captions_per_shard, source)


def generate_shard(cfg: DictConfig, spec: dict, captions: pl.DataFrame, shard: ShardSpec, pipe, model: dict,
                   progress: tqdm | None = None) -> Path:
    rows = captions.slice(shard.start, shard.stop - shard.start)
    ids = rows["caption_id"].to_list()
    texts = rows["caption"].to_list()
    draws = [image_draws(spec, cid) for cid in ids]
    real = inputs = None
    if needs_real_images(spec):
        if "url" not in rows.columns:
            raise ValueError(f"source {spec['name']!r} (mode {spec['mode']}) needs each caption's image url, and the "
                             "captions file has no url column")
        urls = rows["url"].to_list()
        real = toyworld.train_images_for(cfg, urls, f"source {spec['name']!r} (mode {spec['mode']})")
        inputs = [input_record(cfg, url, real["images"][k], real["object_mask"][k]) for k, url in enumerate(urls)]
    images = caption_images(pipe, spec, texts, draws, real, progress)
    samples = [
        {
            "key": sample_key(cid),
            "images": list(images[k]),
            "record": make_record(spec, model, pipe, text, cid, draws[k][0], draws[k][1], images.shape[2],
                                  inputs[k] if inputs else None),
        }
        for k, (cid, text) in enumerate(zip(ids, texts))
    ]
    path = shard_path(shards_dir(cfg), shard.source, shard.index)
    remove_stale_temporaries(path)  # one job per shard, so these are a killed run's leftovers
    return write_shard(path, samples, spec["image_format"])


def stale_reason(path: Path, spec: dict, model: dict) -> str | None:
    """Why an existing shard cannot be reused (None: it can; also None when there is no shard)."""
    if not path.exists():
        return None
    differs = record_mismatch(first_record(path), spec, model)
    return f"{path} was made with other settings ({', '.join(differs)})" if differs else None


def run(cfg: DictConfig, source: str | None = None, shard: int | None = None) -> list[Path]:
    """Generate the shards that are missing or stale: every source that training reads, or one
    ``source`` (and one ``shard`` of it)."""
    torch.set_num_threads(cfg.threads)
    captions = load_captions(cfg)
    names = [source] if source is not None else referenced_sources(cfg)
    out_paths = []
    for name in names:
        spec = source_spec(cfg, name)
        if spec["mode"] == "union":
            print(f"source {name!r} joins {[m['name'] for m in spec['union']]}: nothing to generate", flush=True)
            continue
        shards = source_shards(cfg, name, len(captions))
        if shard is not None:
            shards = [s for s in shards if s.index == shard]
            if not shards:
                n = source_caption_count(spec, len(captions))
                raise ValueError(f"shard {shard} does not exist: source {name!r} generates {n} captions, "
                                 f"{-(-n // cfg.generation.captions_per_shard)} shard(s)")
        model = model_info(cfg, spec)
        todo = []
        for s in shards:
            path = shard_path(shards_dir(cfg), name, s.index)
            reason = stale_reason(path, spec, model)
            if reason:
                print(f"regenerating: {reason}", flush=True)
            if reason or not path.exists():
                todo.append(s)
        save_resolved(cfg, shards_dir(cfg) / name)
        if todo:
            pipe = load_pipeline(spec["generator"], spec["sampler"], spec["dtype"], cfg.generation.device)
            total = sum((s.stop - s.start) * spec["l"] for s in todo)
            with tqdm(total=total, desc=f"generate {name}: {len(todo)} shard(s)", unit="img", mininterval=5) as bar:
                for s in todo:
                    start = time.time()
                    generate_shard(cfg, spec, source_captions(spec, captions), s, pipe, model, bar)
                    bar.write(f"shard {name} #{s.index} ({s.stop - s.start} captions) in {time.time() - start:.1f}s")
        out_paths += [shard_path(shards_dir(cfg), name, s.index) for s in shards]
    return out_paths
