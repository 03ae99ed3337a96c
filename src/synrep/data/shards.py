"""The shard format of generated images: WebDataset tar files plus a parquet index.

One sample per caption: ``<key>.json`` holds the provenance record (caption, caption_id, seeds and
guidance scale of each image, the whole source spec, model, weights hash, scheduler, ...) and
``<key>.<i>.png`` (or ``.jpg``) holds image ``i`` of the caption's l images. Keys are
``c<caption_id:09d>``. One shard covers one data source and one contiguous range of caption rows:
``<shards_dir>/<source>/shard-<index:06d>.tar``; ``<shards_dir>/<source>/index.parquet`` lists them.

Beside each tar, its sidecar ``shard-<index:06d>.members.parquet``: one row per file member in tar
order (``key``, ``suffix``, ``offset`` of the member's data, ``size``), so that a reader seeks to a
member without scanning the tar, and in its parquet metadata the shard's summary (samples, images,
bytes, sha256, first and last caption id, image format), counted and hashed while the tar was
written, so that indexing reads these small records and neither decodes an image nor hashes a tar.
The sidecar is written before the tar is renamed into place: a tar always has its sidecar.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
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


SUMMARY_KEY = b"synrep.shard"
# A sidecar is trusted only beside the tar it was written for: same size (a multiple of tar's 10 KiB
# records, so often shared) and the same last bytes, which hold the last sample's record
TAIL_BYTES = 16384


def members_path(path: str | Path) -> Path:
    """The sidecar of a shard: ``shard-000123.tar`` -> ``shard-000123.members.parquet``."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".tar") + ".members.parquet")


def encode_sample(key: str, record: dict, images: Iterable[np.ndarray], image_format: str = "png") -> dict:
    """A sample's members as stored: ``{"key", "files": {"json": bytes, "0.png": bytes, ...}}``."""
    files = {"json": json.dumps(record, sort_keys=True).encode()}
    for i, image in enumerate(images):
        files[f"{i}.{image_format}"] = encode_image(image, image_format)
    return {"key": key, "files": files}


class _HashingFile:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def write_tar(path: Path, samples: Iterable[dict], image_format: str = "png") -> dict:
    """Write samples to the tar ``path`` (not atomically) and return its summary. A sample is
    ``{"key", "images": [uint8 HxWx3], "record": dict}`` or, already encoded, ``{"key", "files"}``."""
    import webdataset as wds

    n_samples = n_images = 0
    first = last = None
    formats = set()
    with open(path, "wb") as handle:
        stream = _HashingFile(handle)
        # fixed member times: the same images give a byte-identical shard
        with wds.TarWriter(stream, mtime=0) as sink:
            for sample in samples:
                if "files" not in sample:
                    sample = encode_sample(sample["key"], sample["record"], sample["images"], image_format)
                files = sample["files"]
                sink.write({"__key__": sample["key"], **files})
                cid = json.loads(files["json"]).get("caption_id")
                first = cid if first is None else first
                last = cid
                n_samples += 1
                n_images += len(files) - 1
                formats.update(name.rpartition(".")[2] for name in files if name != "json")
    return {"first_caption_id": first, "last_caption_id": last, "samples": n_samples, "images": n_images,
            "bytes": stream.size, "sha256": stream.digest.hexdigest(),
            "image_format": ",".join(sorted(formats)) or image_format}


def tail_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
        return hashlib.sha256(handle.read()).hexdigest()


def tar_members(path: str | Path) -> pl.DataFrame:
    """The file members of a tar in order, from its headers alone: key, suffix, offset of the data, size."""
    keys, suffixes, offsets, sizes = [], [], [], []
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                key, _, suffix = member.name.partition(".")
                keys.append(key)
                suffixes.append(suffix)
                offsets.append(member.offset_data)
                sizes.append(member.size)
    return pl.DataFrame({"key": keys, "suffix": suffixes, "offset": offsets, "size": sizes},
                        schema={"key": pl.Utf8, "suffix": pl.Utf8, "offset": pl.Int64, "size": pl.Int64})


def write_shard(path: str | Path, samples: Iterable[dict], image_format: str = "png") -> Path:
    """Write samples (as ``write_tar`` takes them) to a shard and its sidecar, atomically: the
    sidecar goes into place first, then the tar."""
    path = Path(path)
    with atomic_path(path) as tmp:
        summary = write_tar(tmp, samples, image_format)
        summary["tail_sha256"] = tail_sha256(tmp)
        # the offsets from the headers just written (in the page cache): a few bytes per member
        members = tar_members(tmp)
        # the old tar goes first: a job killed from here on leaves a sidecar without a tar, never
        # a tar beside another tar's sidecar
        path.unlink(missing_ok=True)
        with atomic_path(members_path(path)) as side:
            members.write_parquet(side, metadata={SUMMARY_KEY.decode(): json.dumps(summary, sort_keys=True)})
    return path


def shard_record(path: str | Path) -> dict | None:
    """The summary saved in a shard's sidecar when it was written; None without a sidecar, or when
    the sidecar is not of this tar (another size or other last bytes)."""
    path = Path(path)
    side = members_path(path)
    if not side.exists():
        return None
    summary = pl.read_parquet_metadata(side).get(SUMMARY_KEY.decode())
    if summary is None:
        return None
    summary = json.loads(summary)
    same = summary["bytes"] == path.stat().st_size and summary.get("tail_sha256") == tail_sha256(path)
    return summary if same else None


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


def read_raw(path: str | Path) -> Iterator[dict]:
    """Yield ``{"key", "files": {suffix: bytes}}`` per sample, in stored order, reading the tar
    sequentially (a sample's members are consecutive) and decoding nothing."""
    key, files = None, {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name, _, suffix = member.name.partition(".")
            if name != key and files:
                yield {"key": key, "files": files}
                files = {}
            key = name
            files[suffix] = tar.extractfile(member).read()
    if files:
        yield {"key": key, "files": files}


def read_shard(path: str | Path) -> Iterator[dict]:
    """Yield ``{"key", "record", "images": [uint8 HxWx3]}`` per sample, in stored order."""
    for sample in read_raw(path):
        files = sample["files"]
        images = [
            decode_image(files[name])
            for name in sorted((n for n in files if n != "json"), key=lambda n: int(n.split(".")[0]))
        ]
        yield {"key": sample["key"], "record": json.loads(files["json"]), "images": images}


def scan_summary(path: str | Path) -> dict:
    """A shard's summary from the tar itself (shards written without a sidecar): its records and
    member headers, no image decoded, and the whole file hashed."""
    n_samples = n_images = 0
    first = last = None
    for sample in read_raw(path):
        n_samples += 1
        n_images += len(sample["files"]) - 1
        cid = json.loads(sample["files"]["json"]).get("caption_id")
        first = cid if first is None else first
        last = cid
    return {"first_caption_id": first, "last_caption_id": last, "samples": n_samples, "images": n_images,
            "bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def shard_summary(path: str | Path, spec: ShardSpec | None = None) -> dict:
    """A shard's row of its source's index: the record saved when it was written, else a scan."""
    summary = shard_record(path) or scan_summary(path)
    return {
        "path": str(path),
        "source": spec.source if spec else None,
        "shard": spec.index if spec else None,
        **{k: summary[k] for k in ("first_caption_id", "last_caption_id", "samples", "images", "bytes", "sha256")},
    }


def write_index(index_path: str | Path, rows: list[dict]) -> Path:
    return write_parquet(index_path, pl.DataFrame(rows).sort("shard"))
