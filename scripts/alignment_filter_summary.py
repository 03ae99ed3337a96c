"""The alignment filter (experiment toy_alignment_filter): per source, the fraction of each caption's
images it keeps, the judge's caption match, CLIP score and diversity on the kept images, and the
sweep's probe accuracies, mean ± 95 % t-interval over seeds; and a plot of each against the kept
fraction.

    python scripts/alignment_filter_summary.py RUN_DIR [--plot PNG]

RUN_DIR is ``<results_dir>/<name>`` (e.g. results/toy_alignment_filter). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from synrep.fileio import write_figure  # noqa: E402
from synrep.tables import markdown_table, mean_ci, mean_ci_cell  # noqa: E402

PROBES = ("probe_shape", "probe_colour", "probe_size", "probe_background")
# the judge's measures on a source's kept images (source_quality/<source>.json)
JUDGED = {"match_shape": "match shape", "match_colour": "match colour", "clip_guiding": "CLIP cos(image, caption)",
          "diversity": "diversity"}


def kept_fraction(cfg, source: str) -> float | None:
    """The source's ``filter.keep_fraction`` (1.0 without a filter; None for a min_score filter)."""
    filt = cfg.sources[source].get("filter")
    return 1.0 if filt is None else filt.get("keep_fraction")


def runs(run_dir: Path) -> pl.DataFrame:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    rows = []
    for path in sorted((run_dir / "runs").glob("*/metrics.json")):
        record = json.loads(path.read_text())
        rows.append({"source": record["source"], "keep": kept_fraction(cfg, record["source"]), "l": record["l"],
                     "m": record["m"], "steps": record["steps"], "seed": record["seed"],
                     **{p: record.get(p) for p in PROBES}})
    if not rows:
        raise SystemExit(f"{run_dir}: no runs/*/metrics.json")
    return pl.DataFrame(rows)


def judged(run_dir: Path, source: str) -> dict:
    """The judge's mean and interval of each JUDGED measure on the source's kept images."""
    path = run_dir / "source_quality" / f"{source}.json"
    row = json.loads(path.read_text()) if path.exists() else {}
    out = {}
    for key in JUDGED:
        value = row.get(key) or {}
        out[f"{key}_mean"], out[f"{key}_ci95"] = value.get("mean"), value.get("ci95")
    return {"source": source, **out}


def table(df: pl.DataFrame, run_dir: Path) -> pl.DataFrame:
    keys = ["source", "keep", "l", "m", "steps"]
    out = df.select(keys).unique(maintain_order=True).sort("keep", descending=True)
    for probe in [p for p in PROBES if df[p].is_not_null().any()]:
        cells = mean_ci(df, keys, probe).select(*keys, pl.col("cell").alias(probe.replace("probe_", "probe ")))
        out = out.join(cells, on=keys, how="left", maintain_order="left")
    judge = [judged(run_dir, s) for s in out["source"]]
    cells = pl.DataFrame([{"source": row["source"], **{name: mean_ci_cell(row[f"{k}_mean"], row[f"{k}_ci95"])
                                                       for k, name in JUDGED.items()}} for row in judge],
                         schema={"source": pl.String, **{name: pl.String for name in JUDGED.values()}})
    seeds = df.group_by(keys).agg(pl.col("seed").n_unique().alias("seeds"))
    return out.join(cells, on="source", how="left", maintain_order="left").join(seeds, on=keys, maintain_order="left")


def plot(df: pl.DataFrame, run_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = mean_ci(df, ["source", "keep"], "probe_shape").sort("keep")
    judge = pl.DataFrame([judged(run_dir, s) for s in stats["source"]])
    panels = [("shape probe: does the filtered source\ntrain a better encoder?", stats["mean"], stats["ci95"],
               "linear-probe accuracy (test)")]
    for key, title in (("clip_guiding", "the filtering CLIP on the kept images\n(its own measure)"),
                       ("match_shape", "does the judge read the caption's\nshape in the kept images?"),
                       ("diversity", "how different are a caption's\nkept images?")):
        if judge[f"{key}_mean"].is_not_null().all():  # a panel only where the judge measured every source
            panels.append((title, judge[f"{key}_mean"], judge[f"{key}_ci95"], JUDGED[key]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3), squeeze=False)
    axes = axes[0]
    for ax, (title, mean, ci, label) in zip(axes, panels):
        ax.errorbar(stats["keep"].to_list(), mean.to_list(), yerr=[0 if v is None or v != v else v for v in ci.to_list()],
                    fmt="o-", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(stats["keep"].to_list(), [f"{k:g}" for k in stats["keep"].to_list()])
        ax.set_xlabel("kept fraction of each caption's images")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_figure(path, fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--plot", type=Path, help="write the plot here (PNG)")
    args = parser.parse_args()
    df = runs(args.run_dir)
    print(markdown_table(table(df, args.run_dir)))
    if args.plot:
        plot(df, args.run_dir, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
