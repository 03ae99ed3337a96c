"""Caption files in their published formats, read into usable rows and bad rows.

``CaptionStream(path, fmt)`` reads one of (``captions.format``) block by block, so that memory
stays that of one block whatever the file's size (a RedCaps JSON file, one JSON document, is
parsed whole: those files are per subreddit and year); ``load_captions(path, fmt)`` collects the
whole file (tests, small files):

    cc3m     CC3M TSV: caption <TAB> url, no header, no quoting
    cc12m    CC12M TSV: url <TAB> caption, no header, no quoting
    redcaps  RedCaps annotation JSON: {"info": ..., "annotations": [{"caption", "url", ...}]}
    laion    LAION parquet: column TEXT (and URL)
    table    a CSV / TSV / parquet / JSONL file with a named column (``captions.column``); the
             kind is taken from the extension (.csv, .tsv, .parquet, .jsonl / .ndjson)

Text files may be gzip-compressed (``.gz`` or gzip magic bytes); all text must be UTF-8.

Every row is accounted for. A row that cannot be used is a *bad row*: counted, reported with its
position (``source_line``: the 1-based line number for text files, where a multi-line CSV record
counts from its first line; the 0-based row index for parquet and JSON) and skipped. Bad row kinds,
in the order they are tested (a row gets the first that applies):

    undecodable  the line holds bytes that are not UTF-8 (a byte-level check: a genuine U+FFFD in
                 valid text is fine); in JSON, a caption or url with an unpaired surrogate escape
    fields       the row does not have the expected structure: wrong number of tab/comma
                 separated fields, a JSONL line that is not a JSON object with the column, an
                 annotation that is not an object with a string "caption"
    nul          the caption holds a NUL character
    empty        a blank line, a null caption, or a caption that normalises to "" (whitespace only)
    too_long     the caption has more than ``max_length`` characters (of the original text)

A malformed *file* raises :class:`CaptionFormatError`, naming the file and the problem: missing
file, missing column, a file with no rows, truncated or corrupt gzip, invalid JSON, a file that is
not parquet, a line over 64 MiB, or a text file where most rows are bad in the same way (more than
half ``fields``: "wrong delimiter?"; more than half ``undecodable`` + ``nul``: "not UTF-8?"). For
cc3m / cc12m, a caption column that mostly holds URLs means the two formats were confused.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import polars as pl

from synrep.data.caption_lines import (
    BAD_KINDS,
    BAD_SCHEMA,
    MAJORITY,
    ROW_SCHEMA,
    SHOW_CHARS,
    SURROGATE,
    URL_LIKE,
    BadRows,
    CaptionFormatError,
    Tally,
    check_majority,
    clean_url,
    decode_lines,
    line_blocks,
    numbered_lines,
    open_binary,
    read_errors,
    rows_frame,
    shown,
    text_or_bad,
)
from synrep.data.dedup import normalize_series

__all__ = ["FORMATS", "CaptionBlock", "CaptionStream", "LoadedCaptions", "load_captions", "table_kind"]

FORMATS = ("cc3m", "cc12m", "redcaps", "laion", "table")
# Rows handed on at a time by the readers that go row by row (CSV, JSONL, RedCaps, parquet)
CHUNK_ROWS = 100_000


@dataclass
class LoadedCaptions:
    """A caption file, read: its usable rows and its bad rows."""

    path: Path
    format: str
    rows_in: int  # data rows in the file (lines, less the header, for text files)
    rows: pl.DataFrame  # source_line int64, caption str, url str (null where none)
    bad: pl.DataFrame  # source_line int64, kind str, text str (truncated repr), by source_line
    # What source_line counts: "line" (1-based line number) or "row" (0-based row index)
    position: str = "line"
    # normalize_caption of rows["caption"], kept so the step does not normalise twice
    norm: pl.Series | None = field(default=None, repr=False)

    def bad_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(BAD_KINDS, 0)
        for kind, n in self.bad["kind"].value_counts().iter_rows():
            counts[kind] = n
        return counts


def _read_tsv(path: Path, fmt: str, column: str, tally: Tally) -> Iterator[pl.DataFrame]:
    """cc3m / cc12m / a table .tsv (header line): tab-separated, no quoting, one row per line."""
    if fmt == "cc3m":
        n_fields, cap_i, url_i = 2, 0, 1
        layout = "caption<TAB>url"
    elif fmt == "cc12m":
        n_fields, cap_i, url_i = 2, 1, 0
        layout = "url<TAB>caption"
    else:  # table: from the header
        n_fields = cap_i = url_i = None
        layout = "tab-separated with a header line"
    bad = tally.bad
    n_rows = n_url = 0  # usable rows, and those whose caption is a URL (swapped columns?)
    with open_binary(path) as handle, read_errors(path):
        for first_line, block in line_blocks(handle, path):
            if n_fields is None:
                head, sep, block = block.partition(b"\n")
                try:
                    header = head.decode("utf-8").rstrip("\r").split("\t")
                except UnicodeDecodeError:
                    raise CaptionFormatError(f"{path}: header line is not UTF-8: {shown(head)}") from None
                if column not in header:
                    hint = "; wrong delimiter?" if len(header) == 1 else ""
                    raise CaptionFormatError(
                        f"{path}: no column {column!r} in the header {header}{hint}"
                    )
                n_fields, cap_i = len(header), header.index(column)
                url_i = next((i for i, h in enumerate(header) if h.lower() == "url"), None)
                layout = f"{n_fields} tab-separated fields as in the header"
                first_line += 1
                if not sep:
                    continue
            lines, raw_bad = decode_lines(block)
            tally.rows_in += len(lines)
            frame = pl.DataFrame({"line": pl.Series(lines, dtype=pl.String)}).with_columns(
                source_line=pl.int_range(first_line, first_line + len(lines), dtype=pl.Int64),
                line=pl.col("line").str.strip_suffix("\r"),
            )
            line = pl.col("line")
            kind = (
                pl.when(line.is_null()).then(pl.lit("undecodable"))
                .when(line.str.strip_chars() == "").then(pl.lit("empty"))
                .when(line.str.count_matches("\t", literal=True) != n_fields - 1).then(pl.lit("fields"))
                .otherwise(pl.lit(None, dtype=pl.String))
            )
            frame = frame.with_columns(kind=kind)
            flagged = frame.filter(pl.col("kind").is_not_null()).select("source_line", "kind", "line")
            for src, k, text in flagged.iter_rows():
                bad.add(src, k, raw_bad[src - first_line] if k == "undecodable" else text)
            fields = pl.col("line").str.split_exact("\t", n_fields - 1)
            rows = frame.filter(pl.col("kind").is_null()).select(
                "source_line",
                caption=fields.struct.field(f"field_{cap_i}"),
                url=fields.struct.field(f"field_{url_i}") if url_i is not None
                else pl.lit(None, dtype=pl.String),
            )
            del frame
            n_rows += rows.height
            if fmt in ("cc3m", "cc12m") and rows.height:
                n_url += rows.select(pl.col("caption").str.contains(URL_LIKE).sum()).item()
            check_majority(path, bad, tally.rows_in, False, f"do not have {n_fields} tab-separated fields ({layout})")
            yield rows
    if n_fields is None:
        raise CaptionFormatError(f"{path}: empty file (no header line)")
    check_majority(path, bad, tally.rows_in, True, f"do not have {n_fields} tab-separated fields ({layout})")
    if n_url > MAJORITY * n_rows:
        raise CaptionFormatError(
            f"{path}: the caption field of {n_url} of {n_rows} rows is a URL; the columns "
            f"are swapped? ({fmt} is {layout}; cc3m is caption<TAB>url, cc12m is url<TAB>caption)"
        )


def _read_csv(path: Path, column: str, tally: Tally) -> Iterator[pl.DataFrame]:
    """A table .csv with a header line, RFC 4180 quoting (records may span lines)."""
    bad = tally.bad
    lines: list[int] = []
    captions: list[str] = []
    urls: list[str | None] = []
    with open_binary(path) as handle, read_errors(path):
        # Bytes that are not UTF-8 become lone surrogates, found per record below.
        stream = (line.decode("utf-8", "surrogateescape") + "\n" for _, line in numbered_lines(handle, path))
        reader = csv.reader(stream)
        try:
            header = next(reader, None)
            if header is None:
                raise CaptionFormatError(f"{path}: empty file (no header line)")
            if column not in header:
                hint = "; wrong delimiter?" if len(header) == 1 else ""
                raise CaptionFormatError(f"{path}: no column {column!r} in the header {header}{hint}")
            n_fields, cap_i = len(header), header.index(column)
            url_i = next((i for i, h in enumerate(header) if h.lower() == "url"), None)
            start = reader.line_num + 1
            for row in reader:
                line, start = start, reader.line_num + 1
                tally.rows_in += 1
                joined = ",".join(row)
                if SURROGATE.search(joined):
                    bad.add(line, "undecodable", joined.encode("utf-8", "surrogateescape"))
                elif not row or (len(row) == 1 and not row[0].strip()):
                    bad.add(line, "empty", joined)
                elif len(row) != n_fields:
                    bad.add(line, "fields", joined)
                else:
                    lines.append(line)
                    captions.append(row[cap_i])
                    urls.append(row[url_i] if url_i is not None else None)
                if tally.rows_in % CHUNK_ROWS == 0:
                    check_majority(path, bad, tally.rows_in, False, f"do not have {n_fields} comma-separated fields")
                    yield rows_frame(lines, captions, urls)
                    lines, captions, urls = [], [], []
        except csv.Error as err:
            raise CaptionFormatError(f"{path}: line {reader.line_num}: {err} (unbalanced quote?)") from err
    yield rows_frame(lines, captions, urls)
    check_majority(path, bad, tally.rows_in, True, f"do not have {n_fields} comma-separated fields")


def _read_jsonl(path: Path, column: str, tally: Tally) -> Iterator[pl.DataFrame]:
    """A table .jsonl: one JSON object per line."""
    bad = tally.bad
    lines: list[int] = []
    captions: list[str] = []
    urls: list[str | None] = []
    seen_column = False
    with open_binary(path) as handle, read_errors(path):
        for line_no, raw in numbered_lines(handle, path):
            if tally.rows_in and tally.rows_in % CHUNK_ROWS == 0:  # the rows so far, before this one
                check_majority(path, bad, tally.rows_in, False, f"are not JSON objects with a {column!r} key")
                yield rows_frame(lines, captions, urls)
                lines, captions, urls = [], [], []
            tally.rows_in += 1
            raw = raw.removesuffix(b"\r")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.add(line_no, "undecodable", raw)
                continue
            if not text.strip():
                bad.add(line_no, "empty", text)
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict) or column not in obj:
                bad.add(line_no, "fields", text)
                continue
            seen_column = True
            caption, kind = text_or_bad(obj[column])
            if kind:
                bad.add(line_no, kind, obj[column] if kind != "fields" else text)
                continue
            lines.append(line_no)
            captions.append(caption)
            urls.append(clean_url(obj.get("url", obj.get("URL"))))
    yield rows_frame(lines, captions, urls)
    if tally.rows_in and not seen_column and bad.count("fields"):
        raise CaptionFormatError(f"{path}: no line is a JSON object with the column {column!r}, "
                                 f"e.g. {bad.first('fields')}")
    check_majority(path, bad, tally.rows_in, True, f"are not JSON objects with a {column!r} key")


def _read_redcaps(path: Path, tally: Tally) -> Iterator[pl.DataFrame]:
    """RedCaps annotation JSON; ``source_line`` is the 0-based index in ``annotations``. The file
    is one JSON document, parsed whole (RedCaps ships one per subreddit and year)."""
    with open_binary(path) as handle, read_errors(path):
        data = handle.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        doc = json.loads(data.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as err:
        raise CaptionFormatError(f"{path}: invalid JSON ({err})") from None
    del data
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(annotations, list):
        raise CaptionFormatError(
            f"{path}: not a RedCaps annotation file (expected a JSON object with an 'annotations' list)"
        )
    bad = tally.bad
    tally.rows_in = len(annotations)
    lines: list[int] = []
    captions: list[str] = []
    urls: list[str | None] = []
    for i, item in enumerate(annotations):
        if i and i % CHUNK_ROWS == 0:
            yield rows_frame(lines, captions, urls)
            lines, captions, urls = [], [], []
        if not isinstance(item, dict) or "caption" not in item:
            bad.add(i, "fields", json.dumps(item)[:SHOW_CHARS])
            continue
        caption, kind = text_or_bad(item["caption"])
        if kind:
            bad.add(i, kind, item["caption"] if kind != "fields" else json.dumps(item)[:SHOW_CHARS])
            continue
        lines.append(i)
        captions.append(caption)
        urls.append(clean_url(item.get("url")))
    yield rows_frame(lines, captions, urls)
    if annotations and bad.count("fields") == len(annotations):
        raise CaptionFormatError(f"{path}: no annotation has a 'caption', e.g. {bad.first('fields')}")


def _read_parquet(path: Path, column: str, url_column: str | None, tally: Tally) -> Iterator[pl.DataFrame]:
    """A parquet file, read a batch at a time; ``source_line`` is the 0-based row index."""
    import pyarrow.parquet as pq

    if not path.exists():
        raise CaptionFormatError(f"{path}: no such file")
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as err:  # polars raises ComputeError / OSError flavours
        raise CaptionFormatError(f"{path}: not a readable parquet file ({err})") from None
    if column not in schema:
        raise CaptionFormatError(f"{path}: no column {column!r} (columns: {list(schema)})")
    dtype = schema[column]
    if dtype != pl.String and dtype.base_type() not in (pl.Categorical, pl.Enum):
        raise CaptionFormatError(f"{path}: column {column!r} holds {dtype}, not text")
    if url_column is None:
        url_column = next((c for c in schema if c.lower() == "url"), None)
    cols = [column] + ([url_column] if url_column in schema and url_column != column else [])
    try:
        with pq.ParquetFile(path) as file:
            for batch in file.iter_batches(batch_size=CHUNK_ROWS, columns=cols):
                df = pl.from_arrow(batch)
                start = tally.rows_in
                tally.rows_in += df.height
                yield df.select(
                    source_line=pl.int_range(start, start + df.height, dtype=pl.Int64),
                    caption=pl.col(column).cast(pl.String),
                    url=pl.col(cols[1]).cast(pl.String) if len(cols) > 1 else pl.lit(None, dtype=pl.String),
                )
    except CaptionFormatError:
        raise
    except Exception as err:
        raise CaptionFormatError(f"{path}: cannot read parquet ({err})") from None


def table_kind(path: str | Path) -> str:
    """csv | tsv | parquet | jsonl, from a file name (a ``.gz`` suffix is looked through)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    kinds = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
             ".jsonl": "jsonl", ".ndjson": "jsonl"}
    if ext not in kinds:
        raise CaptionFormatError(
            f"{path}: cannot tell the table format from the extension {ext or '(none)'!r} "
            f"(expected one of {sorted(kinds)}, optionally + .gz)"
        )
    return kinds[ext]


def _check_content(
    rows: pl.DataFrame, max_length: int
) -> tuple[pl.DataFrame, pl.Series, pl.DataFrame]:
    """NUL / empty / too-long captions -> bad rows. Returns the good rows, their normalised
    captions and the bad rows."""
    cap = pl.col("caption")
    norm = normalize_series(rows["caption"].fill_null(""))
    kind = (
        pl.when(cap.is_null()).then(pl.lit("empty"))
        .when(cap.str.contains("\x00", literal=True)).then(pl.lit("nul"))
        .when(pl.col("_norm") == "").then(pl.lit("empty"))
        .when(cap.str.len_chars() > max_length).then(pl.lit("too_long"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    rows = rows.with_columns(_norm=norm).with_columns(_kind=kind)
    good = rows.filter(pl.col("_kind").is_null())
    good_norm = good["_norm"].rename("caption")
    good = good.drop("_norm", "_kind")
    flagged = rows.filter(pl.col("_kind").is_not_null())
    bad = pl.DataFrame(
        {
            "source_line": flagged["source_line"],
            "kind": flagged["_kind"],
            "text": [shown(t) for t in flagged["caption"].to_list()],
        },
        schema=BAD_SCHEMA,
    )
    return good, good_norm, bad


@dataclass
class CaptionBlock:
    """Consecutive rows of a caption file."""

    rows: pl.DataFrame  # the usable rows: source_line int64, caption str, url str (null where none)
    norm: pl.Series  # normalize_caption of rows["caption"]
    bad: pl.DataFrame  # the bad rows among the same rows: source_line int64, kind str, text str, by source_line


class CaptionStream:
    """A caption file in ``fmt``, read a block at a time: iterating yields :class:`CaptionBlock`
    objects in file order (every row in exactly one block, usable or bad), and the counts below
    are complete once iteration has ended.

    ``column`` is the caption column for ``fmt="table"`` (cc3m/cc12m/redcaps/laion have fixed
    layouts). A malformed file raises :class:`CaptionFormatError`: the checks that need the whole
    file (most rows bad in one way, swapped columns, no rows) are made when the last block has
    been handed out, so a consumer must not publish anything before iteration ends.
    """

    def __init__(self, path: str | Path, fmt: str = "cc3m", *, column: str = "caption",
                 max_length: int = 500) -> None:
        self.path = Path(path)
        if fmt not in FORMATS:
            raise ValueError(f"unknown caption format {fmt!r}; expected one of {list(FORMATS)}")
        self.format = fmt
        self.column = column
        self.max_length = max_length
        self._kind = table_kind(self.path) if fmt == "table" else None
        # What source_line counts: "line" (1-based line number) or "row" (0-based row index)
        self.position = "row" if fmt in ("redcaps", "laion") or self._kind == "parquet" else "line"
        self.rows_in = 0  # data rows in the file (lines, less the header, for text files)
        self.rows_usable = 0
        self.head_bad: list[tuple[int, str, str]] = []  # the first 3 bad rows (source_line, kind, text)
        self._bad = BadRows(self.position)

    @property
    def bad_total(self) -> int:
        return sum(self._bad.counts.values())

    def bad_counts(self) -> dict[str, int]:
        return {kind: self._bad.count(kind) for kind in BAD_KINDS}

    def _reader(self, tally: Tally) -> Iterator[pl.DataFrame]:
        path, fmt, column = self.path, self.format, self.column
        if fmt in ("cc3m", "cc12m"):
            return _read_tsv(path, fmt, column, tally)
        if fmt == "redcaps":
            return _read_redcaps(path, tally)
        if fmt == "laion":
            return _read_parquet(path, "TEXT", "URL", tally)
        if self._kind == "tsv":
            return _read_tsv(path, "table", column, tally)
        if self._kind == "csv":
            return _read_csv(path, column, tally)
        if self._kind == "jsonl":
            return _read_jsonl(path, column, tally)
        return _read_parquet(path, column, None, tally)

    def _block(self, rows: pl.DataFrame, tally: Tally) -> CaptionBlock:
        rows, norm, content_bad = _check_content(rows, self.max_length)
        bad = pl.concat([tally.bad.take(), content_bad]).sort("source_line", maintain_order=True)
        self._bad.note(bad)
        self.rows_in = tally.rows_in
        self.rows_usable += rows.height
        if len(self.head_bad) < 3:
            self.head_bad.extend(bad.head(3 - len(self.head_bad)).iter_rows())
        return CaptionBlock(rows, norm, bad)

    def __iter__(self) -> Iterator[CaptionBlock]:
        tally = Tally(self.position)
        for rows in self._reader(tally):
            yield self._block(rows, tally)
        if tally.bad.lines:  # bad rows after the last block of usable rows
            yield self._block(pl.DataFrame(schema=ROW_SCHEMA), tally)
        self.rows_in = tally.rows_in
        if self.rows_in == 0:
            raise CaptionFormatError(f"{self.path}: no caption rows (empty file)")
        # NUL captions found only by the content check count towards the "not a text file" rule.
        check_majority(self.path, self._bad, self.rows_in, True, "have the wrong structure")


def load_captions(
    path: str | Path, fmt: str = "cc3m", *, column: str = "caption", max_length: int = 500
) -> LoadedCaptions:
    """Read a whole caption file in ``fmt`` into memory (a :class:`CaptionStream`, collected):
    its usable rows and its bad rows. Raises :class:`CaptionFormatError` for a malformed file."""
    stream = CaptionStream(path, fmt, column=column, max_length=max_length)
    blocks = list(stream)
    rows = pl.concat([b.rows for b in blocks], rechunk=False) if blocks else pl.DataFrame(schema=ROW_SCHEMA)
    norm = pl.concat([b.norm for b in blocks]) if blocks else pl.Series("caption", [], dtype=pl.String)
    bad = pl.concat([b.bad for b in blocks]) if blocks else pl.DataFrame(schema=BAD_SCHEMA)
    return LoadedCaptions(path=stream.path, format=fmt, rows_in=stream.rows_in, rows=rows, bad=bad,
                          position=stream.position, norm=norm)
