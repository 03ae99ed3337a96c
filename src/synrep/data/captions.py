"""The ``captions`` step: read the configured caption file, refuse an empty caption set, dedup,
apply the limit, and write the table, the bad-row report and stats.

Reading and bad rows are :mod:`synrep.data.caption_readers`; the dedup is :mod:`synrep.data.dedup`.
Outputs, under ``<results_dir>/<name>/captions/``: ``captions.parquet`` (caption_id int64,
caption, url, source_line int64), ``bad_rows.csv`` (source_line, kind, text: a truncated repr),
``stats.json`` and the resolved ``config.yaml``. Stats also go to MLflow (metrics and artifact).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from synrep.config import run_dir, save_resolved
from synrep.data.caption_readers import LoadedCaptions, load_captions
from synrep.data.dedup import deduplicate
from synrep.fileio import atomic_path, write_json, write_parquet

__all__ = ["run"]


def _summary(stats: dict, loaded: LoadedCaptions, out: Path) -> str:
    bad = stats["bad_rows"]
    kinds = ", ".join(f"{k} {n}" for k, n in bad.items() if n)
    lines = [f"captions: {stats['rows_in']} rows in {loaded.path} ({loaded.format})"]
    if stats["bad_rows_total"]:
        lines.append(f"  bad rows: {stats['bad_rows_total']} ({kinds}), skipped; "
                     f"report: {out / 'bad_rows.csv'}")
        for src, kind, text in loaded.bad.head(3).iter_rows():
            lines.append(f"    {loaded.position} {src}: {kind} {text[:80]}")
    else:
        lines.append("  bad rows: 0")
    lines.append(f"  duplicates removed: {stats['duplicates_removed']} "
                 f"({stats['duplicates_identical_text']} identical text, "
                 f"{stats['duplicates_normalised_only']} after normalisation)")
    limit = f" (limit {stats['limit']})" if stats["limit"] is not None else ""
    lines.append(f"  kept: {stats['rows_out']}{limit} -> {out / 'captions.parquet'}")
    return "\n".join(lines)


def _check_not_empty(loaded: LoadedCaptions) -> None:
    """No usable row is an error here: later steps would fail on it, further from the cause."""
    if loaded.rows.height:
        return
    kinds = ", ".join(f"{k}: {n}" for k, n in loaded.bad_counts().items() if n)
    raise ValueError(f"{loaded.path}: no usable captions: 0 of {loaded.rows_in} rows kept ({kinds})")


def run(cfg: DictConfig) -> dict[str, Path]:
    """Read ``captions.path`` in ``captions.format``, report bad rows, dedup, apply the limit,
    and write ``captions.parquet``, ``bad_rows.csv``, ``stats.json`` and ``config.yaml``.

    Raises ValueError (nothing written) for a malformed file (CaptionFormatError), a file with
    no usable caption, or a limit or max_length below 1."""
    import mlflow

    from synrep.tracking import mlflow_run

    ccfg = cfg.captions
    # limit=0 would write an empty caption set, which later steps cannot use
    if ccfg.limit is not None and ccfg.limit < 1:
        raise ValueError(f"config key 'captions.limit': must be >= 1 or null (keep all), got {ccfg.limit}")
    if ccfg.max_length <= 0:
        raise ValueError(f"config key 'captions.max_length': must be > 0, got {ccfg.max_length}")
    out = run_dir(cfg, "captions")
    paths = {
        "captions": out / "captions.parquet",
        "bad_rows": out / "bad_rows.csv",
        "stats": out / "stats.json",
        "config": out / "config.yaml",
    }
    # A malformed or empty file fails here, before anything is written or an MLflow run is opened.
    start = time.time()
    loaded = load_captions(ccfg.path, ccfg.format, column=ccfg.column, max_length=ccfg.max_length)
    _check_not_empty(loaded)
    rows = loaded.rows
    kept = deduplicate(rows, norm=loaded.norm)
    n_identical = rows.height - rows["caption"].n_unique()
    n_dedup = kept.height
    if ccfg.limit is not None:
        kept = kept.head(ccfg.limit)
    table = kept.select("caption_id", "caption", "url", "source_line")
    bad_counts = loaded.bad_counts()
    stats = {
        "source": str(loaded.path),
        "format": loaded.format,
        "source_line": "1-based line number" if loaded.position == "line" else "0-based row index",
        "rows_in": loaded.rows_in,
        "bad_rows": bad_counts,
        "bad_rows_total": loaded.bad.height,
        "duplicates_removed": rows.height - n_dedup,
        "duplicates_identical_text": n_identical,
        "duplicates_normalised_only": rows.height - n_dedup - n_identical,
        "rows_deduplicated": n_dedup,
        "limit": ccfg.limit,
        "rows_out": table.height,
        "seconds": round(time.time() - start, 2),
    }
    with mlflow_run(cfg, "captions", sections=("captions",)) as mlrun:
        stats["mlflow_run_id"] = mlrun.info.run_id
        write_parquet(paths["captions"], table)
        with atomic_path(paths["bad_rows"]) as tmp:
            loaded.bad.write_csv(tmp)
        write_json(paths["stats"], stats)
        save_resolved(cfg, out)
        metrics = {k: v for k, v in stats.items() if isinstance(v, int) and k != "limit"}
        metrics.update({f"bad_rows_{k}": n for k, n in bad_counts.items()})
        metrics["seconds"] = stats["seconds"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(paths["stats"]))
        if paths["bad_rows"].stat().st_size <= 5 << 20:
            mlflow.log_artifact(str(paths["bad_rows"]))
    print(_summary(stats, loaded, out), file=sys.stdout, flush=True)
    return paths
