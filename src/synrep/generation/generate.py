"""The generation step: l images per caption for each data source, written to WebDataset shards.

Image ``i`` of caption ``c`` starts from noise seeded by (source seed, c, i) (and its drawn w, for
a set of scales: ``sources.image_draws``), so every image can be regenerated exactly from its
provenance record (``provenance.regenerate``). A finished shard is reused only when its provenance
matches the source asked for; otherwise it is made again. Shards are written atomically.

A shard job samples in steps of whole sampling batches, and resizes and encodes each step's images in
a thread pool while the next step samples (Pillow releases the GIL), so the accelerator does not wait
on the CPU. Every ``generation.resume_images`` images it saves the finished captions as a part file
(``.shard-<index>.parts/<digest>/``); a killed or requeued job resumes after the last part, and the
parts are joined into the shard at the end. The batches are those of one pass over the whole shard,
so the shard is byte-identical however often its job was interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain
from pathlib import Path

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from synrep import source_modes
from synrep.data import toyworld
from synrep.data.shards import (
    ShardSpec,
    encode_image,
    first_record,
    read_raw,
    remove_stale_temporaries,
    sample_key,
    shard_path,
    shard_ranges,
    write_shard,
    write_tar,
)
from synrep.diffusion.pipelines import fingerprint, load_pipeline
from synrep.fileio import atomic_path
from synrep.generation.provenance import input_record, make_record, record_mismatch
from synrep.generation.source_images import caption_images
from synrep.generation.sources import (
    image_draws,
    needs_real_images,
    referenced_sources,
    source_caption_count,
    source_captions,
    source_spec,
)
from synrep.settings import InputError, run_dir, save_resolved
from synrep.tracking import progress as progress_bar


def shards_dir(cfg: DictConfig) -> Path:
    return run_dir(cfg, "shards")


def generator_fingerprint(cfg: DictConfig, spec: dict) -> dict:
    own = cfg.sources[spec["name"]].generator is not None
    key = f"sources.{spec['name']}.generator" if own else "generation.model"
    return fingerprint(spec["generator"], shards_dir(cfg) / ".fingerprints", key)


def captions_path(cfg: DictConfig, spec: dict | None = None) -> Path:
    """The run's deduplicated captions, or those of a source with a caption set of its own."""
    own = spec is not None and "caption_set" in spec
    path = run_dir(cfg, *(("source_captions", spec["name"]) if own else ("captions",)), "captions.parquet")
    if not path.exists():
        raise FileNotFoundError(f"deduplicated captions not found at {path}; run `python -m synrep captions` first")
    return path


def load_captions(cfg: DictConfig, start: int = 0, length: int | None = None, spec: dict | None = None) -> pl.DataFrame:
    """The deduplicated captions (``spec``'s own, when it has a caption set), or rows ``start`` ..
    ``start + length`` of them (one shard's: a shard job reads its rows, not the 8.3M of CC12M)."""
    path = captions_path(cfg, spec)
    # url: where a caption's real image is, for the modes that start from one
    columns = [c for c in ("caption_id", "caption", "url") if c in pl.read_parquet_schema(path)]
    return pl.scan_parquet(path).select(columns).slice(start, length).collect()


def caption_count(cfg: DictConfig, spec: dict | None = None) -> int:
    return pl.scan_parquet(captions_path(cfg, spec)).select(pl.len()).collect().item()


def shard_captions(cfg: DictConfig, spec: dict, shard: ShardSpec) -> pl.DataFrame:
    """The captions of one shard of a source (of its own prompts, when it has them)."""
    if "prompts" in spec:
        return source_captions(spec, pl.DataFrame()).slice(shard.start, shard.stop - shard.start)
    return load_captions(cfg, shard.start, shard.stop - shard.start, spec)


def source_shards(cfg: DictConfig, source: str, n_captions: int | None = None) -> list[ShardSpec]:
    if n_captions is None:
        n_captions = caption_count(cfg)
    spec = source_spec(cfg, source)
    if not source_modes.get(spec["mode"]).generates:  # a union: its shards are its sources'
        return []
    if "caption_set" in spec:
        n_captions = caption_count(cfg, spec)
    return shard_ranges(source_caption_count(spec, n_captions), cfg.generation.captions_per_shard, source)


def keeps_real(spec: dict) -> bool:
    """Whether image 0 of each caption is its real image (mode inpaint with keep_real): not sampled."""
    return source_modes.get(spec["mode"]).first_is_real(spec)


def step_captions(spec: dict) -> int:
    """Captions per step: the fewest whose sampled images fill whole sampling batches, so that
    sampling a shard step by step puts the same images in each batch as sampling it in one call."""
    made = spec["l"] - keeps_real(spec)
    return spec["batch_size"] // math.gcd(spec["batch_size"], made) if made else spec["batch_size"]


def parts_dir(path: Path) -> Path:
    return path.with_name(f".{path.stem}.parts")


def encode_images(images: np.ndarray, image_format: str, size: int | None) -> tuple[list[bytes], int]:
    """One caption's images resized to ``size`` (as ``sampling.sample_images`` resizes) and encoded."""
    from PIL import Image

    out = []
    for image in images:
        if size and size != image.shape[0]:
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
        out.append(encode_image(image, image_format))
    return out, (size or images.shape[1])


def generate_shard(cfg: DictConfig, spec: dict, rows: pl.DataFrame, shard: ShardSpec, pipe, model: dict,
                   progress: tqdm | None = None) -> Path:
    """Make one shard from its captions ``rows`` (``shard_captions``)."""
    ids = rows["caption_id"].to_list()
    texts = rows["caption"].to_list()
    draws = [image_draws(spec, cid) for cid in ids]
    real = inputs = None
    if needs_real_images(spec):
        if "url" not in rows.columns:
            raise InputError(f"source {spec['name']!r} (mode {spec['mode']}) needs each caption's image url, and the "
                             "captions file has no url column")
        urls = rows["url"].to_list()
        real = toyworld.train_images_for(cfg, urls, f"source {spec['name']!r} (mode {spec['mode']})")
        inputs = [input_record(cfg, url, real["images"][k], real["object_mask"][k]) for k, url in enumerate(urls)]
    path = shard_path(shards_dir(cfg), shard.source, shard.index)
    remove_stale_temporaries(path)  # one job per shard, so these are a killed run's leftovers
    fmt = spec["image_format"]
    # the resize moves to the encoding threads, except where caption_images itself resizes the
    # real image 0 to the generated size (inpaint keep_real): there it stays as it was
    defer = None if keeps_real(spec) else spec["save_size"]
    sampling = dict(spec, save_size=None) if defer else spec
    step = step_captions(spec)
    per_part = step * max(1, -(-cfg.generation.resume_images // (step * spec["l"])))
    n = len(ids)
    parts = None
    if n > per_part:
        # parts are kept only for the same source, weights and captions
        key = json.dumps({"spec": spec, "weights": model["weights_sha256"], "ids": ids, "texts": texts},
                         sort_keys=True, default=str)
        parts = parts_dir(path) / hashlib.sha256(key.encode()).hexdigest()[:16]
        if parts_dir(path).exists():
            for other in parts_dir(path).iterdir():
                if other != parts:
                    shutil.rmtree(other, ignore_errors=True)
        parts.mkdir(parents=True, exist_ok=True)

    def sample(k: int, encoded: Future) -> dict:
        files, size = encoded.result()
        record = make_record(spec, model, pipe, texts[k], ids[k], draws[k][0], draws[k][1], size,
                             inputs[k] if inputs else None)
        return {"key": sample_key(ids[k]),
                "files": {"json": json.dumps(record, sort_keys=True).encode(),
                          **{f"{i}.{fmt}": data for i, data in enumerate(files)}}}

    finished: list[Path] = []
    pending: deque = deque()  # (part file or None, [(caption, future)])
    samples: list[dict] = []  # the whole shard's, when it has no parts

    def settle(wait: bool) -> None:
        """Write the parts whose images are encoded (all of them with ``wait``)."""
        while pending and (wait or all(f.done() for _, f in pending[0][1])):
            target, futures = pending.popleft()
            if target is None:
                samples.extend(sample(k, f) for k, f in futures)
                continue
            with atomic_path(target) as tmp:
                write_tar(tmp, (sample(k, f) for k, f in futures), fmt)
            finished.append(target)

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for lo in range(0, n, per_part):
            hi = min(n, lo + per_part)
            target = None if parts is None else parts / f"part-{lo:06d}-{hi:06d}.tar"
            if target is not None and target.exists():
                finished.append(target)
                if progress is not None:
                    progress.update((hi - lo) * (spec["l"] - keeps_real(spec)))
                continue
            futures = []
            for a in range(lo, hi, step):
                b = min(hi, a + step)
                part_real = None if real is None else {k: v[a:b] for k, v in real.items()}
                images = caption_images(pipe, sampling, texts[a:b], draws[a:b], part_real, progress)
                futures += [(k, pool.submit(encode_images, images[k - a], fmt, defer)) for k in range(a, b)]
                settle(wait=False)
            pending.append((target, futures))
            # at most one part waits on its encoding while the next samples: memory O(part)
            while len(pending) > 1:
                for _, f in pending[0][1]:
                    f.result()
                settle(wait=False)
        settle(wait=True)
    if parts is None:
        write_shard(path, samples, fmt)
    else:
        write_shard(path, chain.from_iterable(read_raw(p) for p in sorted(finished)), fmt)
        shutil.rmtree(parts_dir(path), ignore_errors=True)
    return path


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
    n_captions = caption_count(cfg)
    names = [source] if source is not None else referenced_sources(cfg)
    out_paths = []
    for name in names:
        spec = source_spec(cfg, name)
        if not source_modes.get(spec["mode"]).generates:
            print(f"source {name!r} joins {[m['name'] for m in spec['union']]}: nothing to generate", flush=True)
            continue
        shards = source_shards(cfg, name, n_captions)
        if shard is not None:
            shards = [s for s in shards if s.index == shard]
            if not shards:
                n = source_caption_count(spec, caption_count(cfg, spec) if "caption_set" in spec else n_captions)
                raise InputError(f"shard {shard} does not exist: source {name!r} generates {n} captions, "
                                 f"{-(-n // cfg.generation.captions_per_shard)} shard(s)")
        model = generator_fingerprint(cfg, spec)
        todo = []
        for s in shards:
            path = shard_path(shards_dir(cfg), name, s.index)
            reason = stale_reason(path, spec, model)
            if reason:
                print(f"regenerating: {reason}", flush=True)
            if reason or not path.exists():
                todo.append(s)
            elif parts_dir(path).exists():  # a job killed after its shard was in place, before cleaning up
                shutil.rmtree(parts_dir(path), ignore_errors=True)
        save_resolved(cfg, shards_dir(cfg) / name)
        if todo:
            pipe = load_pipeline(spec["generator"], spec["sampler"], spec["dtype"], cfg.generation.device)
            total = sum((s.stop - s.start) * spec["l"] for s in todo)
            with progress_bar(total=total, desc=f"generate {name}: {len(todo)} shard(s)", unit="img") as bar:
                for s in todo:
                    start = time.time()
                    generate_shard(cfg, spec, shard_captions(cfg, spec, s), s, pipe, model, bar)
                    bar.write(f"shard {name} #{s.index} ({s.stop - s.start} captions) in {time.time() - start:.1f}s")
        out_paths += [shard_path(shards_dir(cfg), name, s.index) for s in shards]
    return out_paths
