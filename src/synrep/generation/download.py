"""The download_weights step: a hub model's files fetched once into the Hugging Face cache, with
its weights' hash stored beside the snapshot, before the shard jobs that read it."""

from __future__ import annotations

from pathlib import Path

from synrep.diffusion.pipelines import check_weight_files, download_weights, fingerprint
from synrep.fileio import write_json
from synrep.settings import run_dir, save_resolved


def run(cfg) -> dict:
    """The download_weights step: fetch ``generation.model`` (a hub id) once and hash its weights,
    beside the snapshot, so that generation jobs read the hash and need neither network nor hashing."""
    model = cfg.generation.model
    folder = download_weights(model)
    check_weight_files(folder)  # a truncated download fails here, in one job, not in every shard's
    # generate's fingerprint cache (generate.shards_dir), where a local folder's hash is kept
    info = fingerprint(model, run_dir(cfg, "shards", ".fingerprints"))
    out = run_dir(cfg, "weights")
    name = model.replace("/", "--") if not Path(model).exists() else Path(model).name
    save_resolved(cfg, out, f"{name}.config.yaml")
    record = {**info, "folder": str(folder.resolve()),
              "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())}
    return {"weights": write_json(out / f"{name}.json", record)}
