"""The captions step: normalisation and dedup (synrep.data.dedup), the five input formats, bad rows and
malformed files (synrep.data.caption_readers), and run() (synrep.data.captions), empty caption sets included."""

from __future__ import annotations

import gzip
import json
import random
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from synrep.data import caption_lines, caption_readers, captions
from synrep.data.caption_lines import CaptionFormatError
from synrep.data.caption_readers import load_captions
from synrep.data.dedup import deduplicate, first_occurrences, normalize_caption, normalize_series

# --------------------------------------------------------------------------------------------
# Reference implementations, written independently of the module
# --------------------------------------------------------------------------------------------


def ref_normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    out, space = [], False
    for ch in text:
        if ch.isspace():
            space = True
            continue
        if space and out:
            out.append(" ")
        space = False
        out.append(ch)
    return "".join(out)


def ref_dedup(captions: list[str]) -> list[int]:
    """Indices of the rows a first-occurrence dedup on normalised text keeps."""
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(captions):
        key = ref_normalize(text)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


TRICKY = [
    "ＦＵＬＬＷＩＤＴＨ", "Ｃａｔ！", "a\u00a0b", "\u3000x\u3000", "ﬁsh", "fish",
    "ß", "SS", "ss", "ẞ",
    "İstanbul", "istanbul", "i̇stanbul", "e\u0301", "é", "E\u0301", "\u2028", "\u2029", "a\u2028b",
    "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u200b", "\ufeff", "\ufffd", "😀",
    "Ⅻ", "㎏", "½", "\u212a", "k", "K", "\u212b", "å", "Σ", "ς", "σ", "ǅ", "Ǆ", "\u1680", "\u205f",
    "①", "Ⓐ", "ｶ", "カ", "\u00ad",
]
WORDS = ["a", "cat", "Cat", "CAT", "dog", "on", "the", "Mat", "red", "Car", "2024", "x", "café"]
SPACES = [" ", "  ", "\t", " \n ", "\u00a0", "\u3000", "\u2028", "\x1c", ""]


def random_captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 5)):
            pool = TRICKY if rng.random() < 0.3 else WORDS
            parts.append(rng.choice(pool))
            parts.append(rng.choice(SPACES))
        text = "".join(parts)
        if rng.random() < 0.2:
            text = text.upper()
        if rng.random() < 0.1 and out:
            text = rng.choice(out)  # exact repeat
        out.append(text)
    return out


# --------------------------------------------------------------------------------------------
# Normalisation and dedup
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  A  Cat\tON\nthe mat  ", "a cat on the mat"),
        ("Ａ\u3000Ｃａｔ", "a cat"),
        ("a\u00a0cat", "a cat"),
        ("ﬁsh", "fish"),
        ("Straße", "straße"),
        ("İstanbul", "i̇stanbul"),
        ("Cafe\u0301", "café"),
        ("a\u2028b\x1cc", "a b c"),
        ("\u00a0 \t", ""),
    ],
)
def test_normalize_caption_examples(text, expected):
    assert normalize_caption(text) == expected
    assert ref_normalize(text) == expected


def test_normalize_series_matches_python_on_tricky_and_random_text():
    texts = TRICKY + [t + " " + t.upper() for t in TRICKY] + random_captions(3000, seed=1)
    got = normalize_series(pl.Series("caption", texts)).to_list()
    assert got == [normalize_caption(t) for t in texts]
    assert got == [ref_normalize(t) for t in texts]


def test_normalize_series_is_exact_on_every_ascii_character():
    """The vectorised path claims exactness on pure-ASCII text, control characters and Python's
    ASCII whitespace (\\t \\n \\v \\f \\r \\x1c-\\x1f) included."""
    rng = np.random.default_rng(0)
    alphabet = [chr(c) for c in range(128)] + [" "] * 40 + list("aB")
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 12))) for _ in range(5000)]
    got = normalize_series(pl.Series("caption", texts)).to_list()
    assert got == [ref_normalize(t) for t in texts]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deduplicate_matches_reference(seed):
    texts = random_captions(4000, seed)
    df = pl.DataFrame({"caption": texts, "row": np.arange(len(texts))})
    out = deduplicate(df)
    keep = ref_dedup(texts)
    assert out["row"].to_list() == keep  # first occurrence, input order
    assert out["caption"].to_list() == [texts[i] for i in keep]  # original text
    assert out["caption_id"].dtype == pl.Int64
    assert out["caption_id"].to_list() == list(range(len(keep)))
    assert out.columns == ["caption_id", "caption", "row"]
    assert 0 < len(keep) < len(texts)
    assert deduplicate(df).equals(out)  # stable
    # the step passes the captions it already normalised; the result is the same
    assert deduplicate(df, norm=pl.Series([ref_normalize(t) for t in texts])).equals(out)


def test_deduplicate_ascii_and_unicode_variants_collapse():
    texts = ["fish", "ﬁsh", "FISH ", "Ｆｉｓｈ", "a\u00a0cat", "A  CAT", "\u212aing", "king", "kinG\t",
             "Straße", "STRASSE", "strasse"]
    out = deduplicate(pl.DataFrame({"caption": texts}))
    assert out["caption"].to_list() == ["fish", "a\u00a0cat", "\u212aing", "Straße", "STRASSE"]


def test_first_occurrences_survives_hash_collisions():
    texts = random_captions(2000, seed=3)
    norm = normalize_series(pl.Series("caption", texts))
    expected = norm.is_first_distinct().to_list()
    assert first_occurrences(norm).to_list() == expected
    # every string in one bucket, and many different strings per bucket: still exact
    for fake in (pl.Series([7] * len(norm), dtype=pl.UInt64), norm.str.len_bytes().cast(pl.UInt64)):
        assert first_occurrences(norm, hashes=fake).to_list() == expected


def test_deduplicate_other_column_and_errors():
    df = pl.DataFrame({"text": ["B", "b", "c"], "caption_id": [9, 9, 9]})
    out = deduplicate(df, "text")
    assert out.to_dict(as_series=False) == {"caption_id": [0, 1], "text": ["B", "c"]}
    empty = deduplicate(pl.DataFrame({"caption": []}, schema={"caption": pl.String}))
    assert empty.height == 0 and empty.schema == {"caption_id": pl.Int64, "caption": pl.String}
    with pytest.raises(ValueError, match="null"):
        deduplicate(pl.DataFrame({"caption": ["a", None]}))
    with pytest.raises(ValueError, match="no column"):
        deduplicate(df, "caption")
    with pytest.raises(ValueError, match="norm has 1 values for 3 rows"):
        deduplicate(df, "text", norm=pl.Series(["b"]))


def test_toyworld_near_duplicates_normalise_back():
    from synrep.data.toy_vocabulary import near_duplicate

    rng = np.random.default_rng(0)
    base = ["a picture of a cyan disc", "a small red plus sign on a dark background"]
    for caption in base:
        for _ in range(30):
            assert normalize_caption(near_duplicate(caption, rng)) == caption


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------

ROWS = [
    ("A cat, on a \"mat\"", "http://x/1"),
    ("a DOG", "http://x/2"),
    ("Ｃａｆé\u00a0au lait", "http://x/3"),
]


def write(path: Path, data: bytes | str, gz: bool = False) -> Path:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def rows_of(loaded) -> list[tuple]:
    return list(loaded.rows.select("source_line", "caption", "url").iter_rows())


@pytest.mark.parametrize("gz", [False, True])
def test_cc3m(tmp_path, gz):
    path = write(tmp_path / ("c.tsv.gz" if gz else "c.tsv"), "".join(f"{c}\t{u}\n" for c, u in ROWS), gz)
    loaded = load_captions(path, "cc3m")
    assert loaded.rows_in == 3 and loaded.bad.height == 0
    assert rows_of(loaded) == [(i + 1, c, u) for i, (c, u) in enumerate(ROWS)]


@pytest.mark.parametrize("gz", [False, True])
def test_cc12m_crlf_no_final_newline(tmp_path, gz):
    text = "\r\n".join(f"{u}\t{c}" for c, u in ROWS)
    path = write(tmp_path / ("c.tsv.gz" if gz else "c.tsv"), text, gz)
    loaded = load_captions(path, "cc12m")
    assert rows_of(loaded) == [(i + 1, c, u) for i, (c, u) in enumerate(ROWS)]


def test_redcaps(tmp_path):
    ann = [
        {"image_id": f"id{i}", "author": "u", "url": u, "raw_caption": c.upper(), "caption": c,
         "subreddit": "pics", "score": 3, "created_utc": 1.5e9, "permalink": f"/r/pics/{i}"}
        for i, (c, u) in enumerate(ROWS)
    ]
    path = write(tmp_path / "pics_2020.json", json.dumps({"info": {"subreddit": "pics"}, "annotations": ann}))
    loaded = load_captions(path, "redcaps")
    assert rows_of(loaded) == [(i, c, u) for i, (c, u) in enumerate(ROWS)]
    assert loaded.position == "row"


def test_laion(tmp_path):
    path = tmp_path / "part-00000.parquet"
    pl.DataFrame({"SAMPLE_ID": [1, 2, 3], "URL": [u for _, u in ROWS], "TEXT": [c for c, _ in ROWS],
                  "WIDTH": [64, 64, 64]}).write_parquet(path)
    loaded = load_captions(path, "laion")
    assert rows_of(loaded) == [(i, c, u) for i, (c, u) in enumerate(ROWS)]


@pytest.mark.parametrize(
    "name", ["t.csv", "t.csv.gz", "t.tsv", "t.tsv.gz", "t.jsonl", "t.jsonl.gz", "t.parquet"]
)
def test_table(tmp_path, name):
    path = tmp_path / name
    kind = caption_readers.table_kind(path)
    df = pl.DataFrame({"id": [1, 2, 3], "text": [c for c, _ in ROWS], "url": [u for _, u in ROWS]})
    if kind == "parquet":
        df.write_parquet(path)
        first = 0
    else:
        if kind == "csv":
            text = df.write_csv()
        elif kind == "tsv":
            text = "id\ttext\turl\n" + "".join(f"{i}\t{c}\t{u}\n" for i, c, u in df.iter_rows())
        else:
            text = df.write_ndjson()
        write(path, text, gz=name.endswith(".gz"))
        first = 1 if kind == "jsonl" else 2
    loaded = load_captions(path, "table", column="text")
    assert rows_of(loaded) == [(first + i, c, u) for i, (c, u) in enumerate(ROWS)]


# --------------------------------------------------------------------------------------------
# Bad rows
# --------------------------------------------------------------------------------------------


def bad_of(loaded) -> list[tuple[int, str]]:
    return list(loaded.bad.select("source_line", "kind").iter_rows())


def test_bad_rows_tsv(tmp_path):
    lines = [
        b"a good caption\thttp://u/1",          # 1
        b"",                                     # 2 blank line
        b"   \thttp://u/3",                      # 3 whitespace only
        b"caf\xe9 au lait\thttp://u/4",          # 4 latin-1 byte
        b"a\x00b\thttp://u/5",                   # 5 NUL
        b"x" * 41 + b"\thttp://u/6",             # 6 too long
        b"no url field",                         # 7
        b"a\tb\tc",                              # 8
        "\u00a0\u3000\thttp://u/9".encode(),     # 9 normalises to ""
        "caf\ufffd real replacement char\thttp://u/10".encode(),  # 10 valid UTF-8: kept
        "x" * 40 + "\thttp://u/11",              # 11 exactly max_length: kept
    ]
    lines = [ln.encode() if isinstance(ln, str) else ln for ln in lines]
    lines += [f"good {i}\thttp://u/{i}".encode() for i in range(12, 21)]
    path = write(tmp_path / "bad.tsv", b"\n".join(lines) + b"\n")
    loaded = load_captions(path, "cc3m", max_length=40)
    assert loaded.rows_in == 20
    assert bad_of(loaded) == [(2, "empty"), (3, "empty"), (4, "undecodable"), (5, "nul"),
                              (6, "too_long"), (7, "fields"), (8, "fields"), (9, "empty")]
    assert loaded.rows["source_line"].to_list() == [1, 10, 11, *range(12, 21)]
    assert "\\xe9" in loaded.bad.filter(pl.col("kind") == "undecodable")["text"][0]
    assert loaded.bad_counts() == {"undecodable": 1, "fields": 2, "nul": 1, "empty": 3, "too_long": 1}
    assert loaded.norm.to_list() == [normalize_caption(t) for t in loaded.rows["caption"]]


def test_bad_rows_across_blocks(tmp_path, monkeypatch):
    """Line numbers stay right when the file is read in many small blocks."""
    monkeypatch.setattr(caption_lines, "BLOCK_BYTES", 7)
    lines = [f"caption {i}\thttp://u/{i}".encode() for i in range(1, 41)]
    lines[9] = b"bad \xff\xfe byte\thttp://u/10"
    lines[24] = b"one field"
    path = write(tmp_path / "c.tsv.gz", b"\n".join(lines), gz=True)
    loaded = load_captions(path, "cc3m")
    assert loaded.rows_in == 40
    assert bad_of(loaded) == [(10, "undecodable"), (25, "fields")]
    assert loaded.rows["caption"].to_list()[-1] == "caption 40"


def test_bad_rows_csv_multiline_records(tmp_path):
    text = (
        b"caption,url\n"                          # 1
        b"good one,http://u/2\n"                  # 2
        b'"two\nline, record",http://u/3\n'      # 3-4
        b"too,many,fields\n"                      # 5
        b"\n"                                     # 6
        b"bad \xc3\x28 utf8,http://u/7\n"         # 7
        b'"  ",http://u/8\n'                      # 8 whitespace only
        b"last,http://u/9\n"                      # 9
    )
    loaded = load_captions(write(tmp_path / "t.csv", text), "table", column="caption")
    assert bad_of(loaded) == [(5, "fields"), (6, "empty"), (7, "undecodable"), (8, "empty")]
    assert rows_of(loaded) == [(2, "good one", "http://u/2"), (3, "two\nline, record", "http://u/3"),
                               (9, "last", "http://u/9")]


def test_bad_rows_jsonl(tmp_path):
    lines = [
        b'{"caption": "ok 1", "url": "u1"}',
        b"not json",
        b'{"other": 1}',
        b'{"caption": null}',
        b'{"caption": 5}',
        b'{"caption": "caf\xe9"}',
        b"",
        b'{"caption": "lone \\udc80 surrogate"}',
        b'{"caption": "nul \\u0000 here"}',
    ] + [b'{"caption": "ok %d"}' % i for i in range(10, 16)]
    loaded = load_captions(write(tmp_path / "t.jsonl", b"\n".join(lines)), "table", column="caption")
    assert loaded.rows_in == 15
    assert bad_of(loaded) == [(2, "fields"), (3, "fields"), (4, "empty"), (5, "fields"),
                              (6, "undecodable"), (7, "empty"), (8, "undecodable"), (9, "nul")]
    assert loaded.rows["source_line"].to_list() == [1, *range(10, 16)]


def test_bad_rows_redcaps_and_parquet(tmp_path):
    ann = [{"caption": "ok"}, {"caption": ""}, {"url": "no caption"}, {"caption": "\udc80"},
           {"caption": "fine", "url": "u"}]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"annotations": ann}))  # ensure_ascii escapes the surrogate
    loaded = load_captions(path, "redcaps")
    assert bad_of(loaded) == [(1, "empty"), (2, "fields"), (3, "undecodable")]
    assert rows_of(loaded) == [(0, "ok", None), (4, "fine", "u")]

    path = tmp_path / "l.parquet"
    pl.DataFrame({"TEXT": ["ok", None, " \t", "y" * 9, "fine"]}).write_parquet(path)
    loaded = load_captions(path, "laion", max_length=8)
    assert bad_of(loaded) == [(1, "empty"), (2, "empty"), (3, "too_long")]
    assert rows_of(loaded) == [(0, "ok", None), (4, "fine", None)]


# --------------------------------------------------------------------------------------------
# Malformed files
# --------------------------------------------------------------------------------------------


def _truncated_gz(path: Path) -> Path:
    data = gzip.compress("".join(f"caption {i}\thttp://u/{i}\n" for i in range(2000)).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


MALFORMED = {
    "missing file": (lambda d: d / "nope.tsv", "cc3m", "no such file"),
    "missing parquet": (lambda d: d / "nope.parquet", "laion", "no such file"),
    "csv given as tsv": (lambda d: write(d / "c.tsv", "".join(f"cap {i},http://u/{i}\n" for i in range(9))),
                         "cc3m", "wrong delimiter"),
    "three fields everywhere": (lambda d: write(d / "c.tsv", "a\tb\tc\n" * 5 + "ok\turl\n"), "cc3m",
                                "tab-separated fields"),
    "columns swapped": (lambda d: write(d / "c.tsv", "".join(f"http://u/{i}\tcap {i}\n" for i in range(5))),
                        "cc3m", "swapped"),
    "utf-16": (lambda d: write(d / "c.tsv", "".join(f"cap {i}\thttp://u/{i}\n" for i in range(5))
                               .encode("utf-16")), "cc3m", "UTF-8"),
    "empty file": (lambda d: write(d / "c.tsv", ""), "cc3m", "empty"),
    "truncated gzip": (lambda d: _truncated_gz(d / "c.tsv.gz"), "cc12m", "gzip"),
    "not gzip": (lambda d: write(d / "c.csv.gz", "caption\nplain text\n"), "table", "gzip"),
    "invalid json": (lambda d: write(d / "r.json", '{"annotations": [{"caption": "a"},'), "redcaps",
                     "invalid JSON"),
    "not redcaps": (lambda d: write(d / "r.json", "[1, 2]"), "redcaps", "annotations"),
    "not parquet": (lambda d: write(d / "l.parquet", "caption\turl\n"), "laion", "parquet"),
    "laion without TEXT": (lambda d: (pl.DataFrame({"caption": ["a"]}).write_parquet(d / "l.parquet"),
                                      d / "l.parquet")[1], "laion", "'TEXT'"),
    "csv missing column": (lambda d: write(d / "t.csv", "text,url\na,b\n"), "table", "'caption'"),
    "tsv table given csv": (lambda d: write(d / "t.tsv", "caption,url\na,b\n"), "table", "wrong delimiter"),
    "jsonl missing key": (lambda d: write(d / "t.jsonl", '{"text": "a"}\n{"text": "b"}\n'), "table",
                          "'caption'"),
    "parquet missing column": (lambda d: (pl.DataFrame({"text": ["a"]}).write_parquet(d / "t.parquet"),
                                          d / "t.parquet")[1], "table", "'caption'"),
    "unknown extension": (lambda d: write(d / "t.txt", "caption\n"), "table", "extension"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_raises(tmp_path, case):
    make, fmt, fragment = MALFORMED[case]
    path = make(tmp_path)
    with pytest.raises(CaptionFormatError) as info:
        load_captions(path, fmt, column="caption")
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name, fmt", [("c.tsv", "cc3m"), ("t.csv", "table"), ("t.jsonl", "table")])
def test_file_without_newlines_is_malformed(tmp_path, monkeypatch, name, fmt):
    monkeypatch.setattr(caption_lines, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(caption_lines, "BLOCK_BYTES", 256)
    path = write(tmp_path / name, bytes(b for b in range(256) if b != 10) * 8)
    with pytest.raises(CaptionFormatError, match="longer than") as info:
        load_captions(path, fmt)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------

TOY = [
    ("a red circle", "toy://train/0"),
    ("A Red  Circle", "toy://train/1"),      # near duplicate of 1
    ("a red circle", "toy://train/2"),       # exact duplicate of 1
    ("a blue square", "toy://train/3"),
    ("", "toy://train/4"),                   # empty
    ("ａ\u3000ｂｌｕｅ\u00a0square ", "toy://train/5"),  # near duplicate of 4
    ("a green ring", "toy://train/6"),
    ("a blue square", "toy://train/7"),      # exact duplicate of 4
    ("one pink cross", "toy://train/8"),
]


def _cfg(tmp_path, *extra):
    from synrep.config import load_config

    return load_config([f"paths.results_dir={tmp_path / 'results'}", f"paths.data_dir={tmp_path / 'data'}",
                        *extra])


def test_run_end_to_end(tmp_path, capsys):
    import mlflow
    from omegaconf import OmegaConf

    raw = tmp_path / "data" / "toyworld" / "captions_raw.tsv"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(f"{c}\t{u}\n" for c, u in TOY) + "broken row without url\n" + "z\tu\n" * 3)
    cfg = _cfg(tmp_path)
    paths = captions.run(cfg)

    out = tmp_path / "results" / "toy" / "captions"
    assert paths == {"captions": out / "captions.parquet", "bad_rows": out / "bad_rows.csv",
                     "stats": out / "stats.json", "config": out / "config.yaml"}
    table = pl.read_parquet(paths["captions"])
    assert table.schema == {"caption_id": pl.Int64, "caption": pl.String, "url": pl.String,
                            "source_line": pl.Int64}
    assert table.rows() == [
        (0, "a red circle", "toy://train/0", 1),
        (1, "a blue square", "toy://train/3", 4),
        (2, "a green ring", "toy://train/6", 7),
        (3, "one pink cross", "toy://train/8", 9),
        (4, "z", "u", 11),
    ]
    stats = json.loads(paths["stats"].read_text())
    assert stats["rows_in"] == 13
    assert stats["bad_rows"] == {"undecodable": 0, "fields": 1, "nul": 0, "empty": 1, "too_long": 0}
    assert stats["bad_rows_total"] == 2
    assert stats["duplicates_removed"] == 6
    assert stats["duplicates_identical_text"] == 4
    assert stats["duplicates_normalised_only"] == 2
    assert stats["rows_out"] == stats["rows_deduplicated"] == 5
    assert stats["rows_in"] == stats["bad_rows_total"] + stats["duplicates_removed"] + stats["rows_out"]
    bad = pl.read_csv(paths["bad_rows"])
    assert bad.select("source_line", "kind").rows() == [(5, "empty"), (10, "fields")]
    resolved = OmegaConf.load(paths["config"])
    assert resolved.captions.path == str(raw)
    assert "bad rows: 2" in capsys.readouterr().out

    runs = mlflow.search_runs(experiment_names=["toy"], filter_string="tags.`synrep.step` = 'captions'",
                              output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    assert metrics["rows_out"] == 5 and metrics["bad_rows_fields"] == 1 and metrics["duplicates_removed"] == 6
    assert runs[0].data.params["captions.format"] == "cc3m"
    assert not list(out.glob(".*.tmp"))

    # the limit keeps the first N after dedup; same ids
    limited = captions.run(_cfg(tmp_path, "captions.limit=2"))
    assert pl.read_parquet(limited["captions"]).rows() == table.head(2).rows()
    assert json.loads(limited["stats"].read_text())["rows_out"] == 2


def test_run_malformed_file_raises(tmp_path):
    cfg = _cfg(tmp_path, f"captions.path={tmp_path / 'missing.tsv'}")
    with pytest.raises(CaptionFormatError, match="missing.tsv"):
        captions.run(cfg)
    assert not (tmp_path / "results" / "toy" / "captions" / "captions.parquet").exists()


# Files with no usable caption: (name, format, column, max_length, writer, expected bad counts)
EMPTY_SETS = {
    "cc3m all empty": ("c.tsv", "cc3m", "caption", 500,
                       lambda p: write(p, "\n   \thttp://u/2\n\u00a0\u3000\thttp://u/3\n\n \t \n"),
                       "5 rows kept (empty: 5)"),
    "cc3m all too long": ("c.tsv.gz", "cc3m", "caption", 4,
                          lambda p: write(p, "".join(f"caption {i}\thttp://u/{i}\n" for i in range(4)), gz=True),
                          "4 rows kept (too_long: 4)"),
    "csv empty and too long": ("t.csv", "table", "text", 4,
                               lambda p: write(p, 'id,text\n1,""\n2,   \n3,much too long\n4,also too long\n'
                                                  '5,longer still\n'),
                               "5 rows kept (empty: 2, too_long: 3)"),
    "jsonl all empty": ("t.jsonl", "table", "caption", 500,
                        lambda p: write(p, '{"caption": null}\n{"caption": " "}\n\n'),
                        "3 rows kept (empty: 3)"),
    "laion all too long": ("l.parquet", "laion", "caption", 3,
                           lambda p: pl.DataFrame({"TEXT": ["abcd", "efghij"], "URL": ["u", "v"]}).write_parquet(p),
                           "2 rows kept (too_long: 2)"),
}


@pytest.mark.parametrize("case", list(EMPTY_SETS))
def test_run_refuses_an_empty_caption_set(tmp_path, capsys, case):
    from synrep.__main__ import main

    name, fmt, column, max_length, make, counts = EMPTY_SETS[case]
    path = tmp_path / "data" / name
    path.parent.mkdir(parents=True)
    make(path)
    overrides = [f"paths.results_dir={tmp_path / 'results'}", f"paths.data_dir={tmp_path / 'data'}",
                 f"captions.path={path}", f"captions.format={fmt}", f"captions.column={column}",
                 f"captions.max_length={max_length}"]
    out = tmp_path / "results" / "toy" / "captions"
    expected = f"{path}: no usable captions: 0 of {counts}"
    with pytest.raises(ValueError) as info:
        captions.run(_cfg(tmp_path, *overrides[2:]))
    assert str(info.value) == expected
    assert not out.exists()  # nothing written, not even the folder

    assert main(["captions", *overrides]) == 1
    err = capsys.readouterr().err
    assert err == f"synrep captions: error: {expected}\n"
    assert not (out / "captions.parquet").exists() and not out.exists()


def test_run_limit_must_keep_a_caption(tmp_path, capsys):
    from synrep.__main__ import main

    raw = tmp_path / "data" / "toyworld" / "captions_raw.tsv"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(f"{c}\t{u}\n" for c, u in TOY))
    for limit in (0, -3):
        with pytest.raises(ValueError, match=f"config key 'captions.limit': must be >= 1 .*or null.*got {limit}"):
            _cfg(tmp_path, f"captions.limit={limit}")
    overrides = [f"paths.results_dir={tmp_path / 'results'}", f"paths.data_dir={tmp_path / 'data'}"]
    assert main(["captions", *overrides, "captions.limit=0"]) == 2
    assert "captions.limit" in capsys.readouterr().err
    assert not (tmp_path / "results" / "toy" / "captions").exists()
    # the smallest limit keeps the first caption
    paths = captions.run(_cfg(tmp_path, "captions.limit=1"))
    assert pl.read_parquet(paths["captions"]).rows() == [(0, "a red circle", "toy://train/0", 1)]


# --------------------------------------------------------------------------------------------
# Streaming: the dedup over blocks, and the step in bounded memory
# --------------------------------------------------------------------------------------------

FAKE_HASHES = {
    "polars": None,
    "one bucket": lambda s: pl.Series([7] * len(s), dtype=pl.UInt64),
    "length": lambda s: s.str.len_bytes().cast(pl.UInt64),
    "three buckets": lambda s: s.hash(seed=0) % 3,
}


def ref_first_ids(texts: list[str]) -> tuple[list[bool], list[int]]:
    """First occurrence of each string and the number of that occurrence among the distinct ones."""
    seen: dict[str, int] = {}
    first, ids = [], []
    for text in texts:
        first.append(text not in seen)
        ids.append(seen.setdefault(text, len(seen)))
    return first, ids


@pytest.mark.parametrize("hashes", list(FAKE_HASHES))
def test_streaming_dedup_is_exact_under_any_hash(tmp_path, hashes):
    """Blocks of random sizes; hashes that put different strings together (all in one, by length,
    a few buckets) must not change a single mark or id."""
    from synrep.data.dedup import StreamingDedup

    texts = [normalize_caption(t) for t in random_captions(3000, seed=4)]
    dedup = StreamingDedup(store_path=tmp_path / "store", hash_fn=FAKE_HASHES[hashes])
    rng = random.Random(5)
    first, ids, pos = [], [], 0
    while pos < len(texts):
        n = rng.choice([1, 2, 17, 300, 900])
        f, i = dedup.add(pl.Series(texts[pos:pos + n], dtype=pl.String))
        first += f.tolist()
        ids += i.tolist()
        pos += n
    assert (first, ids) == ref_first_ids(texts)
    assert dedup.n == len(set(texts))
    dedup.close()
    assert not (tmp_path / "store").exists()


def test_string_store_and_sorted_runs(tmp_path):
    from synrep.data.dedup import StringStore, _SortedRuns

    store = StringStore(tmp_path / "s")
    texts = random_captions(500, seed=6)
    for a in range(0, 500, 37):
        store.append(pl.Series(texts[a:a + 37], dtype=pl.String))
    ids = np.random.default_rng(0).integers(0, 500, 200)
    assert store.get(ids).to_list() == [texts[i] for i in ids]
    with pytest.raises(IndexError):
        store.get(np.array([500]))
    store.close()

    runs, ref = _SortedRuns(), {}
    rng = np.random.default_rng(1)
    for _ in range(40):
        keys = np.unique(rng.integers(0, 2**64, rng.integers(1, 50), dtype=np.uint64))
        keys = keys[[k not in ref for k in keys.tolist()]]
        values = rng.integers(0, 1000, len(keys))
        runs.add(keys, values)
        ref.update(zip(keys.tolist(), values.tolist()))
    assert len(runs.runs) <= 8  # merged as they grow
    probe = np.concatenate([np.fromiter(ref, dtype=np.uint64), rng.integers(0, 2**64, 100, dtype=np.uint64)])
    assert runs.get(probe).tolist() == [ref.get(k, -1) for k in probe.tolist()]


def _step_outputs(paths) -> tuple:
    stats = json.loads(paths["stats"].read_text())
    for key in ("seconds", "mlflow_run_id"):
        stats.pop(key)
    return pl.read_parquet(paths["captions"]).rows(), paths["bad_rows"].read_bytes(), stats


def _mixed_file(tmp_path: Path, fmt: str) -> tuple[Path, str, str]:
    """A file in ``fmt`` with exact and normalised repeats and bad rows of every kind."""
    texts = random_captions(400, seed=7)
    texts[5], texts[90], texts[200] = "", "a\x00b", "y" * 60
    urls = [f"http://u/{i}" for i in range(len(texts))]
    if fmt in ("cc3m", "cc12m", "tsv"):
        clean = [" ".join(t.split()) if t.strip() else t for t in texts]  # no tabs or line breaks in TSV
        lines = [f"{c}\t{u}" if fmt != "cc12m" else f"{u}\t{c}" for c, u in zip(clean, urls)]
        lines[17], lines[300] = "one field", "x\ty\tz"
        data = "\n".join(lines).encode()
        data = data.replace(b"one field", b"bad \xff byte")  # undecodable
        if fmt == "tsv":
            data = b"caption\turl\n" + data
        path = write(tmp_path / ("c.tsv.gz" if fmt != "tsv" else "t.tsv"), data, gz=fmt != "tsv")
        return path, ("table" if fmt == "tsv" else fmt), "caption"
    df = pl.DataFrame({"caption": texts, "url": urls})
    if fmt == "csv":
        return write(tmp_path / "t.csv", df.write_csv() + "too,many,fields\n"), "table", "caption"
    if fmt == "jsonl":
        return write(tmp_path / "t.jsonl", df.write_ndjson() + "not json\n"), "table", "caption"
    if fmt == "redcaps":
        ann = [{"caption": c, "url": u} for c, u in zip(texts, urls)] + [{"url": "no caption"}]
        return write(tmp_path / "r.json", json.dumps({"annotations": ann})), "redcaps", "caption"
    df.rename({"caption": "TEXT", "url": "URL"}).write_parquet(tmp_path / "l.parquet", row_group_size=50)
    return tmp_path / "l.parquet", "laion", "caption"


@pytest.mark.parametrize("fmt", ["cc3m", "cc12m", "tsv", "csv", "jsonl", "redcaps", "laion"])
def test_run_streams_blocks_to_the_same_output(tmp_path, monkeypatch, fmt):
    """The step over many small blocks, with a hash that collides all the time, writes what a
    plain-Python dedup of the whole file keeps, the same bad rows, and the same counts."""
    import functools

    from synrep.data.dedup import StreamingDedup

    path, fmt_name, column = _mixed_file(tmp_path, fmt)
    overrides = (f"captions.path={path}", f"captions.format={fmt_name}", f"captions.column={column}",
                 "captions.max_length=50", "captions.limit=null")
    reference = load_captions(path, fmt_name, column=column, max_length=50)  # one block
    texts = reference.rows["caption"].to_list()
    keep = ref_dedup(texts)
    expected = [(n, texts[i], reference.rows["url"][i], reference.rows["source_line"][i])
                for n, i in enumerate(keep)]
    assert len(keep) < len(texts) and reference.bad.height >= 3

    monkeypatch.setattr(caption_lines, "BLOCK_BYTES", 300)
    monkeypatch.setattr(caption_readers, "CHUNK_ROWS", 23)
    monkeypatch.setattr(captions, "StreamingDedup",
                        functools.partial(StreamingDedup, hash_fn=lambda s: s.str.len_bytes().cast(pl.UInt64)))
    table, bad, stats = _step_outputs(captions.run(_cfg(tmp_path, *overrides)))
    assert table == expected
    assert bad == reference.bad.write_csv().encode()
    assert stats["rows_in"] == reference.rows_in
    assert stats["bad_rows"] == reference.bad_counts()
    assert stats["duplicates_removed"] == len(texts) - len(keep)
    assert stats["duplicates_identical_text"] == len(texts) - len(set(texts))
    assert stats["rows_out"] == stats["rows_deduplicated"] == len(keep)
    leftovers = [p for p in (tmp_path / "results").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers

    if fmt != "cc3m":
        return
    # the limit stops the table, not the counts
    limited = captions.run(_cfg(tmp_path, *overrides[:-1], "captions.limit=5"))
    table5, bad5, stats5 = _step_outputs(limited)
    assert table5 == expected[:5] and bad5 == bad
    assert stats5["rows_deduplicated"] == len(keep) and stats5["rows_out"] == 5


MEMORY_CHILD = """
import json, sys
from synrep.config import load_config
from synrep.data import captions
captions.run(load_config(sys.argv[1:]))
# the peak RSS of this process (ru_maxrss would carry over the parent's peak through fork + exec)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_kb": peak}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_run_memory_is_bounded_on_a_large_file(tmp_path):
    """The step's peak RSS on 1.5M CC12M-style rows (190 MB) against 150k of them: it grows by
    less than 0.6x the file's growth, where holding the whole table took 3.3x (943 against 382 MB
    here; 6.6 GB for a 1.9 GB, 12M-row file: benchmarks/captions_memory.py). The table equals a
    plain-Python set dedup of the lines."""
    import subprocess
    import sys

    n = 1_500_000
    rng = np.random.default_rng(0)
    topic = rng.integers(0, n // 2, n)  # about half the rows repeat an earlier caption
    shout = (rng.random(n) < 0.1).tolist()  # ... or repeat it in capitals (a normalised duplicate)
    lines = [
        f"https://img{i % 7}.example.com/{i:09d}/{k:08d}.jpg\t"
        + (caption.upper() if up else caption)
        for i, (k, up) in enumerate(zip(topic.tolist(), shout))
        for caption in [f"a photo of item {k} on a wooden table next to the window, taken in city number {k % 977}"]
    ]
    peaks, sizes = [], []
    for rows in (n // 10, n):
        path = tmp_path / f"cc12m_{rows}.tsv"
        path.write_text("".join(line + "\n" for line in lines[:rows]), encoding="utf-8")
        sizes.append(path.stat().st_size / 1024)
        overrides = [f"paths.results_dir={tmp_path / 'results'}", f"paths.data_dir={tmp_path}",
                     "captions.format=cc12m", f"captions.path={path}", "captions.limit=null"]
        proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, *overrides], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks.append(json.loads(proc.stdout.strip().splitlines()[-1])["peak_kb"])
    growth, file_growth = peaks[1] - peaks[0], sizes[1] - sizes[0]
    assert growth < 0.6 * file_growth, (f"peak RSS {peaks[0] / 1024:.0f} -> {peaks[1] / 1024:.0f} MB for "
                                        f"{sizes[0] / 1024:.0f} -> {sizes[1] / 1024:.0f} MB of captions")

    seen: set[str] = set()
    expected = []
    for line_no, line in enumerate(lines, 1):
        url, caption = line.split("\t")
        key = " ".join(unicodedata.normalize("NFKC", caption).lower().split())
        if key not in seen:
            seen.add(key)
            expected.append((len(expected), caption, url, line_no))
    table = pl.read_parquet(tmp_path / "results" / "toy" / "captions" / "captions.parquet")
    assert table.rows() == expected
