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
random access to every caption: the tar headers of each shard are read once (never the image
data) into a table of member offsets, and a sample is read by seeking to its members. So the
sampler shuffles the whole caption set every pass (RedCaps files are ordered by subreddit: a shard
order shuffle and a buffer would leave batches correlated), and a DataLoader worker reads only the
samples it is given. Group ids belong to batch rows, as in the official code: two rows with the same
caption text are still different groups (captions are deduplicated first). The draws of a sample
depend on (seed, epoch, sample index) only, so a resumed run sees what an uninterrupted run saw,
whatever the number of workers.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig
from PIL import Image

from synrep.config import run_dir
from synrep.data.shards import write_index, write_shard

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
        raise ValueError(f"{index_path}: not a readable shard index ({str(err).splitlines()[0]})") from None
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
                raise ValueError(f"{tar}: truncated or corrupt shard ({reason})") from None
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
        raise ValueError(f"{url}: truncated or corrupt shard (the archive ends at byte {size}, inside its "
                         f"members or before its end-of-archive blocks at {end})")
    return list(samples.items())


class GroupDataset(torch.utils.data.Dataset):
    """Item i: ``(images [k*v, 3, H, W], caption)`` of the i-th caption of the shards, in index
    order; ``max_samples`` keeps the first N captions (the l ablation at a fixed budget).
    ``transform`` None: uint8 images, augmented by the trainer a batch at a time."""

    def __init__(self, urls: list[str], spec, transform: Callable | None, seed: int, max_samples: int | None = None,
                 cache_decoded: bool = False):
        super().__init__()
        self.urls, self.spec, self.transform, self.seed = list(urls), spec, transform, seed
        # decoded images kept in memory (a toy source: a few MB), instead of decoding every draw
        self.cache_decoded = cache_decoded
        self._decoded: dict[tuple[int, str], torch.Tensor] = {}
        self.epoch = 0
        self.samples: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for shard, url in enumerate(self.urls):
            self.samples += [(shard, key, members) for key, members in member_table(url)]
            if max_samples is not None and len(self.samples) >= max_samples:
                break
        if max_samples is not None:
            self.samples = self.samples[:max_samples]
        self._files: dict[int, int] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}  # open files stay with the process that opened them
        return state

    def __del__(self) -> None:
        # getattr: __init__ may have stopped (a bad shard) before the files were set up
        for fd in getattr(self, "_files", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        url = self.urls[shard]
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(url, os.O_RDONLY)
        # pread, not seek + read: forked DataLoader workers inherit the parent's descriptors, and a
        # shared file offset would let one worker read another's member
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise ValueError(f"{url}: truncated or corrupt shard (a member ends after {len(data)} of {size} bytes)")
        return data

    def read_sample(self, index: int) -> dict:
        """The raw members of sample ``index`` (as webdataset gives them: suffix -> bytes)."""
        shard, key, members = self.samples[index]
        sample = {suffix: self._read(shard, offset, size) for suffix, (offset, size) in members.items()}
        sample["__key__"], sample["__url__"] = key, self.urls[shard]
        return sample

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        spec = self.spec
        sample = self.read_sample(index)
        names = _image_names(sample)
        if spec.use_first is not None:
            if len(names) < spec.use_first:
                raise ValueError(f"sample {sample['__key__']} in {sample['__url__']} has {len(names)} "
                                 f"images; the run asks for l = {spec.use_first}")
            names = names[: spec.use_first]
        draw = random.Random(f"{self.seed}-{self.epoch}-{index}")
        if spec.images <= len(names):
            chosen = draw.sample(names, spec.images)
        else:
            chosen = names + [draw.choice(names) for _ in range(spec.images - len(names))]
        transform = self.transform or (lambda image: image)  # None: the trainer augments the batch
        try:
            crops = [transform(self._image(index, sample, name)) for name in chosen for _ in range(spec.views)]
        except (OSError, ValueError) as err:
            raise _corrupt(sample["__url__"], err) from err
        return torch.stack(crops), _caption(sample)

    def _image(self, index: int, sample: dict, name: str) -> torch.Tensor:
        if not self.cache_decoded:
            return _decode(sample[name])
        key = (index, name)
        if key not in self._decoded:
            self._decoded[key] = _decode(sample[name])
        return self._decoded[key]


def group_sampler(dataset: GroupDataset, seed: int, rank: int, world: int) -> torch.utils.data.DistributedSampler:
    """The official sampler: the whole caption set shuffled by (seed, epoch), ceil(N / world)
    indices per rank (padded by repetition); call ``set_epoch`` every pass."""
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                               drop_last=False)


def collate_groups(batch: list[tuple[torch.Tensor, str]]) -> dict:
    """n rows of k images -> images [n*k, 3, H, W], group_ids [n*k] (the batch row), captions [n]."""
    images = torch.cat([b[0] for b in batch])
    per_row = batch[0][0].shape[0]
    group_ids = torch.arange(len(batch)).repeat_interleave(per_row)
    return {"images": images, "group_ids": group_ids, "captions": [b[1] for b in batch]}


# --------------------------------------------------------------------------------------------
# Real images in the shard format (the toy world's captioned "real" images)
# --------------------------------------------------------------------------------------------


def real_shards_run(cfg: DictConfig) -> dict[str, Path]:
    """Write the real image of every kept caption into shards (one image per caption), so that
    real-image baselines read the same format as synthetic ones."""
    from synrep.data import toyworld
    from synrep.config import save_resolved
    from synrep.data.shards import shard_ranges, shard_summary

    captions_path = run_dir(cfg, "captions", "captions.parquet")
    if not captions_path.exists():
        raise FileNotFoundError(f"deduplicated captions not found at {captions_path}; "
                                "run `python -m synrep captions` first")
    captions = pl.read_parquet(captions_path)
    train = toyworld.load_split(cfg, "train")
    out = Path(cfg.train.real_shards)
    per_shard = cfg.generation.captions_per_shard
    rows = []
    for spec in shard_ranges(len(captions), per_shard, "real"):
        part = captions.slice(spec.start, spec.stop - spec.start)
        samples = []
        for row in part.iter_rows(named=True):
            url = row.get("url") or ""
            index = toyworld.train_index(url, "real_shards (for real data point the run at img2dataset shards)")
            samples.append({"key": f"c{row['caption_id']:09d}", "images": [train["images"][index]],
                            "record": {"caption": row["caption"], "caption_id": int(row["caption_id"]),
                                       "source": url}})
        path = out / f"shard-{spec.index:06d}.tar"
        write_shard(path, samples)
        rows.append(shard_summary(path, spec))
    save_resolved(cfg, out)
    return {"index": write_index(out / "index.parquet", rows)}
