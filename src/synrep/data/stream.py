"""Training batches streamed from WebDataset shards: n captions x m images.

Synthetic shards (``synrep.data.shards``) hold l images per caption; real-image shards hold one image
per caption in the same format (``real_shards`` writes them for the toy world; img2dataset shards
with ``jpg``/``png`` and ``txt`` members also read). Per method, one sample (one batch row, one
group) is:

- StableRep / StableRep+: m images drawn without replacement from the first l of the caption,
  one augmented crop each (if m > l, every image is used and the rest are drawn again, so some
  images appear as two different crops);
- SimCLR: one image, two crops;
- CLIP: one image and its caption.

Group ids belong to batch rows, as in the official code: two rows with the same caption text are
still different groups (captions are deduplicated first). The order of samples and of the random
draws is a function of (seed, epoch, rank), so a resumed run sees what an uninterrupted run saw.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path
from typing import Callable, Iterator

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


class GroupStream(torch.utils.data.IterableDataset):
    """Yields ``(images [k*v, 3, H, W], caption)`` per caption, streamed from tar shards.

    Epoch ``e`` visits the shards in an order shuffled by (seed, e), shuffles samples within a
    buffer, and rank r of ``world`` keeps every world-th sample, so all ranks see the same number
    of samples (± 1) and the draws depend only on (seed, epoch, rank).
    """

    def __init__(self, urls: list[str], spec, transform: Callable, seed: int,
                 shuffle_buffer: int = 1000, rank: int = 0, world: int = 1):
        super().__init__()
        self.urls, self.spec, self.transform = list(urls), spec, transform
        self.seed, self.shuffle_buffer, self.rank, self.world = seed, shuffle_buffer, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _raw(self, rng: random.Random) -> Iterator[dict]:
        import webdataset as wds

        urls = list(self.urls)
        rng.shuffle(urls)

        def stream() -> Iterator[dict]:
            # one shard at a time, so that a truncated or corrupt shard is named in one line
            for url in urls:
                try:
                    yield from wds.WebDataset([url], shardshuffle=False, nodesplitter=None,
                                              workersplitter=None, empty_check=False)
                except FileNotFoundError:
                    raise  # one line naming the file already
                except (tarfile.TarError, OSError, EOFError, ValueError) as err:
                    reason = str(err.args[0] if err.args else err).split(" @ ")[0].splitlines()[0]
                    raise ValueError(f"{url}: truncated or corrupt shard ({type(err).__name__}: {reason})") from err

        buffer: list[dict] = []
        for sample in stream():
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        draw_rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-draw")
        spec = self.spec
        # rank r of R, DataLoader worker j of J: sample i goes to (i mod R*J) == r*J + j
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        stride, slot = self.world * workers, self.rank * workers + worker_id
        if worker:
            draw_rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker_id}-draw")
        for i, sample in enumerate(self._raw(rng)):
            if i % stride != slot:
                continue
            names = _image_names(sample)
            if spec.use_first is not None:
                if len(names) < spec.use_first:
                    raise ValueError(f"sample {sample['__key__']} in {sample.get('__url__')} has {len(names)} "
                                     f"images; the run asks for l = {spec.use_first}")
                names = names[: spec.use_first]
            if spec.images <= len(names):
                chosen = draw_rng.sample(names, spec.images)
            else:
                chosen = names + [draw_rng.choice(names) for _ in range(spec.images - len(names))]
            crops = [self.transform(_decode(sample[name])) for name in chosen for _ in range(spec.views)]
            yield torch.stack(crops), _caption(sample)


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
            if not url.startswith("toy://train/"):
                raise ValueError(f"caption {row['caption_id']} has url {url!r}: real shards are made from the toy "
                                 "world only; for real data point the run at img2dataset shards")
            index = int(url.rsplit("/", 1)[1])
            samples.append({"key": f"c{row['caption_id']:09d}", "images": [train["images"][index]],
                            "record": {"caption": row["caption"], "caption_id": int(row["caption_id"]),
                                       "source": url}})
        path = out / f"shard-{spec.index:06d}.tar"
        write_shard(path, samples)
        rows.append(shard_summary(path, spec))
    save_resolved(cfg, out)
    return {"index": write_index(out / "index.parquet", rows)}
