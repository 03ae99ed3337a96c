"""The report's plots: accuracy against w per method, StableRep over l x m, the generator family;
each drawn only where its axis has two values or more, and ``plots.json`` saying which were drawn
and why the others wait."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from synrep.experiments.ablation_tables import (
    METHOD_NAMES,
    METHOD_ORDER,
    default_runs,
    lm_pairs,
    lm_source,
    without_budget,
)
from synrep.fileio import write_figure, write_json
from synrep.tables import mean_ci


def figure_family(rows: list[dict], metric: str):
    """StableRep's accuracy against the source's caption match (mean over attributes) and diversity."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for row in rows:
        if row["stablerep"] is None:
            continue
        matches = [v["mean"] for k, v in row.items() if k.startswith("match_") and v and v["mean"] is not None]
        y, yerr = row["stablerep"]["mean"], row["stablerep"]["ci95"] or 0.0
        for ax, x in ((axes[0], sum(matches) / len(matches) if matches else None),
                      (axes[1], row["diversity"]["mean"] if row["diversity"] else None)):
            if x is None:
                continue
            ax.errorbar([x], [y], yerr=[yerr], fmt="o", capsize=3)
            ax.annotate(f"{row['source']} ({row['mode']})", (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    axes[0].set(xlabel="caption match (judge, mean over named attributes)", ylabel=f"StableRep {metric}",
                title="Fidelity: does a source that matches its\ncaptions better teach StableRep more?")
    axes[1].set(xlabel="diversity (mean pairwise RMS distance within a caption)", ylabel=f"StableRep {metric}",
                title="Diversity: does a more varied source\nteach StableRep more?")
    fig.tight_layout()
    return fig


def figure_accuracy_vs_w(df: pl.DataFrame, metric: str, cfg: DictConfig, base: pl.DataFrame | None = None):
    """Accuracy against w per method (synthetic), dashed: the same method on real images."""
    import matplotlib.pyplot as plt

    runs = default_runs(df, cfg)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in [m for m in METHOD_ORDER if m in runs["method"].to_list()]:
        mine = runs.filter(pl.col("method") == method)
        synthetic = mine.filter(pl.col("data") != "real")
        # the line: at each w its first source (in the sweep's order); another source at the same
        # w (e.g. the generator's NADA copy) is a marker of its own, named, never pooled into the line
        plain = synthetic.filter(pl.col("w_set").is_null())
        order = {name: i for i, name in enumerate(dict.fromkeys(plain["data"].to_list()))}
        by_source = mean_ci(plain, ["w", "data"], metric).with_columns(
            pl.col("data").replace_strict(order, return_dtype=pl.Int64).alias("_order")).sort("w", "_order")
        syn = by_source.unique("w", keep="first", maintain_order=True)
        others = by_source.join(syn.select("w", "data"), on=["w", "data"], how="anti")
        sets = mean_ci(synthetic.filter(pl.col("w_set").is_not_null()), ["w", "w_set"], metric)
        if syn.is_empty() and sets.is_empty():
            continue
        line = ax.errorbar(syn["w"], syn["mean"], yerr=syn["ci95"], marker="o", capsize=3,
                           label=f"{METHOD_NAMES[method]} (synthetic)")
        for row in others.iter_rows(named=True):
            ax.errorbar([row["w"]], [row["mean"]], yerr=[row["ci95"]], fmt="D", mfc="none", capsize=3,
                        color=line[0].get_color())
            ax.annotate(row["data"], (row["w"], row["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        # a set of scales: a hollow square at its mean w, named by the set
        for row in sets.iter_rows(named=True):
            ax.errorbar([row["w"]], [row["mean"]], yerr=[row["ci95"]], fmt="s", mfc="none", capsize=3,
                        color=line[0].get_color())
            ax.annotate(row["w_set"], (row["w"], row["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        real = mean_ci(mine.filter(pl.col("data") == "real"), ["method"], metric)
        if not real.is_empty():
            ax.axhline(real["mean"][0], color=line[0].get_color(), ls="--", lw=1,
                       label=f"{METHOD_NAMES[method]} (real)")
    if base is not None:
        for name, style in (("random_init", ":"), ("raw_pixels", "-.")):
            b = base.filter(pl.col("baseline") == name)
            if not b.is_empty() and metric in b.columns:
                ax.axhline(b[metric].mean(), color="grey", ls=style, lw=1, label=METHOD_NAMES[name])
    ax.set(xlabel="guidance scale w", ylabel=metric.replace("_", " "),
           title=f"Which guidance scale w suits each method?\n({metric}; dashed: the method on real images)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_lm_heatmap(df: pl.DataFrame, metric: str):
    """StableRep's accuracy over l x m, on the source the l x m table reports."""
    import matplotlib.pyplot as plt
    import numpy as np

    sr = without_budget(df).filter(pl.col("method") == "stablerep")
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    if not sr.is_empty():
        data = lm_source(sr)
        cells = mean_ci(sr.filter(pl.col("data") == data), ["l", "m"], metric)
        ls, ms = sorted(cells["l"].unique().to_list()), sorted(cells["m"].unique().to_list())
        grid = np.full((len(ls), len(ms)), np.nan)
        for row in cells.iter_rows(named=True):
            grid[ls.index(row["l"]), ms.index(row["m"])] = row["mean"]
        image = ax.imshow(grid, cmap="viridis", origin="lower")
        for i in range(len(ls)):
            for j in range(len(ms)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w", fontsize=9)
        ax.set(xticks=range(len(ms)), xticklabels=ms, yticks=range(len(ls)), yticklabels=ls,
               xlabel="m (images per caption in a batch)", ylabel="l (images per caption)",
               title=f"StableRep {metric} over l x m ({data}):\ndo more images per caption (l, m) help?")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig



# Every plot the report may draw: file stem -> what it answers (the report page's caption). A plot
# whose axis has one value is not drawn: one point says nothing a table cell does not.
PLOTS = {
    "accuracy_vs_w": "Which guidance scale w suits each method, and how far are synthetic images from real ones?",
    "zeroshot_vs_w": "How does zero-shot accuracy of the text-tower methods change with w, against real images?",
    "lm_heatmap": "Does StableRep gain from more images per caption (l) and more of them in a batch (m)?",
    "generator_family_plot": "Does a source whose images match their captions better, or vary more, teach StableRep more?",
}
PLOT_FILES = {"accuracy_vs_w": "accuracy_vs_w.png", "zeroshot_vs_w": "zeroshot_vs_w.png",
              "lm_heatmap": "lm_heatmap.png", "generator_family_plot": "generator_family.png"}


def w_values(df: pl.DataFrame, metric: str, cfg: DictConfig) -> list[float]:
    """The guidance scales (a set at its mean) of the synthetic runs a plot against w draws."""
    if metric not in df.columns:
        return []
    runs = default_runs(df, cfg).filter((pl.col("data") != "real") & pl.col(metric).is_not_null() & pl.col("w").is_not_null())
    return sorted(runs["w"].unique().to_list())


def family_points(rows: list[dict] | None) -> list[str]:
    """The sources the generator-family plot would draw: those StableRep trained on."""
    return [row["source"] for row in rows or [] if row["stablerep"] is not None]


def plot_plan(df: pl.DataFrame, metric: str, zeroshot: str, cfg: DictConfig,
              family: list[dict] | None) -> dict[str, str | None]:
    """Each plot's fate: None where it is drawn, else why it waits (the axis it lacks). A plot
    never drawn for this kind of run (no text tower, no per-source quality) is left out."""
    plan: dict[str, str | None] = {}
    ws = w_values(df, metric, cfg)
    plan["accuracy_vs_w"] = None if len(ws) > 1 else (
        f"waits for a second guidance scale: every synthetic run is at w = {ws[0]:g} "
        "(the method x data table has its numbers)" if ws else "waits for a run on synthetic images")
    if zeroshot in df.columns and df.filter(pl.col(zeroshot).is_not_null() & (pl.col("data") != "real")).height:
        zs = w_values(df.filter(pl.col(zeroshot).is_not_null()), zeroshot, cfg)
        plan["zeroshot_vs_w"] = None if len(zs) > 1 else (
            f"waits for a second guidance scale: every text-tower run on synthetic images is at w = {zs[0]:g} "
            "(the zero-shot method x data table has its numbers)" if zs else "waits for a text-tower run on synthetic images")
    sr = without_budget(df).filter(pl.col("method") == "stablerep")
    pairs = lm_pairs(sr) if not sr.is_empty() else 0
    if pairs > 1:
        plan["lm_heatmap"] = None
    elif pairs == 1:
        one = sr.filter(pl.col("data") == lm_source(sr)).row(0, named=True)
        plan["lm_heatmap"] = (f"waits for the l x m axes: StableRep ran at one (l, m) = ({one['l']}, {one['m']}) "
                              "per source (the method x data table has its numbers)")
    else:
        plan["lm_heatmap"] = "waits for StableRep runs on all captions"
    if family is not None:
        sources = family_points(family)
        plan["generator_family_plot"] = None if len(sources) > 1 else (
            f"waits for StableRep trained on a second source: it trained on {', '.join(sources) or 'none'} "
            "(the generator family table has every source's scores)")
    return plan


def draw_plots(df: pl.DataFrame, metric: str, zeroshot: str, cfg: DictConfig, base: pl.DataFrame | None,
               family: list[dict] | None, out: Path) -> dict[str, Path]:
    """The plots with two or more values on their axis, and ``plots.json``: each plot's file and
    question, or why it waits. A waiting plot's file from an earlier run is removed (it would show
    results this run no longer has)."""
    import matplotlib

    matplotlib.use("Agg")
    figures = {"accuracy_vs_w": lambda: figure_accuracy_vs_w(df, metric, cfg, base),
               "zeroshot_vs_w": lambda: figure_accuracy_vs_w(df.filter(pl.col(zeroshot).is_not_null()), zeroshot, cfg),
               "lm_heatmap": lambda: figure_lm_heatmap(df, metric),
               "generator_family_plot": lambda: figure_family(family, metric)}
    outputs, record = {}, []
    plan = plot_plan(df, metric, zeroshot, cfg, family)
    for name, file in PLOT_FILES.items():
        path = out / file
        if name in plan and plan[name] is None:
            write_figure(path, figures[name]())
            outputs[name] = path
        else:
            path.unlink(missing_ok=True)
        if name in plan:
            record.append({"name": name, "file": file if plan[name] is None else None, "question": PLOTS[name],
                           "waits": plan[name]})
    outputs["plots"] = write_json(out / "plots.json", {"plots": record})
    return outputs
