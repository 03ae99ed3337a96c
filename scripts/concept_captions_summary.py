"""Real captions against captions from a concept list (experiment toy_concept_captions): per source,
its captions (format, count), the judge's caption match and diversity on its images, and the sweep's
probe accuracies, mean ± 95 % t-interval over seeds; and a plot of probe accuracy against the number
of captions, concept captions as a line, the real captions as a point of their own.

    python scripts/concept_captions_summary.py RUN_DIR [--plot PNG]

RUN_DIR is ``<results_dir>/<name>`` (e.g. /tmp/h7/results/toy_concept_captions). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from synrep.fileio import write_figure  # noqa: E402
from synrep.tables import markdown_table, mean_ci, mean_ci_cell  # noqa: E402

PROBES = ("probe_shape", "probe_colour", "probe_size", "probe_background")


def _captions(run_dir: Path, source: str) -> tuple[str, int]:
    """A source's captions: its own caption set (format, count), or the run's (real)."""
    own = run_dir / "source_captions" / source / "stats.json"
    if own.exists():
        stats = json.loads(own.read_text())
        return stats["format"], stats["rows_out"]
    return "real", json.loads((run_dir / "captions" / "stats.json").read_text())["rows_out"]


def runs(run_dir: Path) -> pl.DataFrame:
    rows = []
    for path in sorted((run_dir / "runs").glob("*/metrics.json")):
        record = json.loads(path.read_text())
        captions, count = _captions(run_dir, record["source"])
        if record.get("budget"):  # a generation budget: the first T // l captions, trained as long as all
            count = min(count, record["budget"] // record["l"])
        rows.append({"source": record["source"], "captions": captions, "count": count, "seed": record["seed"],
                     "budget": record.get("budget"), "steps": record["steps"], **{p: record.get(p) for p in PROBES}})
    if not rows:
        raise SystemExit(f"{run_dir}: no runs/*/metrics.json")
    return pl.DataFrame(rows)


def judged(run_dir: Path, source: str) -> dict:
    """The judge's caption match (shape, colour) and diversity on the source's images, where measured."""
    path = run_dir / "source_quality" / f"{source}.json"
    if not path.exists():
        return {}
    row = json.loads(path.read_text())
    row = row.get("row", row)

    def cell(value) -> str | None:
        if isinstance(value, dict):
            if value.get("mean") is None:
                return None
            return mean_ci_cell(value["mean"], value.get("ci95"))
        return None if value is None else f"{value:.3f}"

    return {"match shape": cell(row.get("match_shape")), "match colour": cell(row.get("match_colour")),
            "diversity": cell(row.get("diversity"))}


def table(df: pl.DataFrame, run_dir: Path) -> pl.DataFrame:
    keys = ["source", "captions", "count", "steps", "budget"]
    out = df.select(keys).unique(maintain_order=True)
    for probe in [p for p in PROBES if df[p].is_not_null().any()]:
        cells = mean_ci(df, keys, probe).select(*keys, pl.col("cell").alias(probe.replace("probe_", "probe ")))
        out = out.join(cells, on=keys, how="left", maintain_order="left", nulls_equal=True)
    extra = pl.DataFrame([{"source": s, **judged(run_dir, s)} for s in out["source"].unique(maintain_order=True)])
    if extra.width > 1:
        out = out.join(extra, on="source", how="left", maintain_order="left")
    seeds = df.group_by(keys).agg(pl.col("seed").n_unique().alias("seeds"))
    return out.join(seeds, on=keys, how="left", maintain_order="left", nulls_equal=True)


def plot(df: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = [p for p in PROBES if df[p].is_not_null().any()]
    fig, axes = plt.subplots(1, len(probes), figsize=(3.2 * len(probes), 3.2), squeeze=False)
    for ax, probe in zip(axes[0], probes):
        stats = mean_ci(df, ["captions", "count", "steps", "budget"], probe).sort("count")
        # a budget run trains on part of its source's captions as long as on all of them: its line
        # joins the source's own run, at the same steps
        budgeted = stats.filter(pl.col("budget").is_not_null())
        same_steps = stats.filter(pl.col("steps").is_in(budgeted["steps"].implode()))
        steps = f"{budgeted['steps'][0]} steps" if budgeted.height else ""
        for part, style in (
                (stats.filter((pl.col("captions") == "concepts") & pl.col("budget").is_null()),
                 dict(fmt="o-", color="C1", label="concept captions, steps as the data")),
                (same_steps, dict(fmt="^--", color="C2", label=f"concept captions, all at {steps}")),
                (stats.filter(pl.col("captions") == "real"),
                 dict(fmt="s", color="C0", label="real captions", markersize=8))):
            if part.height:
                ax.errorbar(part["count"].to_list(), part["mean"].to_list(),
                            yerr=[0 if v != v else v for v in part["ci95"].to_list()], capsize=3, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("captions (images: 4 each)")
        ax.set_title(f"{probe.replace('probe_', '')} probe: do concept captions\nmatch real ones, and does more help?",
                     fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("linear-probe accuracy (test, mean ± 95% CI)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    write_figure(path, fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--plot", type=Path, help="write the plot here (PNG)")
    args = parser.parse_args()
    df = runs(args.run_dir)
    print(markdown_table(table(df, args.run_dir)), end="")
    if args.plot:
        plot(df, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
