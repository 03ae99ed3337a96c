"""The shard format of generated images: WebDataset tar files plus a parquet index.

One sample per caption: ``<key>.json`` holds the provenance record (caption, caption_id, seeds and
guidance scale of each image, the whole source spec, model, weights hash, scheduler, ...) and
``<key>.<i>.png`` (or ``.jpg``) holds image ``i`` of the caption's l images. Keys are
``c<caption_id:09d>``. One shard covers one data source and one contiguous range of caption rows:
``<shards_dir>/<source>/shard-<index:06d>.tar``; ``<shards_dir>/<source>/index.parquet`` lists them.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import polars as pl
from PIL import Image

from synrep.fileio import atomic_path, sha256_file, write_parquet


def shard_path(shards_dir: str | Path, source: str, index: int) -> Path:
    return Path(shards_dir) / source / f"shard-{index:06d}.tar"


def sample_key(caption_id: int) -> str:
    return f"c{caption_id:09d}"


@dataclass(frozen=True)
class ShardSpec:
    source: str
    index: int
    start: int  # first caption row (inclusive)
    stop: int  # last caption row (exclusive)


def shard_ranges(n_captions: int, captions_per_shard: int, source: str) -> list[ShardSpec]:
    """The shards of one source: contiguous caption ranges, in order."""
    n_shards = -(-n_captions // captions_per_shard)
    return [ShardSpec(source, i, i * captions_per_shard, min(n_captions, (i + 1) * captions_per_shard))
            for i in range(n_shards)]


def encode_image(image: np.ndarray, fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    else:
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_shard(path: str | Path, samples: Iterable[dict], image_format: str = "png") -> Path:
    """Write samples ``{"key", "images": [uint8 HxWx3], "record": dict}`` to a tar, atomically."""
    import webdataset as wds

    path = Path(path)
    with atomic_path(path) as tmp:
        # fixed member times: the same images give a byte-identical shard
        with wds.TarWriter(str(tmp), mtime=0) as sink:
            for sample in samples:
                entry = {"__key__": sample["key"], "json": json.dumps(sample["record"], sort_keys=True).encode()}
                for i, image in enumerate(sample["images"]):
                    entry[f"{i}.{image_format}"] = encode_image(image, image_format)
                sink.write(entry)
    return path


def remove_stale_temporaries(path: str | Path) -> None:
    """Delete what a killed writer of this one shard left behind (its temporary files)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def first_record(path: str | Path) -> dict | None:
    """The provenance record of a shard's first sample, without decoding any image."""
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                return json.loads(tar.extractfile(member).read())
    return None


def read_shard(path: str | Path) -> Iterator[dict]:
    """Yield ``{"key", "record", "images": [uint8 HxWx3]}`` per sample, in stored order."""
    grouped: dict[str, dict] = {}
    order: list[str] = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if key not in grouped:
                grouped[key] = {}
                order.append(key)
            grouped[key][ext] = tar.extractfile(member).read()
    for key in order:
        files = grouped[key]
        images = [
            decode_image(files[name])
            for name in sorted((n for n in files if n != "json"), key=lambda n: int(n.split(".")[0]))
        ]
        yield {"key": key, "record": json.loads(files["json"]), "images": images}


def shard_summary(path: str | Path, spec: ShardSpec | None = None) -> dict:
    n_samples = n_images = 0
    first = last = None
    for sample in read_shard(path):
        n_samples += 1
        n_images += len(sample["images"])
        cid = sample["record"]["caption_id"]
        first = cid if first is None else first
        last = cid
    return {
        "path": str(path),
        "source": spec.source if spec else None,
        "shard": spec.index if spec else None,
        "first_caption_id": first,
        "last_caption_id": last,
        "samples": n_samples,
        "images": n_images,
        "bytes": Path(path).stat().st_size,
        "sha256": sha256_file(path),
    }


def write_index(index_path: str | Path, rows: list[dict]) -> Path:
    return write_parquet(index_path, pl.DataFrame(rows).sort("shard"))
