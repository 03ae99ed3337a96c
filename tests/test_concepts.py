"""Captions from a concept list (captions.format concepts, synrep.data.concepts): counts, determinism
per seed, every concept present (read back by the toy world's own caption parser, or by string
search on a concept file), bad concept files named in one line, and a source's own caption set
made by the captions step."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from synrep.config import ConfigError, load_config
from synrep.data import captions, concepts, toy_vocabulary
from synrep.data.caption_lines import CaptionFormatError
from tests.test_captions import TOY, ref_normalize


def _cfg(tmp_path, *extra):
    return load_config([f"paths.results_dir={tmp_path / 'results'}", f"paths.data_dir={tmp_path / 'data'}", *extra])


CONCEPT_FILE = """\
concepts:
  animal: [dog, [cat, kitten], heron]
  place: [a beach, a kitchen, the snow, a boat]
templates:
  - "a photo of a {animal} on {place}"
  - "a {animal}"
  - "{animal} in {place}, seen from above"
"""


@pytest.mark.parametrize("count", [1, 37, 500])
def test_toy_concepts_count_distinct_and_every_concept(count):
    cfg = _cfg(Path("/nonexistent"))
    texts, record = concepts.synthesise(concepts.toy_concepts(cfg), count, seed=3)
    assert len(texts) == count
    assert len({ref_normalize(t) for t in texts}) == count  # distinct as the dedup reads them
    # the world's own caption parser reads back what each caption names
    parsed = [toy_vocabulary.parse_caption(t, cfg) for t in texts]
    names = toy_vocabulary.attribute_names(cfg)
    missing = []
    for slot in ("shape", "colour", "size", "background"):
        seen = Counter(p[slot] for p in parsed if p[slot] is not None)
        assert [seen[i] for i in range(len(names[slot]))] == list(record["concept_counts"][slot].values())
        assert list(record["concept_counts"][slot]) == names[slot]
        missing += [f"{slot}:{name}" for i, name in enumerate(names[slot]) if not seen[i]]
        if count >= 500:  # each slot used far more often than it has concepts: every concept appears
            assert all(seen[i] > 0 for i in range(len(names[slot])))
    assert all(p["shape"] is not None and p["colour"] is not None for p in parsed)
    assert record["concepts_missing"] == missing


def test_toy_domains_appear_when_asked():
    cfg = _cfg(Path("/nonexistent"))
    texts, record = concepts.synthesise(concepts.toy_concepts(cfg, domains=True), 300, seed=0)
    for domain in cfg.toyworld.domains:
        phrases = [t[: -len("{x}")].strip() for t in toy_vocabulary.DOMAIN_TEMPLATES[domain] if t.endswith("{x}")]
        assert any(t.startswith(p) for t in texts for p in phrases), domain
    assert not record["concepts_missing"]


def test_same_seed_same_captions_other_seed_others():
    cl = concepts.toy_concepts(_cfg(Path("/nonexistent")))
    a, _ = concepts.synthesise(cl, 200, seed=0)
    b, _ = concepts.synthesise(cl, 200, seed=0)
    c, _ = concepts.synthesise(cl, 200, seed=1)
    assert a == b
    assert a != c


def test_concept_file_every_concept_and_template(tmp_path):
    path = tmp_path / "concepts.yaml"
    path.write_text(CONCEPT_FILE)
    cl = concepts.load_concept_file(path)
    texts, record = concepts.synthesise(cl, 30, seed=0)
    assert len(set(texts)) == 30
    patterns = [re.compile("^" + re.escape(t).replace(r"\{animal\}", "(?P<animal>.+?)")
                           .replace(r"\{place\}", "(?P<place>.+?)") + "$") for t in cl.templates]
    found = Counter()
    for text in texts:
        match = next(m for p in patterns if (m := p.match(text)))
        for slot, word in match.groupdict().items():
            found[(slot, word)] += 1
    for word in ("dog", "heron", "a beach", "a kitchen", "the snow", "a boat"):
        assert any(found[(s, word)] for s in ("animal", "place")), word
    assert found[("animal", "cat")] + found[("animal", "kitten")] == record["concept_counts"]["animal"]["cat"]
    assert sum(record["concept_counts"]["place"].values()) == sum(n for (s, _), n in found.items() if s == "place")


def test_too_few_distinct_captions_is_one_line(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("concepts: {x: [a, b]}\ntemplates: ['{x}']\n")
    with pytest.raises(CaptionFormatError, match=r"small\.yaml: makes only 2 distinct captions") as err:
        concepts.synthesise(concepts.load_concept_file(path), 3, seed=0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, problem", [
    ("concepts: {x: [a]}\ntemplates: ['{y}']\n", "unknown slot"),
    ("concepts: {x: [a], z: [b]}\ntemplates: ['{x}']\n", "slot 'z' appears in no template"),
    ("concepts: {x: []}\ntemplates: ['{x}']\n", "slot 'x' has no concepts"),
    ("concepts: {x: [a, 3]}\ntemplates: ['{x}']\n", "concept 1"),
    ("concepts: [a, b]\n", "expected a mapping"),
    ("concepts: {x: [a]\n  templates: [", "not a YAML concept list"),
    ("concepts: {x: [a]}\ntemplates: []\n", "no templates"),
])
def test_bad_concept_file_named_in_one_line(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CaptionFormatError, match=re.escape(problem)) as err:
        concepts.load_concept_file(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_bad_concept_file_on_the_command_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("concepts: {x: [a]}\ntemplates: ['{y}']\n")
    done = subprocess.run([sys.executable, "-m", "synrep", "captions", f"paths.results_dir={tmp_path / 'r'}",
                           "captions.format=concepts", f"captions.concepts.file={path}", "captions.concepts.count=5"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "unknown slot" in lines[0]
    assert not (tmp_path / "r" / "toy" / "captions").exists()


def _raw(tmp_path):
    raw = tmp_path / "data" / "toyworld" / "captions_raw.tsv"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(f"{c}\t{u}\n" for c, u in TOY))
    return raw


def test_source_caption_set_takes_the_run_count_and_records_its_draws(tmp_path):
    _raw(tmp_path)
    cfg = _cfg(tmp_path, "sources.c={caption_set: {format: concepts}}")
    with pytest.raises(ConfigError, match=r"sources\.c\.caption_set\.concepts\.count.*not made yet"):
        captions.run(cfg, source="c")
    main = captions.run(cfg)
    n_real = pl.read_parquet(main["captions"]).height
    paths = captions.run(cfg, source="c")
    assert paths["captions"] == tmp_path / "results" / "toy" / "source_captions" / "c" / "captions.parquet"
    table = pl.read_parquet(paths["captions"])
    assert table.height == n_real and table["caption_id"].to_list() == list(range(n_real))
    expected, _ = concepts.synthesise(concepts.toy_concepts(cfg), n_real, seed=0)
    assert table["caption"].to_list() == expected
    stats = json.loads(paths["stats"].read_text())
    assert stats["format"] == "concepts" and stats["for_source"] == "c" and stats["rows_out"] == n_real
    assert stats["concepts"]["count"] == n_real and stats["concepts"]["seed"] == 0
    assert stats["duplicates_removed"] == 0 and stats["bad_rows_total"] == 0
    # the run's own captions are untouched
    assert pl.read_parquet(main["captions"]).height == n_real


def test_source_caption_set_from_a_concept_file(tmp_path):
    from synrep.generation.generate import caption_count, load_captions, source_shards
    from synrep.generation.sources import source_spec

    _raw(tmp_path)
    path = tmp_path / "concepts.yaml"
    path.write_text(CONCEPT_FILE)
    cfg = _cfg(tmp_path, f"sources.c={{caption_set: {{format: concepts, concepts: {{file: {path}, count: 30, seed: 4}}}}}}",
               "generation.captions_per_shard=8")
    captions.run(cfg)
    paths = captions.run(cfg, source="c")
    expected, _ = concepts.synthesise(concepts.load_concept_file(path), 30, seed=4)
    spec = source_spec(cfg, "c")
    # generation reads the source's own captions, in shards of its own count
    assert caption_count(cfg, spec) == 30
    assert load_captions(cfg, 8, 8, spec)["caption"].to_list() == expected[8:16]
    assert [s.stop - s.start for s in source_shards(cfg, "c")] == [8, 8, 8, 6]
    assert json.loads(paths["stats"].read_text())["concepts"]["file"] == str(path)
    # a source without one keeps the run's captions and its spec (and hash) as before
    assert "caption_set" not in source_spec(cfg, "w2")


def test_caption_set_needs_a_mode_that_generates_from_captions(tmp_path):
    with pytest.raises(ConfigError, match=r"sources\.c\.caption_set"):
        _cfg(tmp_path, "sources.c={mode: inpaint, generator: models/toy_inpaint, caption_set: {format: concepts}}")
    with pytest.raises(ConfigError, match=r"sources\.c\.caption_set\.concepts\.count"):
        _cfg(tmp_path, "sources.c={caption_set: {format: concepts, concepts: {count: 0}}}")
    with pytest.raises(ConfigError, match=r"captions\.concepts\.count': needed"):
        captions.run(_cfg(tmp_path, "captions.format=concepts"))


def test_sweep_runs_on_a_concept_source_carry_its_captions(tmp_path):
    from synrep.experiments import sweep_run
    from synrep.experiments.sweep import expand

    _raw(tmp_path)
    cfg = _cfg(tmp_path, "sources.c={caption_set: {format: concepts, concepts: {count: 7}}}",
               "sweep.grids=[{method: [stablerep], data: [w2, c]}]", "sweep.seeds=[0]")
    captions.run(cfg)
    captions.run(cfg, source="c")
    params = {spec.data: sweep_run.run_params(cfg, spec) for spec in expand(cfg)}
    assert params["c"]["captions"] == "concepts"
    assert params["c"]["captions_count"] == pl.read_parquet(
        tmp_path / "results" / "toy" / "source_captions" / "c" / "captions.parquet").height == 7
    assert "captions" not in params["w2"] and "captions_count" not in params["w2"]


def test_summary_script_table_and_plot(tmp_path):
    """scripts/concept_captions_summary.py: each cell the mean and Student-t half-width of its runs,
    a budget run counted on the captions it trained on, and the plot written."""
    import importlib.util

    import numpy as np
    from scipy import stats as sps

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("summary", REPO / "scripts" / "concept_captions_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    run = tmp_path / "run"
    (run / "captions").mkdir(parents=True)
    (run / "captions" / "stats.json").write_text(json.dumps({"rows_out": 8}))
    (run / "source_captions" / "c").mkdir(parents=True)
    (run / "source_captions" / "c" / "stats.json").write_text(json.dumps({"format": "concepts", "rows_out": 32}))
    values = {("w2", None): [0.4, 0.5, 0.45], ("c", None): [0.6, 0.62, 0.7], ("c", 32): [0.5, 0.55, 0.52]}
    for (source, budget), accs in values.items():
        for seed, acc in enumerate(accs):
            folder = run / "runs" / f"{source}-{budget}-s{seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"source": source, "seed": seed, "budget": budget, "l": 4,
                                                             "steps": 40, "probe_shape": acc}))
    df = summary.runs(run)
    table = summary.table(df, run)
    for (source, budget), accs in values.items():
        row = table.filter((pl.col("source") == source) & (pl.col("budget").eq_missing(budget))).row(0, named=True)
        half = sps.t.ppf(0.975, 2) * np.std(accs, ddof=1) / np.sqrt(3)
        assert row["probe shape"] == f"{np.mean(accs):.3f} ± {half:.3f}"
        assert row["count"] == {"w2": 8, "c": 32 if budget is None else 8}[source]
        assert row["captions"] == ("real" if source == "w2" else "concepts") and row["seeds"] == 3
    summary.plot(df, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
