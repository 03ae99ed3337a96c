"""Sweep expansion (shared by Snakemake and submitit) and the ablation report."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from PIL import Image

from synrep.config import ConfigError, load_config
from synrep.experiments import ablation_tables, report, report_plots, sweep, sweep_run
from synrep.fileio import write_json
from tests.conftest import REPO

GRIDS = [
    "sweep.grids=[{method:[stablerep],data:[w2],l:[1,2,4],m:[2,4]},"
    "{method:[stablerep,simclr],data:[w2,w4,mix]},{method:[simclr,clip],data:[real]}]",
    "sources.w4.guidance.w=4",
    "sources.mix.guidance.w=[2,4]",
    "sweep.seeds=[0,1,2]",
]


def test_expand_normalises_and_deduplicates(make_cfg):
    cfg = make_cfg(*GRIDS)
    runs = sweep.expand(cfg)
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids))
    # 6 (l x m) + stablerep w4, mix + simclr w2, w4, mix + simclr real + clip real = 13 groups, 3 seeds
    assert len(runs) == 13 * 3
    assert "stablerep-w2-l4-m4-s0" in ids and "simclr-real-l1-s2" in ids and "clip-real-l1-s1" in ids
    assert all(r.l == 1 for r in runs if r.data == "real")
    assert all(r.m == 1 for r in runs if r.method in ("simclr", "clip"))
    cfg_one = sweep.run_config(cfg, sweep.find(cfg, "stablerep-w2-l2-m4-s1"))
    assert (cfg_one.train.method, cfg_one.train.data, cfg_one.train.l, cfg_one.train.m, cfg_one.train.seed) == (
        "stablerep", "w2", 2, 4, 1)
    assert cfg_one.train.output_dir.endswith("runs/stablerep-w2-l2-m4-s1")


def test_run_identities_from_one_copy_equal_each_runs_own_config():
    """The Snakefile's hashes (one config copy, its train section reset per run) against each run's
    own config, on a recipe whose methods set train keys of their own (train.by_method)."""
    cfg = load_config(["experiment=paper_cc3m_ablations"])
    specs = sweep.expand(cfg)
    identities = sweep.run_identities(cfg, specs)
    assert list(identities) == [spec.run_id for spec in specs]
    for spec in specs:
        assert identities[spec.run_id] == sweep.run_identity(sweep.run_config(cfg, spec)), spec.run_id
    # the method's own settings reach its runs only (CLIP counts passes, the others SimCLR's epochs)
    units = {spec.method: identities[spec.run_id]["train"]["epoch_unit"] for spec in specs}
    assert units == {"stablerep": "simclr", "simclr": "simclr", "clip": "pass"}


def test_sweep_errors_name_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"sweep.grids\[0\].data\[0\]': 'w3' is not a data source"):
        make_cfg("sweep.grids=[{data:[w3]}]")
    with pytest.raises(ConfigError, match=r"sweep.grids\[0\].method\[1\]"):
        make_cfg("sweep.grids=[{method:[simclr,moco]}]")
    with pytest.raises(ValueError, match="sources.w2.l"):
        sweep.expand(make_cfg("sweep.grids=[{l:[8]}]", "sources.w2.l=4"))
    with pytest.raises(ValueError, match="generation.images_per_caption"):
        sweep.expand(make_cfg("sweep.grids=[{l:[8]}]", "generation.images_per_caption=4"))
    with pytest.raises(ValueError, match="not in the sweep"):
        sweep.find(make_cfg(), "stablerep-w9-l4-m4-s0")


def test_snakemake_targets_are_the_sweep_runs(tmp_path):
    """The Snakefile builds its targets with the same function (dry run, no jobs executed)."""
    cfg = load_config([f"paths.results_dir={tmp_path}/results", *GRIDS])
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--quiet", "rules", "--config",
         f"paths={{results_dir: {tmp_path}/results}}", "sweep={seeds: [0, 1, 2], grids: "
         "[{method: [stablerep], data: [w2], l: [1, 2, 4], m: [2, 4]}, {method: [stablerep, simclr], data: [w2, w4, mix]},"
         " {method: [simclr, clip], data: [real]}]}", "sources={w4: {guidance: {w: 4}}, mix: {guidance: {w: [2, 4]}}}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    counts = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    # one job per batch of sweep.runs_per_job runs of a seed, together every run once
    batches = sweep.job_batches(cfg)
    assert sorted(k for k in counts if k.startswith("sweep_run_")) == sorted(f"sweep_run_{b}" for b in batches)
    runs = [spec.run_id for specs in batches.values() for spec in specs]
    assert sorted(runs) == sorted(spec.run_id for spec in sweep.expand(cfg))
    assert max(len(specs) for specs in batches.values()) == cfg.sweep.runs_per_job > 1
    assert all(len({spec.seed for spec in specs}) == 1 for specs in batches.values())


def fabricate(cfg, tmp_path):
    """Metrics files for every run: accuracy = a known function of the run + seed noise."""
    rng = np.random.default_rng(0)
    truth = {}
    paths = []
    for spec in sweep.expand(cfg):
        base = {"stablerep": 0.6, "simclr": 0.5, "clip": 0.4}[spec.method] + 0.02 * spec.l + 0.01 * spec.m
        value = base + rng.normal(0, 0.01)
        truth.setdefault(spec.group, []).append(value)
        record = {"run": spec.run_id, "group": spec.group, "method": spec.method, "data": spec.data,
                  **sweep_run.run_params(cfg, spec), "probe_shape": value,
                  "fewshot_shape": value / 2, "train_seconds": 1.0, "details": {}}
        path = tmp_path / "runs" / spec.run_id / "metrics.json"
        write_json(path, record)
        paths.append(path)
    baselines = [{"baseline": b, "seed": s, "probe_shape": v + 0.01 * s, "fewshot_shape": v}
                 for b, v in (("random_init", 0.3), ("raw_pixels", 0.2)) for s in cfg.sweep.seeds]
    write_json(tmp_path / "baselines.json", {"baselines": baselines})
    return paths, truth


def test_report_tables_plots_and_metrics(make_cfg, tmp_path):
    from scipy import stats

    cfg = make_cfg(*GRIDS)
    paths, truth = fabricate(cfg, tmp_path)
    out = report.build(cfg, paths, [tmp_path / "baselines.json"], tmp_path / "ablations")

    def cell(values):
        mean = np.mean(values)
        half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
        return f"{mean:.3f} ± {half:.3f}"

    lm = pl.read_csv(tmp_path / "ablations" / "probe_shape__stablerep_l_x_m.csv")
    assert lm.columns == ["l", "m=2", "m=4"] and lm["l"].to_list() == [1, 2, 4]
    assert lm.filter(pl.col("l") == 2)["m=4"][0] == cell(truth["stablerep-w2-l2-m4"])
    w = pl.read_csv(tmp_path / "ablations" / "probe_shape__guidance_scale_w_per_method.csv")
    assert w["method"].to_list() == ["StableRep", "SimCLR"]
    assert w.columns == ["method", "w=2.0", "w={2,4}", "w=4.0"]  # by w, a set at its mean
    assert w.filter(pl.col("method") == "SimCLR")["w=4.0"][0] == cell(truth["simclr-w4-l4"])
    assert w.filter(pl.col("method") == "SimCLR")["w={2,4}"][0] == cell(truth["simclr-mix-l4"])
    # SimCLR ran on several synthetic sources: the method x data table has the paper's (method, data)
    # rows; these records have no selection accuracy, so every source is shown and none chosen
    md = pl.read_csv(tmp_path / "ablations" / "probe_shape__method_x_data.csv")
    simclr = dict(md.filter(pl.col("method") == "SimCLR").select("data", "probe_shape").iter_rows())
    assert simclr["real"] == cell(truth["simclr-real-l1"])
    assert simclr["synthetic (w=4.0)"] == cell(truth["simclr-w4-l4"]) and "synthetic (w={2,4})" in simclr
    assert md.filter(pl.col("method") == "raw pixels").select("data", "probe_shape").row(0) == (
        "no training", cell([0.2, 0.21, 0.22]))

    text = out["tables"].read_text()
    assert "## probe_shape: StableRep, l x m (w2)" in text and "## fewshot_shape: method x data" in text
    for name in ("accuracy_vs_w", "lm_heatmap"):
        with Image.open(out[name]) as image:
            assert image.format == "PNG" and image.size[0] > 300
    metrics = json.loads(out["metrics"].read_text())
    assert metrics["stablerep-w2-l4-m4"]["probe_shape"] == pytest.approx(np.mean(truth["stablerep-w2-l4-m4"]), abs=1e-4)
    assert metrics["baseline-raw_pixels"]["probe_shape"] == pytest.approx(0.21, abs=1e-4)
    runs = pl.read_csv(out["runs"])
    assert len(runs) == len(paths)


def test_one_seed_says_n_1_not_plus_minus_zero():
    from synrep.tables import mean_ci

    df = pl.DataFrame({"group": ["a", "b", "b"], "acc": [0.5, 0.4, 0.6]})
    cells = dict(mean_ci(df, ["group"], "acc").select("group", "cell").iter_rows())
    half = 12.706204736174705 * np.std([0.4, 0.6], ddof=1) / math.sqrt(2)  # t(0.975, df=1)
    assert cells == {"a": "0.500 (n = 1)", "b": f"0.500 ± {half:.3f}"}


def test_report_of_a_single_seed_builds_its_tables_and_plots(make_cfg, tmp_path):
    cfg = make_cfg(*GRIDS[:-1], "sweep.seeds=[0]")
    paths, truth = fabricate(cfg, tmp_path)
    out = report.build(cfg, paths, [tmp_path / "baselines.json"], tmp_path / "ablations")
    text = out["tables"].read_text()
    assert f"{truth['simclr-real-l1'][0]:.3f} (n = 1)" in text and "± 0.000 " not in text
    with Image.open(out["accuracy_vs_w"]) as image:
        assert image.format == "PNG"


PAPER_DESIGN = [
    "sweep.grids=[{method:[stablerep],data:[w2],l:[4],m:[4]},"
    "{method:[simclr],data:[w2,w4,mix],l:[1]},"
    "{method:[stablerep],data:[w2],l:[1],m:[1],budget:[64]},{method:[stablerep],data:[w2],l:[4],m:[4],budget:[64]},"
    "{method:[stablerep],data:[w2],l:[4],m:[1,2,3,4]},"
    "{method:[clip],data:[w2,w4],l:[1]},{method:[clip],data:[real]}]",
    "sources.w4.guidance.w=4",
    "sources.mix.guidance.w=[2,4]",
    "sweep.seeds=[0,1]",
]


def paper_records(cfg, tmp_path, drop_null_budget=False):
    """Metrics files for the paper-design sweep. probe = 0.5 + 0.01 m (+ 0.1 for a budget run, so a
    budget run leaking into another table shows); SimCLR's reported metric prefers w2 while its
    selection accuracy prefers w4; CLIP's zero-shot accuracy falls with w, real above both."""
    paths = []
    for spec in sweep.expand(cfg):
        value = 0.5 + 0.01 * spec.m + 0.001 * spec.seed + (0.1 if spec.budget else 0.0)
        selection = value
        if spec.method == "simclr":  # reported: w2 best; selection: w4 best
            value = {"w2": 0.7, "w4": 0.6, "mix": 0.5}[spec.data] + 0.001 * spec.seed
            selection = {"w2": 0.6, "w4": 0.7, "mix": 0.5}[spec.data]
        record = {"run": spec.run_id, "group": spec.group, "method": spec.method, "data": spec.data,
                  "budget": spec.budget, **sweep_run.run_params(cfg, spec), "probe_shape": value,
                  "probe_shape_val": selection, "fewshot_shape": value / 2, "details": {}}
        if drop_null_budget and record["budget"] is None:
            del record["budget"]  # a record from before the budget axis
        if spec.method == "clip":
            record["zeroshot_shape"] = {"w2": 0.3, "w4": 0.25, "real": 0.4}[spec.data] + 0.001 * spec.seed
        path = tmp_path / "runs" / spec.run_id / "metrics.json"
        write_json(path, record)
        paths.append(path)
    return paths


def test_report_follows_the_papers_ablation_designs(make_cfg, tmp_path):
    """l at a fixed budget and m at a fixed batch get their own tables (budget runs stay out of the
    others); SimCLR's synthetic row is its best source chosen on the selection split, even where the
    reported metric prefers another; CLIP's zero-shot accuracy against w has a table and a figure."""
    cfg = make_cfg(*PAPER_DESIGN)
    out = report.build(cfg, paper_records(cfg, tmp_path), None, tmp_path / "ablations")
    folder = tmp_path / "ablations"
    budget = pl.read_csv(folder / "probe_shape__stablerep_l_at_a_fixed_generation_budget_t.csv")
    assert budget.columns == ["l", "m", "captions", "T=64"]
    assert budget["l"].to_list() == [1, 4] and budget["m"].to_list() == [1, 4] and budget["captions"].to_list() == [64, 16]
    assert budget["T=64"][0].startswith("0.61")  # 0.5 + 0.01 (m = 1) + 0.1 (budget run)
    m = pl.read_csv(folder / "probe_shape__stablerep_m_at_a_fixed_batch.csv")
    assert m["m"].to_list() == [1, 2, 3, 4] and m["probe_shape"][0].startswith("0.51")  # not the budget run's 0.61
    md = pl.read_csv(folder / "probe_shape__method_x_data.csv")
    simclr = md.filter(pl.col("method") == "SimCLR")
    assert simclr["data"].to_list() == ["synthetic (best: w=4.0, chosen on the held-out split)"]
    assert simclr["probe_shape"][0].startswith("0.6")  # chosen on the selection split, not the reported (0.7)
    assert md.filter(pl.col("method") == "StableRep")["data"].to_list() == ["synthetic (w=2.0)"]  # one source
    text = (folder / "tables.md").read_text()
    assert "best source: the highest mean over seeds of probe_shape_val" in text  # the rule, under the table
    zeroshot = pl.read_csv(folder / "zeroshot_shape__zero-shot_accuracy_against_w.csv")
    assert zeroshot.columns == ["data", "CLIP"]
    assert zeroshot["data"].to_list() == ["w=2.0", "w=4.0", "real images (reference)"]
    assert [float(c.split()[0]) for c in zeroshot["CLIP"]] == pytest.approx([0.3005, 0.2505, 0.4005], abs=1e-3)
    assert (folder / "zeroshot_vs_w.png").exists() and out["zeroshot_vs_w"] == folder / "zeroshot_vs_w.png"
    with Image.open(out["zeroshot_vs_w"]) as image:
        assert image.format == "PNG"
    assert "(n = 1)" not in text and "nan" not in text


def test_budget_runs_stay_out_of_the_other_tables(make_cfg, tmp_path):
    """A budget run (here 0.1 above its twin on all captions, and the only l = 1 StableRep run)
    appears in the budget table only: not in l x m, m, w, method x data, nor the heatmap's data."""
    cfg = make_cfg(*PAPER_DESIGN)
    paths = paper_records(cfg, tmp_path, drop_null_budget=True)  # older records lack the key
    report.build(cfg, paths, None, tmp_path / "ablations")
    folder = tmp_path / "ablations"
    lm = pl.read_csv(folder / "probe_shape__stablerep_l_x_m.csv")
    assert lm["l"].to_list() == [4]  # no l = 1 row: that run has a budget
    assert lm["m=4"][0].startswith("0.54") and lm["m=1"][0].startswith("0.51")
    w = pl.read_csv(folder / "probe_shape__guidance_scale_w_per_method.csv")
    assert w.filter(pl.col("method") == "StableRep")["w=2.0"][0].startswith("0.54")
    md = pl.read_csv(folder / "probe_shape__method_x_data.csv")
    assert md.filter(pl.col("method") == "StableRep")["probe_shape"].to_list()[0].startswith("0.54")
    runs = pl.read_csv(folder / "runs.csv")
    assert runs.filter(pl.col("budget").is_not_null())["run"].str.contains("-T64-").all()
    df = ablation_tables.load_runs(paths)
    assert ablation_tables.without_budget(df).filter(pl.col("budget").is_not_null()).is_empty()
    assert ablation_tables.default_runs(df, cfg).filter(pl.col("run").str.contains("-T")).is_empty()


def test_budget_table_has_a_column_per_budget_and_its_captions(make_cfg, tmp_path):
    cfg = make_cfg("sweep.grids=[{method:[stablerep],data:[w2],l:[1,2,4],m:[1],budget:[64,128]}]", "sweep.seeds=[0,1]")
    paths = paper_records(cfg, tmp_path)
    report.build(cfg, paths, None, tmp_path / "ablations")
    budget = pl.read_csv(tmp_path / "ablations" / "probe_shape__stablerep_l_at_a_fixed_generation_budget_t.csv")
    assert budget.columns == ["l", "m", "captions at T=64", "captions at T=128", "T=64", "T=128"]
    assert budget["l"].to_list() == [1, 2, 4]
    assert budget["captions at T=64"].to_list() == [64, 32, 16] and budget["captions at T=128"].to_list() == [128, 64, 32]
    assert budget["T=128"].str.starts_with("0.61").all()
    # only budget runs: no l x m, m or w table
    assert not list((tmp_path / "ablations").glob("probe_shape__stablerep_l_x_m.csv"))


def test_best_source_follows_the_selection_metric_not_the_reported_one():
    cfg_train = {"l": 4, "m": 4}
    rows = []
    for data, w, reported, selection in (("w2", 2.0, 0.9, 0.1), ("w8", 8.0, 0.2, 0.8), ("w4", 4.0, 0.5, 0.5)):
        for seed in (0, 1, 2):
            rows.append({"run": f"simclr-{data}-l1-s{seed}", "group": f"simclr-{data}-l1", "method": "simclr",
                         "data": data, "l": 1, "m": 1, "seed": seed, "w": w, "probe_c": reported + 0.01 * seed,
                         "probe_c_val": selection + (0.5 if (data, seed) == ("w4", 0) else 0.0)})
    df = ablation_tables.with_w_labels(pl.DataFrame(rows))
    best = ablation_tables.best_sources(df, "probe_c_val")
    # means of the selection accuracy: w2 0.1, w8 0.8, w4 (1.0 + 0.5 + 0.5) / 3 = 0.667
    assert best["simclr"]["data"] == "w8" and best["simclr"]["w_label"] == "w=8.0"
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"train": cfg_train, "eval": {"targets": ["c"]}})
    title, table, note = ablation_tables.table_method_data(df, "probe_c", cfg, None, "c", with_note=True)
    assert ablation_tables.table_method_data(df, "probe_c", cfg, None, "c")[1].equals(table)  # (title, table) as before
    assert table.rows() == [("SimCLR", "synthetic (best: w=8.0, chosen on the held-out split)", "0.210 ± 0.025")]
    assert "probe_c_val" in note and "never the reported probe_c" in note


def test_single_seed_paper_design_cells_say_n_1(make_cfg, tmp_path):
    cfg = make_cfg(*PAPER_DESIGN[:-1], "sweep.seeds=[0]")
    out = report.build(cfg, paper_records(cfg, tmp_path), None, tmp_path / "ablations")
    folder = tmp_path / "ablations"
    budget = pl.read_csv(folder / "probe_shape__stablerep_l_at_a_fixed_generation_budget_t.csv")
    assert budget["T=64"].to_list() == ["0.610 (n = 1)", "0.640 (n = 1)"]
    m = pl.read_csv(folder / "probe_shape__stablerep_m_at_a_fixed_batch.csv")
    assert m["probe_shape"].to_list() == ["0.510 (n = 1)", "0.520 (n = 1)", "0.530 (n = 1)", "0.540 (n = 1)"]
    zeroshot = pl.read_csv(folder / "zeroshot_shape__zero-shot_accuracy_against_w.csv")
    assert zeroshot["CLIP"].to_list() == ["0.300 (n = 1)", "0.250 (n = 1)", "0.400 (n = 1)"]
    md = pl.read_csv(folder / "probe_shape__method_x_data.csv")
    assert md.filter(pl.col("method") == "SimCLR")["probe_shape"].to_list() == ["0.600 (n = 1)"]
    text = out["tables"].read_text()
    assert not [line for line in text.splitlines() if line.startswith("|") and "±" in line] and "nan" not in text


def test_a_clip_guided_source_keeps_its_own_column_beside_cfg_at_the_same_w(make_cfg, tmp_path):
    cfg = make_cfg("sweep.grids=[{method:[stablerep],data:[w1,clip30]}]", "sweep.seeds=[0,1]",
                   "sources.w1.guidance.w=1", "sources.clip30.guidance.kind=clip", "sources.clip30.guidance.w=1",
                   "sources.clip30.guidance.clip_scale=30", f"generation.clip_model={REPO}/models/toy_clip")
    paths, truth = fabricate(cfg, tmp_path)
    report.build(cfg, paths, None, tmp_path / "ablations")
    w = pl.read_csv(tmp_path / "ablations" / "probe_shape__guidance_scale_w_per_method.csv")
    assert sorted(w.columns) == ["method", "w=1+CLIP s=30", "w=1.0"]  # two columns at w = 1


def test_sources_at_the_same_w_get_a_column_each(make_cfg, tmp_path):
    """Two sources at w = 2 (e.g. a generator and its NADA-adapted copy): a w table would pool them and
    method x data shows the best, so a table per source (and no w table); each cell is the
    t-interval of its runs; the plot against w draws the second source as a named point of its own."""
    from scipy import stats

    cfg = make_cfg("sweep.grids=[{method:[stablerep],data:[w2,alt]}]", "sweep.seeds=[0,1,2]",
                   "sources.alt.guidance.w=2", "sources.alt.seed=7")
    paths, truth = fabricate(cfg, tmp_path)
    report.build(cfg, paths, None, tmp_path / "ablations")
    table = pl.read_csv(tmp_path / "ablations" / "probe_shape__synthetic_source_per_method.csv")
    assert table.columns == ["method", "w2", "alt"]
    for spec in sweep.expand(cfg):
        values = np.array(truth[spec.group])
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        assert table[spec.data][0] == f"{values.mean():.3f} ± {half:.3f}"
    assert not (tmp_path / "ablations" / "probe_shape__guidance_scale_w_per_method.csv").exists()
    fig = report_plots.figure_accuracy_vs_w(ablation_tables.load_runs(paths), "probe_shape", cfg)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [2.0] and line.get_ydata()[0] == pytest.approx(np.mean(truth["stablerep-w2-l4-m4"]))
    assert [t.get_text() for t in fig.axes[0].texts] == ["alt"]
    assert fig.axes[0].texts[0].xy[1] == pytest.approx(np.mean(truth["stablerep-alt-l4-m4"]))
    # sources with a w each keep to the w table
    other = make_cfg("sweep.grids=[{method:[stablerep],data:[w2,w8]}]", "sweep.seeds=[0,1]",
                     "sources.w8.guidance.w=8", base=tmp_path / "b")
    paths, _ = fabricate(other, tmp_path / "b")
    report.build(other, paths, None, tmp_path / "b" / "ablations")
    assert not (tmp_path / "b" / "ablations" / "probe_shape__synthetic_source_per_method.csv").exists()
