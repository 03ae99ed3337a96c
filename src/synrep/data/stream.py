"""Training batches read from WebDataset-format tar shards: n captions x m images.

Synthetic shards (``synrep.data.shards``) hold l images per caption; real-image shards hold one image
per caption in the same format (``real_shards`` writes them for the toy world; img2dataset shards
with ``jpg``/``png`` and ``txt`` members also read). Per method, one sample (one batch row, one
group) is:

- StableRep / StableRep+: m images drawn without replacement from the first l of the caption,
  one augmented crop each (if m > l, every image is used and the rest are drawn again, so some
  images appear as two different crops); at m = 1, two crops of one image (SimCLR);
- SimCLR: one image, two crops;
- CLIP: one image and its caption.

As the official code (a map-style dataset under a ``DistributedSampler``), ``GroupDataset`` gives
random access to every caption: the index's per-shard sample counts map a caption to its shard, the
shard's member offsets come from its sidecar (``shard-*.members.parquet``, else its tar headers,
never the image data) when one of its samples is read, and a sample is read by seeking to its
members. Memory and open files are bounded per process (a few shards' tables and descriptors), not
by the number of shards or captions. So the sampler shuffles the whole caption set every pass
(RedCaps files are ordered by subreddit: a shard order shuffle and a buffer would leave batches
correlated), and a DataLoader worker reads only the samples it is given. Group ids belong to batch
rows, as in the official code: two rows with the same caption text are still different groups
(captions are deduplicated first). The draws of a sample (and a refreshing source's round, rounds.py)
depend on (seed, epoch, sample index) only: a resumed run sees what an uninterrupted run saw.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig
from PIL import Image

from synrep.data.rounds import Refresh, round_names
from synrep.data.shards import members_path
from synrep.settings import InputError, run_dir

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def shard_index(cfg: DictConfig, source: str) -> pl.DataFrame:
    """The shards of a data source, ``real`` or a source name (e.g. ``w2``), in index order."""
    if source == "real":
        index_path = Path(cfg.train.real_shards) / "index.parquet"
        if not index_path.exists() and Path(cfg.train.real_shards).is_dir():
            return external_shard_index(Path(cfg.train.real_shards))
    else:
        index_path = run_dir(cfg, "shards", source, "index.parquet")
    if not index_path.exists():
        step = "real_shards" if source == "real" else "generate and index"
        raise FileNotFoundError(f"shard index not found at {index_path} (data source {source!r}); "
                                f"run {step} first (snakemake does)")
    try:
        index = pl.read_parquet(index_path).sort("shard")
        paths = index["path"].to_list()
    except Exception as err:  # polars raises ComputeError / ColumnNotFoundError flavours
        raise InputError(f"{index_path}: not a readable shard index ({str(err).splitlines()[0]})") from None
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path} lists {len(missing)} shard(s) that do not exist, e.g. {missing[0]}; "
                                f"rerun generate and index for data source {source!r}")
    return index


def external_shard_index(folder: Path) -> pl.DataFrame:
    """An index of shards made elsewhere (img2dataset: ``00000.tar`` beside ``00000_stats.json``)."""
    rows = []
    for i, tar in enumerate(sorted(folder.glob("*.tar"))):
        stats = tar.with_name(tar.stem + "_stats.json")
        if stats.exists():
            samples = int(json.loads(stats.read_text()).get("successes", 0))
        else:
            try:
                with tarfile.open(tar) as handle:
                    samples = len({m.name.split(".", 1)[0] for m in handle if m.isfile()})
            except (tarfile.TarError, EOFError) as err:
                reason = str(err).splitlines()[0].rstrip(":")
                raise InputError(f"{tar}: truncated or corrupt shard ({reason})") from None
        rows.append({"path": str(tar), "shard": i, "samples": samples})
    if not rows:
        raise FileNotFoundError(f"no .tar shards in {folder} (config key 'train.real_shards')")
    return pl.DataFrame(rows)


def shard_urls(cfg: DictConfig, source: str) -> list[str]:
    return shard_index(cfg, source)["path"].to_list()


def count_captions(cfg: DictConfig, source: str) -> int:
    return int(shard_index(cfg, source)["samples"].sum())


def _image_names(sample: dict) -> list[str]:
    names = [k for k in sample if k.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS and not k.startswith("__")]
    # synthetic: "0.png", "1.png", ...; img2dataset: "jpg"
    return sorted(names, key=lambda n: int(n.split(".")[0]) if n.split(".")[0].isdigit() else -1)


def _caption(sample: dict) -> str:
    if "json" in sample:
        record = json.loads(sample["json"])
        if "caption" in record:
            return record["caption"]
    if "txt" in sample:
        return sample["txt"].decode("utf-8")
    raise KeyError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no caption (json or txt)")


def _decode(data: bytes) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _decode_pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _corrupt(url: str, err: BaseException) -> ValueError:
    reason = str(err.args[0] if err.args else err).splitlines()[0] if str(err) else type(err).__name__
    return ValueError(f"{url}: truncated or corrupt shard ({type(err).__name__}: {reason})")


def member_table(url: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """The samples of a tar shard in file order: ``(key, {suffix: (data offset, size)})``, read
    from the tar headers only (webdataset's convention: the key is the name up to its first dot)."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    end = 0
    try:
        size = Path(url).stat().st_size
        with tarfile.open(url, mode="r:") as handle:
            for member in handle:
                end = max(end, member.offset_data + -(-member.size // 512) * 512)
                if not member.isfile():
                    continue
                name = member.name
                folder, _, base = name.rpartition("/")
                if "." not in base:
                    continue
                key, suffix = base.split(".", 1)
                key = f"{folder}/{key}" if folder else key
                samples.setdefault(key, {})[suffix] = (member.offset_data, member.size)
    except FileNotFoundError:
        raise FileNotFoundError(f"shard not found: {url}") from None
    except (tarfile.TarError, OSError, EOFError) as err:
        raise _corrupt(url, err) from err
    # tarfile stops quietly at a cut header: a whole archive ends with two zero blocks after its data
    if size < end + 1024:
        raise InputError(f"{url}: truncated or corrupt shard (the archive ends at byte {size}, inside its "
                         f"members or before its end-of-archive blocks at {end})")
    return list(samples.items())


class ShardTable:
    """One shard's samples as arrays (a few bytes a member, not Python objects): sample j's members
    are rows ``starts[j]:starts[j + 1]`` of ``suffixes`` / ``offsets`` / ``sizes``."""

    __slots__ = ("keys", "starts", "suffixes", "offsets", "sizes")

    def __init__(self, keys: list[str], starts: np.ndarray, suffixes: list[str], offsets: np.ndarray,
                 sizes: np.ndarray):
        self.keys, self.starts, self.suffixes, self.offsets, self.sizes = keys, starts, suffixes, offsets, sizes

    def __len__(self) -> int:
        return len(self.keys)

    def members(self, j: int) -> dict[str, tuple[int, int]]:
        lo, hi = int(self.starts[j]), int(self.starts[j + 1])
        return {self.suffixes[r]: (int(self.offsets[r]), int(self.sizes[r])) for r in range(lo, hi)}

    @classmethod
    def from_samples(cls, samples: list[tuple[str, dict[str, tuple[int, int]]]]) -> "ShardTable":
        keys = [key for key, _ in samples]
        rows = [(suffix, offset, size) for _, members in samples for suffix, (offset, size) in members.items()]
        starts = np.cumsum([0] + [len(members) for _, members in samples], dtype=np.int64)
        return cls(keys, starts, [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.int64),
                   np.array([r[2] for r in rows], dtype=np.int64))


def read_members(url: str) -> ShardTable:
    """A shard's member table: from its sidecar (``shards.members_path``) when there is one, else
    from the tar headers (img2dataset shards, shards written before sidecars)."""
    side = members_path(url)
    if not side.exists():
        return ShardTable.from_samples(member_table(url))
    # pyarrow on one thread, not polars: DataLoader workers are forked, and polars' thread pool,
    # started in the parent, deadlocks a forked child's first query
    try:
        # opened here, so that it is closed on return (pyarrow's own handle waits for the collector)
        with open(side, "rb") as handle:
            table = pq.read_table(handle, columns=["key", "suffix", "offset", "size"], use_threads=False)
    except Exception as err:  # ArrowInvalid, a missing column, a file that is not parquet
        raise InputError(f"{side}: not a readable member table ({str(err).splitlines()[0]})") from None
    suffixes = table["suffix"].to_pylist()
    kept = [i for i, suffix in enumerate(suffixes) if suffix]  # a member without a suffix belongs to no sample (member_table)
    keys = table["key"].to_pylist()
    keys = [keys[i] for i in kept]
    suffixes = [suffixes[i] for i in kept]
    offsets = table["offset"].to_numpy().astype(np.int64)[kept]
    sizes = table["size"].to_numpy().astype(np.int64)[kept]
    try:
        size = Path(url).stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"shard not found: {url}") from None
    end = int((offsets + sizes).max()) if len(kept) else 0
    if size < end:
        raise InputError(f"{url}: truncated or corrupt shard (the archive ends at byte {size}, inside its "
                         f"members, which end at {end} by {side.name})")
    starts = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    runs = [keys[i] for i in starts]
    if len(set(runs)) != len(runs) or len(set(zip(keys, suffixes))) != len(keys):
        # a sample's members apart, or a member twice: group as the header scan does (first place, last value)
        samples: dict[str, dict[str, tuple[int, int]]] = {}
        for k, suffix, offset, length in zip(keys, suffixes, offsets.tolist(), sizes.tolist()):
            samples.setdefault(k, {})[suffix] = (offset, length)
        return ShardTable.from_samples(list(samples.items()))
    return ShardTable(runs, np.array(starts + [len(keys)], dtype=np.int64), suffixes, offsets, sizes)


def read_kept(path: str) -> dict[str, frozenset[int]]:
    """A filtered shard's kept images (generation/alignment_filter.py): sample key -> image numbers."""
    try:
        with open(path, "rb") as handle:  # pyarrow on one thread, as read_members (forked workers)
            table = pq.read_table(handle, columns=["key", "image"], use_threads=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"kept images not found: {path}; rerun indexing") from None
    kept: dict[str, set[int]] = {}
    for key, image in zip(table["key"].to_pylist(), table["image"].to_pylist()):
        kept.setdefault(key, set()).add(image)
    return {key: frozenset(images) for key, images in kept.items()}


class _LRU(OrderedDict):
    """A small least-recently-used map; ``on_evict`` sees each value that leaves it."""

    def __init__(self, capacity: int, on_evict: Callable | None = None):
        super().__init__()
        self.capacity, self.on_evict = max(1, capacity), on_evict

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            _, old = self.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(old)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class GroupDataset(torch.utils.data.Dataset):
    """Item i: ``(images [k*v, 3, H, W], caption)`` of the i-th caption of the shards, in index
    order; ``max_samples`` keeps the first N captions (the l ablation at a fixed budget).
    ``transform`` None: uint8 images, augmented by the trainer a batch at a time. An item may also
    be ``(epoch, i)``: the pass travels with the index, so persistent workers need no ``set_epoch``.

    ``counts`` (the index's ``samples`` column) maps a caption to its shard with no file opened;
    without it, each shard's table is read once here to count it. A shard's member table is read
    when one of its samples is, and at most ``cached_shards`` tables and ``open_files`` descriptors
    stay in each process (least recently used first out): memory and descriptors stay bounded
    whatever the number of shards (the sampler draws from all of them)."""

    def __init__(self, urls: list[str], spec, transform: Callable | None, seed: int, max_samples: int | None = None,
                 cache_decoded: bool = False, counts: list[int] | None = None, cached_shards: int = 64,
                 open_files: int = 16, kept: list[str] | None = None, refresh: Refresh | None = None):
        super().__init__()
        self.urls, self.spec, self.transform, self.seed, self.refresh = list(urls), spec, transform, seed, refresh
        # a filtered source (the index's ``kept`` column): each shard's file of the images kept
        self.kept = None if kept is None else list(kept)
        # decoded images kept in memory (a toy source: a few MB), instead of decoding every draw
        self.cache_decoded = cache_decoded
        self._decoded: dict[tuple[int, str], object] = {}
        self.epoch = 0
        self.cached_shards, self.open_files = cached_shards, open_files
        self._setup_caches()
        if counts is None:
            counts = []
            for shard in range(len(self.urls)):
                counts.append(len(self._table(shard)))
                if max_samples is not None and sum(counts) >= max_samples:
                    break
        elif len(counts) != len(self.urls):
            raise ValueError(f"{len(counts)} sample counts for {len(self.urls)} shards")
        # first global index of each shard: an array, never a table of every caption
        self.first = np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])
        total = int(self.first[-1])
        self.length = total if max_samples is None else min(total, max_samples)

    def _setup_caches(self) -> None:
        self._tables = _LRU(self.cached_shards)
        self._kept = _LRU(self.cached_shards)
        self._files = _LRU(self.open_files, _close)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        # open files stay with the process that opened them
        state["_files"] = state["_tables"] = state["_kept"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup_caches()

    def __del__(self) -> None:
        # getattr: __init__ may have stopped (a bad shard) before the files were set up
        files = getattr(self, "_files", None)
        for fd in (files or {}).values():
            _close(fd)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, sample within the shard) of global sample ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"sample {index} of {self.length}")
        shard = int(np.searchsorted(self.first, index, side="right")) - 1
        return shard, index - int(self.first[shard])

    def _table(self, shard: int) -> ShardTable:
        table = self._tables.get(shard)
        if table is None:
            table = read_members(self.urls[shard])
            if hasattr(self, "first") and len(table) != self.first[shard + 1] - self.first[shard]:
                raise InputError(f"{self.urls[shard]}: holds {len(table)} samples; its index says "
                                 f"{int(self.first[shard + 1] - self.first[shard])} (rerun indexing)")
            self._tables.put(shard, table)
        return table

    def _kept_images(self, shard: int) -> dict[str, frozenset[int]]:
        kept = self._kept.get(shard)
        if kept is None:
            kept = read_kept(self.kept[shard])
            self._kept.put(shard, kept)
        return kept

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        url = self.urls[shard]
        fd = self._files.get(shard)
        if fd is None:
            try:
                fd = os.open(url, os.O_RDONLY)
            except FileNotFoundError:
                raise FileNotFoundError(f"shard not found: {url}") from None
            self._files.put(shard, fd)
        # pread, not seek + read: forked DataLoader workers inherit the parent's descriptors, and a
        # shared file offset would let one worker read another's member
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise InputError(f"{url}: truncated or corrupt shard (a member ends after {len(data)} of {size} bytes)")
        return data

    def read_sample(self, index: int) -> dict:
        """The raw members of sample ``index`` (as webdataset gives them: suffix -> bytes)."""
        shard, j = self.locate(index)
        table = self._table(shard)
        sample = {suffix: self._read(shard, offset, size) for suffix, (offset, size) in table.members(j).items()}
        sample["__key__"], sample["__url__"] = table.keys[j], self.urls[shard]
        return sample

    def __getitem__(self, item) -> tuple[torch.Tensor, str]:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        spec = self.spec
        shard, j = self.locate(index)
        table = self._table(shard)
        members = table.members(j)
        # the members' bytes are read once chosen: of l (x rounds) stored images, only those drawn
        sample = {"__key__": table.keys[j], "__url__": self.urls[shard]}
        names = _image_names(members)
        if self.kept is not None:  # l counts the kept images, in stored order
            kept = self._kept_images(shard).get(sample["__key__"], frozenset())
            names = [name for name in names if int(name.split(".")[0]) in kept]
        if self.refresh is not None:  # this pass's round of the caption's images (data/rounds.py)
            names = round_names(names, epoch, self.refresh, f"sample {sample['__key__']} in {sample['__url__']}")
        if spec.use_first is not None:
            if len(names) < spec.use_first:
                raise InputError(f"sample {sample['__key__']} in {sample['__url__']} has {len(names)} "
                                 f"images; the run asks for l = {spec.use_first}")
            names = names[: spec.use_first]
        draw = random.Random(f"{self.seed}-{epoch}-{index}")
        if spec.images <= len(names):
            chosen = draw.sample(names, spec.images)
        else:
            chosen = names + [draw.choice(names) for _ in range(spec.images - len(names))]
        for suffix in (*dict.fromkeys(chosen), *(m for m in ("json", "txt") if m in members)):
            sample[suffix] = self._read(shard, *members[suffix])
        # an augmentation that takes the sample's draws (augment.ImageAugment): its crops depend on
        # (seed, epoch, index) alone, whatever the worker; it reads PIL images
        takes_draw = getattr(self.transform, "takes_draw", False)
        try:
            if takes_draw:
                crops = [self.transform(self._image(index, sample, name, pil=True), draw)
                         for name in chosen for _ in range(spec.views)]
            else:
                transform = self.transform or (lambda image: image)  # None: the trainer augments the batch
                crops = [transform(self._image(index, sample, name)) for name in chosen for _ in range(spec.views)]
        except (OSError, ValueError) as err:
            raise _corrupt(sample["__url__"], err) from err
        if crops and isinstance(crops[0], tuple):  # crops and their draws for the device (augment.DeviceAugment)
            return torch.stack([c[0] for c in crops]), _caption(sample), torch.stack([c[1] for c in crops])
        return torch.stack(crops), _caption(sample)

    def _image(self, index: int, sample: dict, name: str, pil: bool = False):
        decode = _decode_pil if pil else _decode
        if not self.cache_decoded:
            return decode(sample[name])
        key = (index, name, pil)
        if key not in self._decoded:
            self._decoded[key] = decode(sample[name])
        return self._decoded[key]


class EpochIndices(torch.utils.data.Sampler):
    """``(epoch, index)`` pairs of a sampler with ``set_epoch`` (``group_sampler``): the pass goes to
    the dataset with each index, as persistent DataLoader workers keep their own dataset copy."""

    def __init__(self, sampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, int(i)) for i in self.sampler)


def group_sampler(dataset: GroupDataset, seed: int, rank: int, world: int) -> torch.utils.data.DistributedSampler:
    """The official sampler: the whole caption set shuffled by (seed, epoch), ceil(N / world)
    indices per rank (padded by repetition); call ``set_epoch`` every pass."""
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                               drop_last=False)


def collate_groups(batch: list[tuple]) -> dict:
    """n rows of k images -> images [n*k, 3, H, W], group_ids [n*k] (the batch row), captions [n];
    and draws [n*k, P] when the rows carry the device's augmentation draws."""
    images = torch.cat([b[0] for b in batch])
    per_row = batch[0][0].shape[0]
    group_ids = torch.arange(len(batch)).repeat_interleave(per_row)
    out = {"images": images, "group_ids": group_ids, "captions": [b[1] for b in batch]}
    if len(batch[0]) > 2:
        out["draws"] = torch.cat([b[2] for b in batch])
    return out
