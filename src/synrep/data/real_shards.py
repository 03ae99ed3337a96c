"""The real_shards step: the toy world's real image of every kept caption in the shard format (one
image per caption), so that real-image baselines read what synthetic sources read."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from synrep.data import toyworld
from synrep.data.shards import shard_ranges, shard_summary, write_index, write_shard
from synrep.settings import run_dir, save_resolved


def run(cfg: DictConfig) -> dict[str, Path]:
    """Write the real image of every kept caption into shards (one image per caption), so that
    real-image baselines read the same format as synthetic ones."""
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
