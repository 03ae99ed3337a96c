"""Index a source's shards in parquet, draw its sample grid, and log both to MLflow.

The index rows come from the summaries saved beside each shard when it was written
(``shards.shard_record``): no image is decoded and no tar hashed, except for shards written before
sidecars (scanned). The grid decodes the first few samples of shard 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from synrep import source_modes
from synrep.data.shards import read_shard, shard_path, shard_summary, write_index
from synrep.fileio import atomic_path, write_json
from synrep.generation.alignment_filter import filter_rows, index_spec
from synrep.generation.generate import generator_fingerprint, shards_dir, source_shards
from synrep.generation.sources import referenced_sources, w_params
from synrep.tracking import mlflow_run


def sample_grid(shard: Path, n_captions: int) -> np.ndarray:
    """Rows = captions, columns = their l images, from the first samples of a shard."""
    from synrep.images import image_grid

    rows = []
    for k, sample in enumerate(read_shard(shard)):
        if k == n_captions:
            break
        rows.append(np.stack(sample["images"]))
    images = np.concatenate(rows)
    return image_grid(images, rows=len(rows), scale=max(1, 64 // images.shape[1]))


def index_source(cfg: DictConfig, source: str) -> dict[str, Path]:
    import mlflow

    spec = index_spec(cfg, source)
    folder = shards_dir(cfg) / source
    if not source_modes.get(spec["mode"]).generates:
        rows = union_rows(cfg, spec)
        # a few captions of each source, one under the other
        per_source = max(1, cfg.generation.grid_captions // len(spec["union"]))
        firsts = {r["source"]: Path(r["path"]) for r in reversed(rows)}
        grid = np.concatenate([sample_grid(firsts[m["name"]], per_source) for m in spec["union"]])
        model = {m["name"]: generator_fingerprint(cfg, m) for m in spec["union"]}
    else:
        shards = source_shards(cfg, source)
        paths = [shard_path(shards_dir(cfg), source, s.index) for s in shards]
        missing = [str(path) for path in paths if not path.exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) of source {source!r} missing, e.g. {missing[0]}; "
                                    "run `python -m synrep generate`")
        rows = [shard_summary(path, s) for path, s in zip(paths, shards)]
        grid = sample_grid(paths[0], cfg.generation.grid_captions)
        model = generator_fingerprint(cfg, spec)
    if "filter" in spec:  # the kept images of each caption (the grid still shows them all)
        rows = filter_rows(rows, spec["filter"], folder)
    outputs = {"index": write_index(folder / "index.parquet", rows)}
    outputs["grid"] = folder / "grid.png"
    with atomic_path(outputs["grid"]) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    stats = {
        "source": spec,
        "shards": len(rows),
        "samples": sum(r["samples"] for r in rows),
        "images": sum(r["images"] for r in rows),
        "bytes": sum(r["bytes"] for r in rows),
        "model": model,
    }
    outputs["stats"] = write_json(folder / "stats.json", stats)
    with mlflow_run(cfg, "generate", run_name=f"generate {source}", tags={"synrep.source": source}):
        w = w_params(spec)
        params = {"source": source, "generator": spec.get("generator"), "mode": spec["mode"],
                  "sampler": spec.get("sampler"), "steps": spec.get("steps"), "l": spec["l"], "w": w["w"],
                  "w_set": w["w_set"], "union": ",".join(m["name"] for m in spec.get("union", [])) or None}
        mlflow.log_params({k: v for k, v in params.items() if v is not None})
        mlflow.log_metrics({k: stats[k] for k in ("shards", "samples", "images", "bytes")})
        for path in outputs.values():
            mlflow.log_artifact(str(path))
    return outputs


def union_rows(cfg: DictConfig, spec: dict) -> list[dict]:
    """A union's index: its sources' index rows one after another, renumbered (each row keeps the
    source it comes from)."""
    import polars as pl

    rows = []
    for member in spec["union"]:
        path = shards_dir(cfg) / member["name"] / "index.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: source {spec['name']!r} joins {member['name']!r}, which is "
                                    f"not indexed yet; run `python -m synrep index --source {member['name']}`")
        rows += pl.read_parquet(path).sort("shard").to_dicts()
    return [dict(row, shard=i) for i, row in enumerate(rows)]


def run(cfg: DictConfig, source: str | None = None) -> dict[str, Path]:
    """``python -m synrep index``: every source that training reads, or one."""
    outputs = {}
    for name in [source] if source else referenced_sources(cfg):
        outputs.update({f"{name}/{k}": v for k, v in index_source(cfg, name).items()})
    return outputs
