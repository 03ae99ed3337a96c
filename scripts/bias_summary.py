"""Bias and composition (experiment toy_bias): what the skewed caption set holds, worst-group and
mean-group linear-probe accuracy per method and source (with the baselines), and compositional
zero-shot accuracy on the seen and the held-out attribute pairs per method and source; mean ± 95 %
t-interval over seeds. With --plot, a figure of both.

    python scripts/bias_summary.py RUN_DIR [--plot PNG]

RUN_DIR is ``<results_dir>/<name>`` (e.g. results/toy_bias). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from synrep.data import toy_vocabulary, toyworld  # noqa: E402
from synrep.fileio import write_figure  # noqa: E402
from synrep.tables import markdown_table, mean_ci  # noqa: E402

TARGET = "shape"  # the probe whose groups eval.groups splits (the first target)
GROUPINGS = ("shape_background", "shape_colour")
PAIRS = ("shape_colour", "shape_size")


def skewed_group(cfg) -> dict[str, str] | None:
    """The (shape, background) group the first skew rule thins out, e.g. {shape: ring, background: light}."""
    for rule in cfg.captions.get("skew", []):
        match = dict(rule.match)
        if set(match) == {"shape", "background"}:
            return match
    return None


def held_out_shape_colour(cfg) -> list[dict[str, str]]:
    """The held-out (shape, colour) pairs, each a group of the (shape, colour) probe grouping."""
    return [dict(p) for p in cfg.captions.get("held_out", []) if set(p) == {"shape", "colour"}]


def group_accuracy(details: dict, grouping: str, wanted: dict) -> float | None:
    for g in details.get("worst_group", {}).get(TARGET, {}).get(grouping, {}).get("groups", []):
        if g["group"] == wanted:
            return g["accuracy"]
    return None


def worst_name(details: dict, grouping: str) -> str | None:
    r = details.get("worst_group", {}).get(TARGET, {}).get(grouping)
    if not r or r["worst"] is None:
        return None
    group = min((g for g in r["groups"] if g["counted"]), key=lambda g: g["accuracy"])["group"]
    if set(group) == {"shape", "background"}:
        return f"{group['shape']} on {group['background']}"
    if set(group) == {"shape", "colour"}:
        return f"{group['colour']} {group['shape']}"
    return ", ".join(f"{k}={v}" for k, v in group.items())


def rows(run_dir: Path, cfg) -> pl.DataFrame:
    skew = skewed_group(cfg)
    unskewed = None if skew is None else {**skew, "background": "dark" if skew["background"] == "light" else "light"}
    out = []
    records = [(json.loads(p.read_text()), None) for p in sorted((run_dir / "runs").glob("*/metrics.json"))]
    for path in sorted((run_dir / "baselines").glob("s*/metrics.json")):
        records += [(b, b["baseline"]) for b in json.loads(path.read_text())["baselines"]]
    for record, baseline in records:
        details = record.get("details", {})
        row = {"method": baseline or record["method"], "source": "-" if baseline else record["source"],
               "seed": record["seed"], f"probe_{TARGET}": record.get(f"probe_{TARGET}")}
        for g in GROUPINGS:
            row[f"worst_{g}"] = record.get(f"probe_{TARGET}_worst_{g}")
            row[f"mean_{g}"] = record.get(f"probe_{TARGET}_groupmean_{g}")
            row[f"worst_is_{g}"] = worst_name(details, g)
        if skew is not None:
            row["skewed_group"] = group_accuracy(details, "shape_background", skew)
            row["unskewed_group"] = group_accuracy(details, "shape_background", unskewed)
        for pair in held_out_shape_colour(cfg):  # a pair no caption showed, as a probe group
            row[f"held {pair['colour']} {pair['shape']}"] = group_accuracy(details, "shape_colour", pair)
        for p in PAIRS:
            for part in ("seen", "heldout"):
                row[f"{p}_{part}"] = record.get(f"zeroshot_pair_{p}_{part}")
        row[f"zeroshot_{TARGET}"] = record.get(f"zeroshot_{TARGET}")
        out.append(row)
    if not out:
        raise SystemExit(f"{run_dir}: no runs/*/metrics.json")
    return pl.DataFrame(out, infer_schema_length=None)


def cells(df: pl.DataFrame, keys: list[str], metrics: dict[str, str]) -> pl.DataFrame:
    out = df.select(keys).unique(maintain_order=True)
    for metric, name in metrics.items():
        if metric not in df.columns or df[metric].is_null().all():
            continue
        got = mean_ci(df, keys, metric).select(*keys, pl.col("cell").alias(name))
        out = out.join(got, on=keys, how="left", maintain_order="left")
    return out


def most_often(df: pl.DataFrame, keys: list[str], column: str) -> pl.DataFrame:
    """The group that is worst in most seeds, and in how many (ties: the first by name)."""
    counts = (df.filter(pl.col(column).is_not_null()).group_by(*keys, column).len()
              .sort(["len", column], descending=[True, False]).group_by(keys, maintain_order=True).first())
    return counts.select(*keys, pl.format("{} ({}/{})", pl.col(column), pl.col("len"),
                                          pl.lit(df["seed"].n_unique())).alias(column))


def worst_table(df: pl.DataFrame, cfg) -> pl.DataFrame:
    keys = ["method", "source"]
    skew = skewed_group(cfg)
    names = {f"probe_{TARGET}": f"probe {TARGET}"}
    for g in GROUPINGS:
        names[f"worst_{g}"] = f"worst {g.replace('_', ' x ')}"
        names[f"mean_{g}"] = f"mean {g.replace('_', ' x ')}"
    if skew is not None:
        names["skewed_group"] = f"{skew['shape']} on {skew['background']}"
        names["unskewed_group"] = f"{skew['shape']} on {'dark' if skew['background'] == 'light' else 'light'}"
    for pair in held_out_shape_colour(cfg):
        names[f"held {pair['colour']} {pair['shape']}"] = f"{pair['colour']} {pair['shape']} (held out)"
    out = cells(df, keys, names)
    for g in GROUPINGS:
        worst = most_often(df, keys, f"worst_is_{g}").rename({f"worst_is_{g}": f"worst group {g.replace('_', ' x ')}"})
        out = out.join(worst, on=keys, how="left", maintain_order="left")
    seeds = df.group_by(keys).agg(pl.col("seed").n_unique().alias("seeds"))
    return out.join(seeds, on=keys, maintain_order="left")


def compositional_table(df: pl.DataFrame) -> pl.DataFrame:
    keys = ["method", "source"]
    text = df.filter(pl.col(f"{PAIRS[0]}_seen").is_not_null()) if f"{PAIRS[0]}_seen" in df.columns else df.clear()
    names = {f"zeroshot_{TARGET}": f"zero-shot {TARGET}"}
    for p in PAIRS:
        names[f"{p}_seen"] = f"{p.replace('_', ' x ')} seen"
        names[f"{p}_heldout"] = f"{p.replace('_', ' x ')} held out"
    out = cells(text, keys, names)
    seeds = text.group_by(keys).agg(pl.col("seed").n_unique().alias("seeds"))
    return out.join(seeds, on=keys, maintain_order="left")


def caption_table(run_dir: Path, cfg) -> pl.DataFrame:
    """What the caption set holds: per shape, captions kept, the share of them whose image has a
    dark background, and the share that name a background at all (what a generator can follow)."""
    captions = pl.read_parquet(run_dir / "captions" / "captions.parquet")
    world = Path(cfg.paths.data_dir) / "toyworld"
    train = toyworld.load_split(world, "train")
    index = np.array([toyworld.train_index(u) for u in captions["url"].to_list()])
    named = [toy_vocabulary.parse_caption(c, cfg) for c in captions["caption"].to_list()]
    out = []
    for i, shape in enumerate(cfg.toyworld.shapes):
        mine = train["shape"][index] == i
        n = int(mine.sum())
        names_bg = np.array([named[k]["background"] is not None for k in np.flatnonzero(mine)])
        out.append({"shape": shape, "captions": n,
                    "image on dark": round(float((train["background"][index][mine] == 0).mean()), 3) if n else None,
                    "caption names a background": round(float(names_bg.mean()), 3) if n else None})
    return pl.DataFrame(out)


def plot(df: pl.DataFrame, cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skew = skewed_group(cfg)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.7, 1]})
    ax = axes[0]
    runs = df.filter(pl.col("worst_shape_background").is_not_null())
    groups = runs.select("method", "source").unique(maintain_order=True).rows()
    measures = [("mean_shape_background", "mean group (shape x background)"),
                ("worst_shape_background", "worst group (shape x background)"),
                ("worst_shape_colour", "worst group (shape x colour)")]
    if skew is not None:
        other = "dark" if skew["background"] == "light" else "light"
        measures[1:1] = [("unskewed_group", f"{skew['shape']} on {other}"),
                         ("skewed_group", f"{skew['shape']} on {skew['background']} (the thinned group)")]
    width = 0.8 / len(measures)
    for k, (metric, label) in enumerate(measures):
        stats = mean_ci(runs, ["method", "source"], metric)
        lookup = {(r["method"], r["source"]): r for r in stats.iter_rows(named=True)}
        means = [lookup.get(g, {}).get("mean", np.nan) for g in groups]
        cis = [lookup.get(g, {}).get("ci95", 0) or 0 for g in groups]
        ax.bar(np.arange(len(groups)) + (k - (len(measures) - 1) / 2) * width, means, width, yerr=cis, capsize=2,
               label=label)
    ax.set_xticks(range(len(groups)), [f"{m.replace('_', ' ')}\n{s}" for m, s in groups], fontsize=7)
    ax.set_ylabel(f"{TARGET} probe accuracy (test)")
    ax.set_title("does the skewed caption set leave a group behind?", fontsize=9)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    ax.legend(fontsize=6, ncol=2, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1]
    text = df.filter(pl.col(f"{PAIRS[0]}_seen").is_not_null())
    groups = text.select("method", "source").unique(maintain_order=True).rows()
    measures = [(f"{p}_{part}", f"{p.replace('_', ' x ')} {'held out' if part == 'heldout' else 'seen'}")
                for p in PAIRS for part in ("seen", "heldout")]
    width = 0.8 / len(measures)
    for k, (metric, label) in enumerate(measures):
        stats = mean_ci(text, ["method", "source"], metric)
        lookup = {(r["method"], r["source"]): r for r in stats.iter_rows(named=True)}
        ax.bar(np.arange(len(groups)) + (k - (len(measures) - 1) / 2) * width,
               [lookup.get(g, {}).get("mean", np.nan) for g in groups], width,
               yerr=[lookup.get(g, {}).get("ci95", 0) or 0 for g in groups], capsize=2, label=label)
    for k, (pair, colour) in enumerate(zip(PAIRS, ("tab:blue", "tab:green"))):
        classes = {"shape_colour": len(cfg.toyworld.shapes) * len(cfg.toyworld.colours),
                   "shape_size": len(cfg.toyworld.shapes) * 2}[pair]
        ax.axhline(1 / classes, color=colour, ls=":", lw=1, label=f"chance, {pair.replace('_', ' x ')} (1/{classes})")
    ax.set_xticks(range(len(groups)), [f"{m.replace('_', ' ')}\n{s}" for m, s in groups], fontsize=7)
    ax.set_ylabel("zero-shot pair accuracy (test)")
    ax.set_title("can the text tower name pairs it never saw together?", fontsize=9)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.legend(fontsize=6, ncol=2, loc="upper right")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    write_figure(path, fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--plot", type=Path, help="write the plot here (PNG)")
    args = parser.parse_args()
    cfg = OmegaConf.load(args.run_dir / "config.yaml")
    df = rows(args.run_dir, cfg)
    print("captions per shape\n")
    print(markdown_table(caption_table(args.run_dir, cfg)))
    print("worst group\n")
    print(markdown_table(worst_table(df, cfg)))
    print("compositional zero-shot\n")
    print(markdown_table(compositional_table(df)))
    if args.plot:
        plot(df, cfg, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
