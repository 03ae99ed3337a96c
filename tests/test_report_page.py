"""The report a user opens: no plot of a single point (a plot waits for its axis, and says so), each
plot captioned with its question, and ``results/<name>/report.html`` showing every table and plot."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import polars as pl
import pytest

from synrep.experiments import ablation_tables, page, report, report_plots, sweep, sweep_run
from synrep.fileio import write_json
from tests.test_sweep_report import GRIDS, fabricate

# the default run's design: one w (2), one (l, m) for StableRep, one-image methods at l = 1, real images
DEFAULT_LIKE = ["sweep.grids=[{method:[stablerep],data:[w2]},{method:[simclr,clip],data:[w2],l:[1]},"
                "{method:[simclr,clip],data:[real]}]", "sweep.seeds=[0,1]"]


def axes_of_the_sweep(cfg) -> tuple[set, set]:
    """From the sweep's expansion (not the report's code): the guidance scales of its synthetic
    runs on all captions, and StableRep's (l, m) pairs."""
    ws, lm = set(), set()
    for spec in sweep.expand(cfg):
        params = sweep_run.run_params(cfg, spec)
        if spec.data != "real" and not spec.budget:
            ws.add(params["w"])
        if spec.method == "stablerep" and not spec.budget:
            lm.add((spec.l, spec.m))
    return ws, lm


def plot_points(fig) -> int:
    """Distinct x positions a figure draws data at (lines' points, or a heatmap's cells)."""
    xs = set()
    for ax in fig.axes:
        for line in ax.lines:
            xdata = list(line.get_xdata())
            if len(xdata) == 2 and len(set(line.get_ydata())) == 1 and xdata in ([0, 1], [0.0, 1.0]):
                continue  # a horizontal reference line (axhline), not data
            xs |= {float(x) for x in xdata}
        for image in ax.images:
            xs |= set(range(image.get_array().size))
    return len(xs)


def test_the_default_design_draws_no_plot_of_one_point(make_cfg, tmp_path):
    cfg = make_cfg(*DEFAULT_LIKE)
    ws, lm = axes_of_the_sweep(cfg)
    assert len(ws) == 1 and len(lm) == 1  # the premise: every axis has one value
    paths, _ = fabricate(cfg, tmp_path)
    quality = [write_json(tmp_path / "q" / "w2.json", {
        "source": "w2", "mode": "text2img", "guidance": "w=2", "captions": 8,
        "match_shape": {"mean": 0.8, "ci95": 0.1, "n": 8}, "diversity": {"mean": 0.3, "ci95": 0.01, "n": 8}})]
    out = tmp_path / "ablations"
    stale = out / "lm_heatmap.png"  # from an earlier run with the l x m axes: it must not survive
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    report.build(cfg, paths, [tmp_path / "baselines.json"], out, quality)
    assert sorted(p.name for p in out.glob("*.png")) == []
    plots = {p["name"]: p for p in json.loads((out / "plots.json").read_text())["plots"]}
    assert set(plots) == {"accuracy_vs_w", "lm_heatmap", "generator_family_plot"}
    assert all(p["file"] is None and p["waits"] for p in plots.values())
    assert f"w = {next(iter(ws)):g}" in plots["accuracy_vs_w"]["waits"]
    assert "(l, m) = ({}, {})".format(*next(iter(lm))) in plots["lm_heatmap"]["waits"]
    # the tables still hold those numbers
    assert (out / "probe_shape__method_x_data.csv").exists() and (out / "generator_family.csv").exists()


def test_plots_with_two_values_on_their_axis_are_drawn_and_ask_their_question(make_cfg, tmp_path):
    cfg = make_cfg(*GRIDS)
    ws, lm = axes_of_the_sweep(cfg)
    paths, _ = fabricate(cfg, tmp_path)
    out = report.build(cfg, paths, [tmp_path / "baselines.json"], tmp_path / "ablations")
    plots = {p["name"]: p for p in json.loads(out["plots"].read_text())["plots"]}
    assert {n for n, p in plots.items() if p["file"]} == {"accuracy_vs_w", "lm_heatmap"}
    df = ablation_tables.load_runs(paths)
    fig = report_plots.figure_accuracy_vs_w(df, "probe_shape", cfg)
    assert plot_points(fig) == len(ws) > 1
    assert "?" in fig.axes[0].get_title()
    heat = report_plots.figure_lm_heatmap(df, "probe_shape")
    assert plot_points(heat) == len(lm) > 1 and "?" in heat.axes[0].get_title()


def _fake_step_output(root: Path) -> None:
    """A step's table and plot beside the ablations, as sample_quality writes them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = root / "sample_quality"
    folder.mkdir(parents=True)
    (folder / "caption_match.md").write_text("# caption match\n\n| w | match |\n|---|---|\n| 1.0 | 0.512 ± 0.01 |\n| 2.0 | 0.733 |\n")
    fig, ax = plt.subplots()
    ax.plot([1, 2], [0.5, 0.7])
    fig.savefig(folder / "caption_match.png")
    plt.close(fig)
    (root / "shards" / "w2").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "shards" / "w2" / "grid.png")


def escaped(text: str) -> str:
    """As markdown-it writes text into HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def check_page(root: Path, text: str) -> None:
    """Every table file and plot under ``root`` appears in the page ``text``: each Markdown table's
    cells, each CSV's cells and link, each PNG's bytes; and a plot that waits says why."""
    embedded = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]
    skipped = set(page.SKIPPED)
    files = [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skipped]
    for path in [p for p in files if p.suffix == ".png"]:
        assert path.read_bytes() in embedded, path
    cells_in_page = set(re.findall(r"<t[dh]>(.*?)</t[dh]>", text))
    for path in [p for p in files if p.suffix == ".md"]:
        rows = [line for line in path.read_text().splitlines() if line.startswith("|") and not line.startswith("|---")]
        for line in rows:
            for cell in (c.strip() for c in line.strip("|").split("|")):
                assert escaped(cell) in cells_in_page, (path, cell)
    for path in [p for p in files if p.suffix == ".csv"]:
        assert f'href="{path.relative_to(root).as_posix()}"' in text
        if "__" not in path.name:  # other CSVs hold the raw numbers their Markdown table rounds
            continue
        table = pl.read_csv(path, infer_schema_length=0)  # an ablation table: the cells as tables.md has them
        for value in (v for col in table.columns for v in table[col].to_list() if v):
            assert escaped(value) in cells_in_page, (path, value)
    for plan in root.glob("*/plots.json"):
        for plot in json.loads(plan.read_text())["plots"]:
            assert html.escape(plot["waits"] or plot["question"]) in text


def test_the_page_shows_every_table_and_plot(make_cfg, tmp_path):
    cfg = make_cfg(*DEFAULT_LIKE)
    root = tmp_path / "results" / cfg.name
    paths, _ = fabricate(cfg, tmp_path)
    report.build(cfg, paths, [tmp_path / "baselines.json"], root / "ablations")
    other = make_cfg(*GRIDS, base=tmp_path / "b")  # a sweep with plots, in a folder of its own
    paths, _ = fabricate(other, tmp_path / "b")
    report.build(other, paths, [tmp_path / "b" / "baselines.json"], root / "ablations_full")
    _fake_step_output(root)
    text = page.build(cfg, root).read_text()
    check_page(root, text)
    assert text.index("ablations/tables.md") < text.index("sample_quality/caption_match.md") < text.index("shards/w2/grid.png")
    assert page.grid_caption("shards/w2/grid.png") in text  # a sample grid says what to read from it
    assert "<pre>" in text and f"name: {cfg.name}" in text  # the resolved config


def test_page_without_results_is_one_clear_error(make_cfg, tmp_path):
    cfg = make_cfg()
    with pytest.raises(FileNotFoundError, match="no results at"):
        page.run(cfg)


@pytest.mark.slow
def test_the_reduced_run_writes_one_page_with_every_table_and_plot(reduced_run):
    root = reduced_run / "results" / "toytest"
    check_page(root, (root / "report.html").read_text())
    # no plot of one point: the reduced sweep has one (l, m) and three scales (2, 4, {2, 4} at 3)
    runs = pl.read_csv(root / "ablations" / "runs.csv")
    stablerep = runs.filter(pl.col("method") == "stablerep")
    assert (root / "ablations" / "lm_heatmap.png").exists() == (stablerep.select(pl.struct("l", "m").n_unique()).item() > 1)
    synthetic_w = runs.filter(pl.col("data") != "real")["w"].unique().to_list()
    assert (root / "ablations" / "accuracy_vs_w.png").exists() == (len(synthetic_w) > 1)
