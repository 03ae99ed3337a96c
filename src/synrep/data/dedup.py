"""Exact caption deduplication: :func:`normalize_caption` (NFKC, lower case, whitespace stripped
and collapsed) and a vectorised first-occurrence dedup on it that keeps the original text."""

from __future__ import annotations

import unicodedata

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["deduplicate", "first_occurrences", "normalize_caption", "normalize_series"]


def normalize_caption(text: str) -> str:
    """NFKC, lower case, strip, and collapse runs of whitespace to one space.

    Whitespace is Python's (``str.split()`` with no argument), applied after NFKC, so no-break
    and ideographic spaces, tabs, newlines and U+2028 all count.
    """
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def normalize_series(captions: pl.Series) -> pl.Series:
    """:func:`normalize_caption` applied to every element, vectorised.

    The result is identical to ``[normalize_caption(t) for t in captions]``. On a pure-ASCII
    string NFKC is the identity, Python lower-cases only A-Z, and its whitespace is the space,
    \\t \\n \\v \\f \\r and \\x1c-\\x1f: Arrow's byte-wise ``ascii_lower``, then (where a
    whitespace character other than a single inner space makes it necessary) one regex pass that
    turns each whitespace run into a space and a strip, is exact there. Only strings with a
    non-ASCII character (about 1 % of a web caption set) go through :func:`normalize_caption`
    itself. Nulls are refused.
    """
    if captions.dtype != pl.String:
        raise ValueError(f"expected a string column, got {captions.dtype}")
    if captions.null_count():
        raise ValueError(f"column {captions.name!r} holds {captions.null_count()} null values")
    if captions.is_empty():
        return captions.clone()
    arrow = captions.to_arrow()
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    if arrow.type not in (pa.string(), pa.large_string()):
        arrow = arrow.cast(pa.large_string())
    lower = pl.Series(captions.name, pc.ascii_lower(arrow), dtype=pl.String)
    python = ~pc.string_is_ascii(arrow).to_numpy(zero_copy_only=False)
    frame = pl.DataFrame({"t": lower})
    text = pl.col("t")
    messy = frame.select(text.str.contains(ASCII_WHITESPACE_TO_FIX)).to_series().to_numpy()
    idx = np.flatnonzero(messy & ~python)
    norm = lower
    if len(idx):
        norm = norm.scatter(idx, lower.gather(idx).str.replace_all(ASCII_WHITESPACE_RUN, " ").str.strip_chars(" "))
    idx = np.flatnonzero(python)
    if len(idx):
        fixed = [normalize_caption(t) for t in captions.gather(idx).to_list()]
        norm = norm.scatter(idx, pl.Series(fixed, dtype=pl.String))
    return norm


# Python's ASCII whitespace (str.split()): space, \t \n \v \f \r and the separators \x1c-\x1f
ASCII_WHITESPACE_RUN = r"[ \t\n\x0b\x0c\r\x1c-\x1f]+"
# what a single inner space does not explain: another whitespace character, a double space, an
# edge space
ASCII_WHITESPACE_TO_FIX = r"[\t\n\x0b\x0c\r\x1c-\x1f]|  |^ | $"


def first_occurrences(norm: pl.Series, hashes: pl.Series | None = None) -> pl.Series:
    """``norm.is_first_distinct()``, computed faster through 64-bit hashes and verified.

    Each row gets the index of the first row with its hash (one window expression); a row is a
    first occurrence when that is itself. Then every other row is compared with the string of
    its hash's first row. All equal means no two different strings share a hash and the marks are
    exact; otherwise (a hash collision) it falls back to ``norm.is_first_distinct()``. ``hashes``
    is for tests.
    """
    h = norm.hash(seed=0) if hashes is None else hashes
    rows = pl.DataFrame({"h": h}).with_row_index("i")
    rep = rows.select(pl.col("i").min().over("h")).to_series()
    first = rep == rows["i"]
    repeats = ~first
    if (norm.filter(repeats) == norm.gather(rep.filter(repeats))).all():
        return first.rename(norm.name)
    return norm.is_first_distinct()


def deduplicate(df: pl.DataFrame, column: str = "caption", norm: pl.Series | None = None) -> pl.DataFrame:
    """Exact dedup on ``normalize_caption(df[column])``.

    Keeps the first row of each normalised text, with all its columns and its original text, in
    input order, and puts a ``caption_id`` column (int64, 0..n-1 in kept order) first; an existing
    ``caption_id`` column is replaced. Same input, same output. Null captions are refused
    (``load_captions`` reports them as bad rows before this). ``norm``: the column already
    normalised (the captions step has it from sorting out bad rows, and normalising is the cost).
    """
    if column not in df.columns:
        raise ValueError(f"no column {column!r} in {df.columns}")
    if norm is None:
        norm = normalize_series(df[column])
    elif len(norm) != df.height:
        raise ValueError(f"norm has {len(norm)} values for {df.height} rows")
    out = df.filter(first_occurrences(norm))
    ids = pl.int_range(pl.len(), dtype=pl.Int64).alias("caption_id")
    return out.select(ids, pl.exclude("caption_id"))
