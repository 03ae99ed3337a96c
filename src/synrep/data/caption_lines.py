"""What every caption reader shares: opening a (gzipped) file, reading it in blocks of whole lines
with a bound on memory and on line length, decoding UTF-8 line by line, and the tally of bad rows
(counted by kind, the first of each kind kept for messages) that makes a mostly-bad file fail as
malformed. The formats themselves are read in synrep.data.caption_readers.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import re
import zlib
from pathlib import Path
from typing import IO, Iterator

import polars as pl

from synrep.settings import InputError

BAD_KINDS = ("undecodable", "fields", "nul", "empty", "too_long")

# Bytes read at a time from text files (line-aligned blocks are processed with polars).
BLOCK_BYTES = 8 << 20
# Longest line accepted in a text file
MAX_LINE_BYTES = 64 << 20
# A text file where more than this fraction of rows are bad in one structural way is malformed.
MAJORITY = 0.5
# Characters of the repr of a bad row kept in the report
SHOW_CHARS = 200

SURROGATE = re.compile("[\ud800-\udfff]")
URL_LIKE = r"^[A-Za-z][A-Za-z0-9+.\-]*://\S*$"


class CaptionFormatError(InputError):
    """A caption file cannot be read as the configured format (names the file and the problem)."""


ROW_SCHEMA = {"source_line": pl.Int64, "caption": pl.String, "url": pl.String}
BAD_SCHEMA = {"source_line": pl.Int64, "kind": pl.String, "text": pl.String}


def shown(value: str | bytes) -> str:
    text = repr(value)
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 3] + "..."


class BadRows:
    """Bad rows counted by kind, with the first of each kind for messages. The rows themselves
    are held only until :meth:`take`, so that a file's bad rows never pile up in memory."""

    def __init__(self, unit: str = "line") -> None:
        self.unit = unit
        self.lines: list[int] = []
        self.kinds: list[str] = []
        self.texts: list[str] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self._first: dict[str, tuple[int, str]] = {}

    def add(self, line: int, kind: str, value: str | bytes) -> None:
        text = shown(value)
        self.lines.append(line)
        self.kinds.append(kind)
        self.texts.append(text)
        self.counts[kind] += 1
        self._first.setdefault(kind, (line, text))

    def note(self, frame: pl.DataFrame) -> None:
        """Count already-formatted bad rows (source_line, kind, text, in order) without keeping them."""
        for src, kind, text in frame.iter_rows():
            self.counts[kind] += 1
            self._first.setdefault(kind, (src, text))

    def count(self, kind: str) -> int:
        return self.counts[kind]

    def first(self, kind: str) -> str:
        line, text = self._first[kind]
        return f"{self.unit} {line}: {text}"

    def take(self) -> pl.DataFrame:
        """The rows added since the last call, as a frame."""
        frame = pl.DataFrame(
            {"source_line": self.lines, "kind": self.kinds, "text": self.texts}, schema=BAD_SCHEMA
        )
        self.lines, self.kinds, self.texts = [], [], []
        return frame


@contextlib.contextmanager
def open_binary(path: Path) -> Iterator[IO[bytes]]:
    """Open a file for reading bytes, through gzip if it is compressed."""
    if not path.exists():
        raise CaptionFormatError(f"{path}: no such file")
    if not path.is_file():
        raise CaptionFormatError(f"{path}: not a file")
    with read_errors(path), open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if gz or path.suffix.lower() == ".gz":
            with gzip.GzipFile(fileobj=raw, mode="rb") as handle:
                yield handle
        else:
            yield raw


@contextlib.contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """Turn I/O and decompression errors into CaptionFormatError naming the file."""
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CaptionFormatError(f"{path}: truncated or corrupt gzip data ({err})") from err
    except OSError as err:
        raise CaptionFormatError(f"{path}: cannot read ({err})") from err


def line_blocks(handle: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(number of its first line, block)``: blocks of whole lines joined by ``\\n``,
    without the final newline. A file's last line needs no newline; a UTF-8 BOM is dropped.
    A line longer than MAX_LINE_BYTES raises (not a line-based text file)."""
    line_no = 1
    pending: list[bytes] = []  # the start of an unfinished line
    pending_bytes = 0
    first = True
    while True:
        chunk = handle.read(BLOCK_BYTES)  # read at call time: tests shrink it
        if first:
            first = False
            if chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
        if not chunk:
            if pending_bytes:
                yield line_no, b"".join(pending)
            return
        cut = chunk.rfind(b"\n")
        if cut < 0:
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes > MAX_LINE_BYTES:
                raise CaptionFormatError(
                    f"{path}: line {line_no} is longer than {MAX_LINE_BYTES >> 20} MiB; "
                    "not a line-based text file?"
                )
            continue
        block = b"".join([*pending, chunk[:cut]]) if pending else chunk[:cut]
        pending, pending_bytes = [chunk[cut + 1 :]], len(chunk) - cut - 1
        yield line_no, block
        line_no += block.count(b"\n") + 1


def numbered_lines(handle: IO[bytes], path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)``, the line without its ``\\n``."""
    for first_line, block in line_blocks(handle, path):
        for i, line in enumerate(block.split(b"\n")):
            yield first_line + i, line


def decode_lines(block: bytes) -> tuple[list[str | None], dict[int, bytes]]:
    """Split a block into lines decoded as UTF-8; undecodable lines are None (raw bytes kept)."""
    try:
        return block.decode("utf-8").split("\n"), {}
    except UnicodeDecodeError:
        pass
    lines: list[str | None] = []
    raw_bad: dict[int, bytes] = {}
    for i, raw in enumerate(block.split(b"\n")):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(None)
            raw_bad[i] = raw
    return lines, raw_bad


def check_majority(path: Path, bad: BadRows, rows_in: int, final: bool, what: str) -> None:
    """Fail when most rows so far are bad in a structural way (checked early on big files)."""
    if not final and rows_in < 1000:
        return
    n_fields = bad.count("fields")
    if n_fields and n_fields > MAJORITY * rows_in:
        raise CaptionFormatError(
            f"{path}: {n_fields} of {rows_in} rows {what}, e.g. {bad.first('fields')}; "
            "wrong delimiter or format?"
        )
    n_enc = bad.count("undecodable") + bad.count("nul")
    if n_enc and n_enc > MAJORITY * rows_in:
        example = bad.first("undecodable") if bad.count("undecodable") else bad.first("nul")
        raise CaptionFormatError(
            f"{path}: {n_enc} of {rows_in} rows are not valid UTF-8 text or hold NUL characters, "
            f"e.g. {example}; not a UTF-8 text file (UTF-16? binary?)"
        )


class Tally:
    """What a reader has seen so far: data rows and bad rows."""

    def __init__(self, unit: str = "line") -> None:
        self.rows_in = 0
        self.bad = BadRows(unit)


def rows_frame(lines: list[int], captions: list[str], urls: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({"source_line": lines, "caption": captions, "url": urls}, schema=ROW_SCHEMA)


def text_or_bad(value: object) -> tuple[str | None, str | None]:
    """A JSON value as a caption: (text, None) or (None, bad kind)."""
    if value is None:
        return None, "empty"
    if not isinstance(value, str):
        return None, "fields"
    if SURROGATE.search(value):
        return None, "undecodable"
    return value, None


def clean_url(value: object) -> str | None:
    if isinstance(value, str) and not SURROGATE.search(value):
        return value
    return None
