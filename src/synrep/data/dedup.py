"""Exact caption deduplication: :func:`normalize_caption` (NFKC, lower case, whitespace stripped
and collapsed) and a vectorised first-occurrence dedup on it that keeps the original text, for a
table in memory (:func:`deduplicate`) or a stream of blocks (:class:`StreamingDedup`, 16 bytes of memory a
distinct string, the strings on disk)."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["StreamingDedup", "StringStore", "deduplicate", "first_occurrences", "normalize_caption",
           "normalize_series"]


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


class StringStore:
    """Strings appended a block at a time to a scratch file and read back by number (0, 1, ... in
    the order appended); memory is 8 bytes a string. The file is deleted by :meth:`close`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = open(self.path, "w+b")
        self._size = 0
        self._first_ids = [0]  # id of the first string of each chunk, and the next id
        self._bounds: list[np.ndarray] = []  # per chunk: file offsets of its strings, then its end

    def __len__(self) -> int:
        return self._first_ids[-1]

    def append(self, strings: pl.Series) -> None:
        if strings.null_count():
            raise ValueError("a StringStore holds no null values")
        if strings.is_empty():
            return
        arr = strings.to_arrow()
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        arr = arr.cast(pa.large_string())
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
        data = memoryview(arr.buffers()[2])[offsets[0]:offsets[-1]]
        self._file.seek(self._size)
        self._file.write(data)
        self._file.flush()
        self._bounds.append(offsets - offsets[0] + self._size)
        self._size += len(data)
        self._first_ids.append(self._first_ids[-1] + len(arr))

    def get(self, ids: np.ndarray) -> pl.Series:
        """The strings numbered ``ids``, in that order."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"string ids must be in [0, {len(self)})")
        chunk = np.searchsorted(self._first_ids, ids, side="right") - 1
        starts = np.empty(len(ids), dtype=np.int64)
        ends = np.empty(len(ids), dtype=np.int64)
        for c in np.unique(chunk):
            sel = chunk == c
            local = ids[sel] - self._first_ids[c]
            starts[sel] = self._bounds[c][local]
            ends[sel] = self._bounds[c][local + 1]
        fd = self._file.fileno()
        data = b"".join([os.pread(fd, e - s, s) for s, e in zip(starts.tolist(), ends.tolist())])
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        arr = pa.LargeStringArray.from_buffers(len(ids), pa.py_buffer(offsets), pa.py_buffer(data))
        return pl.Series(arr, dtype=pl.String)

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class _SortedRuns:
    """A map from distinct uint64 keys to int64 values, held as sorted runs that are merged when a
    run is not more than twice the size of the next (a log-structured merge): adding a block is
    O(block + amortised merging), a lookup is a binary search per run, and memory is 16 bytes a
    key plus, while the largest merge runs, one more copy of the runs it merges."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.runs)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key; -1 where it is absent."""
        out = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_values in self.runs:
            pos = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
            hit = run_keys[pos] == keys
            out[hit] = run_values[pos[hit]]
        return out

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add keys that are absent and distinct."""
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self.runs.append((keys[order], values[order]))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            small, big = self.runs.pop(), self.runs.pop()
            self.runs.append(self._merge(big, small))

    @staticmethod
    def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        (ka, va), (kb, vb) = a, b
        # where each of b's keys lands in the merged run (b's keys are sorted and not in a)
        at = np.searchsorted(ka, kb) + np.arange(len(kb))
        from_a = np.ones(len(ka) + len(kb), dtype=bool)
        from_a[at] = False
        keys = np.empty(len(from_a), dtype=ka.dtype)
        values = np.empty(len(from_a), dtype=va.dtype)
        keys[from_a], keys[at] = ka, kb
        values[from_a], values[at] = va, vb
        return keys, values


class StreamingDedup:
    """Exact first-occurrence dedup of a stream of string blocks.

    :meth:`add` takes the next block and returns, for each of its strings, whether it is the first
    occurrence in the stream so far and the id of that first occurrence (ids 0, 1, ... in order of
    first occurrence). Memory holds a 64-bit hash and an id for each distinct string (16 bytes),
    not the strings: every hash match is verified against the string it matched, read back
    through ``lookup(ids)`` (or this object's own :class:`StringStore` at ``store_path``), so a
    hash collision never merges two different strings. Different strings that share a hash go to a
    small exact table (a dict) and the blocks that touch it take a row-by-row path. ``hash_fn``
    (a Series of strings to a Series of uint64) is for tests.
    """

    def __init__(self, lookup: Callable[[np.ndarray], pl.Series] | None = None, *,
                 store_path: str | os.PathLike | None = None,
                 hash_fn: Callable[[pl.Series], pl.Series] | None = None) -> None:
        if (lookup is None) == (store_path is None):
            raise ValueError("give one of lookup and store_path")
        self._store = StringStore(store_path) if store_path is not None else None
        self._lookup = lookup if lookup is not None else self._store.get
        self._hash = hash_fn if hash_fn is not None else (lambda s: s.hash(seed=0))
        self._index = _SortedRuns()
        self._collided: dict[int, dict[str, int]] = {}  # hash -> {string: id} where strings collide
        self.n = 0  # distinct strings so far

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def add(self, keys: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """``(first, ids)`` for a block of strings: ``first[i]`` marks the first occurrence of
        ``keys[i]`` in the stream, ``ids[i]`` is the id of that occurrence."""
        if keys.dtype != pl.String:
            raise ValueError(f"expected a string column, got {keys.dtype}")
        if keys.null_count():
            raise ValueError(f"column {keys.name!r} holds {keys.null_count()} null values")
        n = len(keys)
        if n == 0:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        h = self._hash(keys).cast(pl.UInt64).to_numpy()
        uniq, first_row, inverse = np.unique(h, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        if self._collided and np.isin(uniq, np.fromiter(self._collided, dtype=np.uint64)).any():
            return self._add_exactly(keys, h)
        # every row equals the block's first row with its hash ...
        rep_row = first_row[inverse]
        repeats = np.flatnonzero(rep_row != np.arange(n))
        if len(repeats) and not (keys.gather(repeats) == keys.gather(rep_row[repeats])).all():
            return self._add_exactly(keys, h)
        # ... and that row equals the earlier string with its hash, where there is one
        found = self._index.get(uniq)
        hit = found >= 0
        if hit.any() and not (keys.gather(first_row[hit]).rename("") == self._lookup(found[hit]).rename("")).all():
            return self._add_exactly(keys, h)
        new = np.flatnonzero(~hit)
        new = new[np.argsort(first_row[new], kind="stable")]  # ids in order of first occurrence
        found[new] = self.n + np.arange(len(new))
        first = np.zeros(n, dtype=bool)
        first[first_row[new]] = True
        self._index.add(uniq[new], found[new])
        if self._store is not None:
            self._store.append(keys.gather(first_row[new]))
        self.n += len(new)
        return first, found[inverse]

    def _add_exactly(self, keys: pl.Series, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`add` a row at a time, comparing strings wherever hashes match."""
        base = self.n
        texts = keys.to_list()
        earlier = self._index.get(h)
        block_ids: dict[int, int] = {}  # hash -> id of this block's first new string with it
        new_texts: list[str] = []
        first = np.zeros(len(texts), dtype=bool)
        ids = np.empty(len(texts), dtype=np.int64)

        def text_of(i: int) -> str:
            return new_texts[i - base] if i >= base else self._lookup(np.array([i]))[0]

        for row, (key, text) in enumerate(zip(h.tolist(), texts)):
            table = self._collided.get(key)
            if table is not None:
                i = table.get(text)
                if i is None:
                    i = table[text] = base + len(new_texts)
            else:
                i0 = block_ids.get(key, int(earlier[row]))
                if i0 < 0:
                    i = block_ids[key] = base + len(new_texts)
                elif text_of(i0) == text:
                    i = i0
                else:  # a different string with the same hash
                    i = base + len(new_texts)
                    self._collided[key] = {text_of(i0): i0, text: i}
            if i == base + len(new_texts):
                new_texts.append(text)
                first[row] = True
            ids[row] = i
        if block_ids:
            self._index.add(np.fromiter(block_ids, dtype=np.uint64, count=len(block_ids)),
                            np.fromiter(block_ids.values(), dtype=np.int64, count=len(block_ids)))
        if self._store is not None:
            self._store.append(pl.Series(new_texts, dtype=pl.String))
        self.n += len(new_texts)
        return first, ids
