"""The ``captions`` step: read the configured caption file, refuse an empty caption set, dedup,
apply the limit, and write the table, the bad-row report and stats.

Reading and bad rows are :mod:`synrep.data.caption_readers`; the dedup is :mod:`synrep.data.dedup`.
Outputs, under ``<results_dir>/<name>/captions/``: ``captions.parquet`` (caption_id int64,
caption, url, source_line int64), ``bad_rows.csv`` (source_line, kind, text: a truncated repr),
``stats.json`` and the resolved ``config.yaml``. Stats also go to MLflow (metrics and artifact).

The file is streamed a block at a time: kept rows go to the parquet file and bad rows to the csv
as they come (in scratch files beside the step's folder, renamed into place only once the whole
file has been read and checked), and the dedup keeps a hash, an id and a file offset a distinct
caption in memory, the texts themselves in a scratch file. Peak memory is therefore about that of
one block plus ~40 bytes a distinct caption (the largest merge of the hash index included): 798 MB
for 12M rows where the whole table in memory took 6.6 GB (benchmarks/captions_memory.py).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig

from synrep.data.caption_readers import CaptionStream
from synrep.data.caption_skew import CaptionSelection, selection
from synrep.data.concepts import ConceptStream
from synrep.data.dedup import StreamingDedup, StringStore, normalize_series
from synrep.fileio import atomic_path, remove_dead_temporaries, write_json
from synrep.settings import ConfigError, InputError, run_dir, save_resolved
from synrep.tracking import mlflow_run

__all__ = ["run", "source_captions_dir"]


def _summary(stats: dict, stream: CaptionStream, out: Path) -> str:
    bad = stats["bad_rows"]
    kinds = ", ".join(f"{k} {n}" for k, n in bad.items() if n)
    lines = [f"captions: {stats['rows_in']} rows in {stream.path} ({stream.format})"]
    if stats["bad_rows_total"]:
        lines.append(f"  bad rows: {stats['bad_rows_total']} ({kinds}), skipped; "
                     f"report: {out / 'bad_rows.csv'}")
        for src, kind, text in stream.head_bad:
            lines.append(f"    {stream.position} {src}: {kind} {text[:80]}")
    else:
        lines.append("  bad rows: 0")
    lines.append(f"  duplicates removed: {stats['duplicates_removed']} "
                 f"({stats['duplicates_identical_text']} identical text, "
                 f"{stats['duplicates_normalised_only']} after normalisation)")
    limit = f" (limit {stats['limit']})" if stats["limit"] is not None else ""
    lines.append(f"  kept: {stats['rows_out']}{limit} -> {out / 'captions.parquet'}")
    return "\n".join(lines)


def _check_not_empty(stream: CaptionStream) -> None:
    """No usable row is an error here: later steps would fail on it, further from the cause."""
    if stream.rows_usable:
        return
    kinds = ", ".join(f"{k}: {n}" for k, n in stream.bad_counts().items() if n)
    raise InputError(f"{stream.path}: no usable captions: 0 of {stream.rows_in} rows kept ({kinds})")


_TABLE_SCHEMA = {"caption_id": pl.Int64, "caption": pl.String, "url": pl.String, "source_line": pl.Int64}


def _scratch_file(folder: Path, what: str) -> Path:
    """A scratch file named as fileio names its temporaries, so that a killed run's are removed
    by the next run on this host."""
    remove_dead_temporaries(folder / what)
    fd, name = tempfile.mkstemp(prefix=f".{what}.{socket.gethostname()}.{os.getpid()}.", suffix=".tmp",
                                dir=folder)
    os.close(fd)
    return Path(name)


def _kept_captions(wanted: np.ndarray, read: list[tuple[np.ndarray, pl.Series]], new_ids: np.ndarray,
                   new_text: pl.Series, store: StringStore) -> pl.Series:
    """The kept captions numbered ``wanted``: from this block's new ones and what the dedup has
    just read back (a duplicate's first occurrence is one or the other, unless the dedup went row
    by row), the rest from ``store``."""
    ids = np.concatenate([new_ids, *(i for i, _ in read)])
    text = pl.concat([new_text, *(t for _, t in read)])
    order = np.argsort(ids, kind="stable")
    pos = order[np.minimum(np.searchsorted(ids, wanted, sorter=order), len(ids) - 1)] if len(ids) else None
    if pos is None or not (ids[pos] == wanted).all():
        return store.get(wanted)
    return text.gather(pos)


def _stream_dedup(stream: CaptionStream, scratch: dict[str, Path], limit: int | None,
                  select: CaptionSelection | None = None) -> dict[str, int]:
    """Read ``stream`` to its end: kept rows (their first ``limit``) to ``scratch["captions"]``,
    bad rows to ``scratch["bad_rows"]``. Returns the dedup's counts.

    A row is kept when its normalised caption is new (ids in order kept). A removed row counts as
    identical text when its caption occurred before: it then equals either the kept caption it
    duplicates or an earlier duplicate's text of the same kept caption (a second, small dedup on
    (kept id, text) of the duplicates whose text differs from their kept caption). With ``select``
    (a skewed caption set, held-out pairs) only the distinct captions it keeps are written, until
    ``limit`` of them are."""
    import pyarrow.parquet as pq

    kept_text = StringStore(scratch["kept_text"])  # kept captions by id, to verify hash matches
    read: list[tuple[np.ndarray, pl.Series]] = []  # what the dedup read back in this block

    def normalised_kept(ids: np.ndarray) -> pl.Series:
        text = kept_text.get(ids)
        read.append((ids, text))
        return normalize_series(text)

    by_norm = StreamingDedup(normalised_kept)
    variants = StreamingDedup(store_path=scratch["variants"])
    schema = pl.DataFrame(schema=_TABLE_SCHEMA).to_arrow().schema
    n_identical = written = 0
    try:
        # no dictionary pages: captions and urls are nearly all distinct (and it halves the time)
        with pq.ParquetWriter(scratch["captions"], schema, compression="zstd", use_dictionary=False) as writer, \
                open(scratch["bad_rows"], "wb") as bad_file:
            header = True
            for block in stream:
                if header or block.bad.height:
                    block.bad.write_csv(bad_file, include_header=header)
                    header = False
                read.clear()
                first, ids = by_norm.add(block.norm)
                captions = block.rows["caption"]
                kept_text.append(captions.filter(first))
                dup = np.flatnonzero(~first)
                if len(dup):
                    text, dup_ids = captions.gather(dup), ids[dup]
                    same = (text == _kept_captions(dup_ids, read, ids[first], captions.filter(first),
                                                   kept_text)).to_numpy()
                    n_identical += int(same.sum())
                    if not same.all():
                        other = ~same
                        keys = pl.DataFrame({"id": dup_ids[other], "text": text.filter(other)}).select(
                            pl.concat_str(pl.col("id").cast(pl.String), pl.lit("\x00"), pl.col("text"))
                        ).to_series()
                        new_variant, _ = variants.add(keys)
                        n_identical += int((~new_variant).sum())
                room = block.rows.height if limit is None else max(0, limit - written)
                if room:
                    kept, kept_ids = block.rows.filter(first), ids[first]
                    if select is not None:
                        chosen = select.keep(kept)
                        kept, kept_ids = kept.filter(pl.Series(chosen)), kept_ids[chosen]
                    kept = kept.head(room)
                    table = kept.select(pl.Series("caption_id", kept_ids[: kept.height]),
                                        "caption", "url", "source_line")
                    writer.write_table(table.to_arrow().cast(schema))
                    written += kept.height
    finally:
        kept_text.close()
        variants.close()
    return {"rows_deduplicated": by_norm.n, "duplicates_identical_text": n_identical, "rows_out": written}


def source_captions_dir(cfg: DictConfig, source: str) -> Path:
    """Where the captions step writes a source's own caption set (``sources.<name>.caption_set``)."""
    return run_dir(cfg, "source_captions", source)


def _stream(cfg: DictConfig, ccfg: DictConfig, key: str) -> CaptionStream:
    """The caption file to read, or for format concepts the captions drawn from the concept list:
    ``concepts.count`` of them, by default as many as the run's caption set has."""
    if ccfg.format != "concepts":
        return CaptionStream(ccfg.path, ccfg.format, column=ccfg.column, max_length=ccfg.max_length)
    count = ccfg.concepts.count
    if count is None:
        stats = run_dir(cfg, "captions", "stats.json")
        if key == "captions" or not stats.exists():
            raise ConfigError(f"config key '{key}.concepts.count': needed (null counts the run's caption set, "
                              f"{'which this is' if key == 'captions' else f'not made yet: {stats}'})")
        count = json.loads(stats.read_text())["rows_out"]
    return ConceptStream(cfg, ccfg, count, max_length=ccfg.max_length)


def run(cfg: DictConfig, source: str | None = None) -> dict[str, Path]:
    """Read ``captions.path`` in ``captions.format`` (or draw the captions of a concept list),
    report bad rows, dedup, apply the limit, and write ``captions.parquet``, ``bad_rows.csv``,
    ``stats.json`` and ``config.yaml``. With ``source``, that source's own caption set
    (``sources.<source>.caption_set``) into ``source_captions/<source>``.

    Raises ValueError (nothing written) for a malformed file (CaptionFormatError), a file with
    no usable caption (a limit or max_length below 1 fails at load)."""
    import mlflow

    key = "captions" if source is None else f"sources.{source}.caption_set"
    ccfg = cfg.captions if source is None else cfg.sources[source].caption_set
    if ccfg is None:
        raise ConfigError(f"config key '{key}': source {source!r} has no caption set of its own")
    out = run_dir(cfg, "captions") if source is None else source_captions_dir(cfg, source)
    paths = {
        "captions": out / "captions.parquet",
        "bad_rows": out / "bad_rows.csv",
        "stats": out / "stats.json",
        "config": out / "config.yaml",
    }
    start = time.time()
    stream = _stream(cfg, ccfg, key)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch: dict[str, Path] = {}
    try:
        for what in ("captions", "bad_rows", "kept_text", "variants"):
            scratch[what] = _scratch_file(out.parent, f"captions-{what}")
        # A malformed or empty file fails here, before anything is published or an MLflow run is opened.
        select = selection(cfg, ccfg, key)
        counts = _stream_dedup(stream, scratch, ccfg.limit, select)
        _check_not_empty(stream)
        rows, n_dedup, n_identical = stream.rows_usable, counts["rows_deduplicated"], counts["duplicates_identical_text"]
        bad_counts = stream.bad_counts()
        stats = {
            "source": str(stream.path),
            "format": stream.format,
            "source_line": "1-based line number" if stream.position == "line" else "0-based row index",
            "rows_in": stream.rows_in,
            "bad_rows": bad_counts,
            "bad_rows_total": stream.bad_total,
            "duplicates_removed": rows - n_dedup,
            "duplicates_identical_text": n_identical,
            "duplicates_normalised_only": rows - n_dedup - n_identical,
            "rows_deduplicated": n_dedup,
            "limit": ccfg.limit,
            "rows_out": counts["rows_out"],
            "seconds": round(time.time() - start, 2),
        }
        if ccfg.format == "concepts":  # the concept list, seed and draws, and each concept's captions
            stats["concepts"] = stream.record
        if select is not None:  # the skew and held-out pairs: per rule, captions matched and kept
            stats["selection"] = select.record()
        if source is not None:
            stats["for_source"] = source
        with mlflow_run(cfg, "captions", sections=("captions",) if source is None else ("sources",),
                        run_name=None if source is None else f"captions-{source}") as mlrun:
            stats["mlflow_run_id"] = mlrun.info.run_id
            for what in ("captions", "bad_rows"):
                with atomic_path(paths[what]) as tmp:
                    os.replace(scratch[what], tmp)
            write_json(paths["stats"], stats)
            save_resolved(cfg, out)
            metrics = {k: v for k, v in stats.items() if isinstance(v, int) and k != "limit"}
            metrics.update({f"bad_rows_{k}": n for k, n in bad_counts.items()})
            metrics["seconds"] = stats["seconds"]
            mlflow.log_metrics(metrics)
            mlflow.log_artifact(str(paths["stats"]))
            if paths["bad_rows"].stat().st_size <= 5 << 20:
                mlflow.log_artifact(str(paths["bad_rows"]))
    finally:
        for path in scratch.values():
            path.unlink(missing_ok=True)
    print(_summary(stats, stream, out), file=sys.stdout, flush=True)
    return paths
