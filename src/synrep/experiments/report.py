"""Ablation tables and plots of a sweep, shaped like StableRep's.

Reads every run's ``metrics.json`` and the baselines, and writes under
``results/<name>/ablations/``:

- ``runs.csv``: one row per run and seed, every metric;
- ``tables.md`` and one CSV per table (``<metric>__<table>.csv``), cells "mean ± 95% CI over
  seeds" (Student t; one seed: "mean (n = 1)"), each table only where the sweep has its runs:

  - ``stablerep_l_x_m``: StableRep's l x m on all captions;
  - ``stablerep_l_at_a_fixed_generation_budget_t``: l at a fixed generation budget T (runs with a
    ``budget``: T // l captions, l images each; l = 1 is SimCLR-like), one column per T;
  - ``stablerep_m_at_a_fixed_batch``: m at a fixed batch (m = 1 is SimCLR: one image, two crops);
  - ``guidance_scale_w_per_method``: each method against w, sets of scales included;
  - ``zero-shot_accuracy_against_w`` (zero-shot metrics): the text-tower methods (CLIP) against
    w, and on the real images as a reference row;
  - ``method_x_data``: real vs synthetic with the two baselines; a method run on several synthetic
    sources is reported at its best one, chosen by the mean over seeds of the held-out selection
    accuracy (``probe_<target>_val``), never the reported metric; the rule is stated under it.

  Runs at a fixed generation budget appear in the budget table only;
- ``accuracy_vs_w.png``, ``zeroshot_vs_w.png`` (where a text tower ran on synthetic images) and
  ``lm_heatmap.png`` (budget runs left out), each only where its axis has two values or more (the
  default's one w and one (l, m) are table cells, not plots);
- ``plots.json``: each plot's file and the question it answers, or why it waits (the report page
  shows both);
- ``metrics.json``: group means, for ``dvc metrics show``;
- with per-source quality (``evaluation/source_quality.py``, toy world): ``generator_family.md`` /
  ``.csv``, each source's caption match, diversity and CLIP scores (95% intervals over captions)
  beside StableRep's linear probe on it (95% interval over seeds), and ``generator_family.png``
  where StableRep trained on two sources or more.

All of it is also logged to the sweep's MLflow parent run.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from synrep.settings import InputError, run_dir, save_resolved
from synrep.fileio import atomic_path, write_json, write_text
from synrep.learning.methods import METHODS
from synrep.tables import markdown_table, mean_ci
from synrep.tracking import tracking_uri

METHOD_ORDER = list(METHODS)
METHOD_NAMES = {**{m.name: m.label for m in METHODS.values()}, "random_init": "random init", "raw_pixels": "raw pixels"}


def load_runs(paths: list[Path]) -> pl.DataFrame:
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        record.pop("details", None)
        record.pop("seconds", None)  # the run's time split (benchmarks/sweep_run.py), not a table column
        rows.append(record)
    if not rows:
        raise InputError("no run metrics to report")
    return with_w_labels(pl.DataFrame(rows, infer_schema_length=None))


def with_w_labels(df: pl.DataFrame) -> pl.DataFrame:
    """``w`` as a float column (a set's mean) and ``w_label``, how tables name it: ``w=2.0`` or
    ``w={2,3}``; ``budget`` as an integer column, null for a run on all captions (older records
    have no budget)."""
    for column, dtype in (("w", pl.Float64), ("w_set", pl.String), ("budget", pl.Int64)):
        if column not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(column))
    df = df.with_columns(pl.col("w").cast(pl.Float64), pl.col("w_set").cast(pl.String), pl.col("budget").cast(pl.Int64))
    return df.with_columns(pl.when(pl.col("w_set").is_not_null()).then(pl.format("w={}", pl.col("w_set")))
                           .otherwise(pl.format("w={}", pl.col("w"))).alias("w_label"))


def load_baselines(paths: list[Path] | None) -> pl.DataFrame | None:
    """The baselines' rows from their metrics files (one per seed)."""
    rows = [row for path in paths or [] if Path(path).exists() for row in json.loads(Path(path).read_text())["baselines"]]
    if not rows:
        return None
    for row in rows:
        row.pop("details", None)
    return pl.DataFrame(rows)


def without_budget(df: pl.DataFrame) -> pl.DataFrame:
    """Runs on all captions: a run at a fixed generation budget (T / l captions) belongs to the
    budget table only."""
    return df.filter(pl.col("budget").is_null()) if "budget" in df.columns else df


def default_runs(df: pl.DataFrame, cfg: DictConfig) -> pl.DataFrame:
    """The rows of the w and method x data tables: StableRep(+) at the default l and m (train.l,
    train.m); a one-image method (SimCLR, CLIP) at its smallest l per source (the paper's l = 1)."""
    df = without_budget(df)
    multi = pl.col("method").is_in([m.name for m in METHODS.values() if m.multi_positive])
    l_default = pl.when(pl.col("data") == "real").then(1).otherwise(cfg.train.l)
    smallest = pl.col("l") == pl.col("l").min().over("method", "data")
    return df.filter(pl.when(multi).then((pl.col("l") == l_default) & (pl.col("m") == cfg.train.m))
                     .otherwise(smallest))


def selection_metric(df: pl.DataFrame, metric: str, primary: str) -> str:
    """The held-out selection accuracy that chooses between runs: the metric's own ``_val`` where it
    has one, else the primary target's probe selection accuracy."""
    own = f"{metric}_val"
    return own if own in df.columns else f"probe_{primary}_val"


def _order_methods(df: pl.DataFrame, column: str = "method") -> pl.DataFrame:
    order = {m: i for i, m in enumerate(METHOD_ORDER + ["random_init", "raw_pixels"])}
    return (df.with_columns(pl.col(column).replace_strict(order, default=99).alias("_order"))
              .sort("_order", maintain_order=True).drop("_order"))


def _label(df: pl.DataFrame, column: str = "method") -> pl.DataFrame:
    return df.with_columns(pl.col(column).replace_strict(METHOD_NAMES, default=pl.col(column)))


def lm_source(sr: pl.DataFrame) -> str:
    """The source of StableRep's runs (``sr``, no budget runs) with the most (l, m) pairs."""
    counts = sr.group_by("data").agg(pl.struct("l", "m").n_unique().alias("k"))
    return counts.sort(["k", "data"], descending=[True, False])["data"][0]  # a tie: the first by name


def lm_pairs(sr: pl.DataFrame) -> int:
    """How many (l, m) pairs StableRep ran on that source: below two, l x m is one cell."""
    return sr.filter(pl.col("data") == lm_source(sr)).select(pl.struct("l", "m").n_unique()).item()


def table_lm(df: pl.DataFrame, metric: str) -> tuple[str, pl.DataFrame] | None:
    """l x m for StableRep on the data source with the most (l, m) pairs."""
    sr = without_budget(df).filter(pl.col("method") == "stablerep")
    if sr.is_empty():
        return None
    data = lm_source(sr)
    if lm_pairs(sr) < 2:
        return None
    cells = mean_ci(sr.filter(pl.col("data") == data), ["l", "m"], metric)
    table = cells.sort("m").pivot(on="m", index="l", values="cell").sort("l")
    table = table.rename({c: f"m={c}" for c in table.columns if c != "l"}).with_columns(pl.col("l").cast(pl.String))
    return f"StableRep, l x m ({data})", table


def table_budget(df: pl.DataFrame, metric: str) -> tuple[str, pl.DataFrame] | None:
    """l at a fixed generation budget T (the paper's design): T // l captions, l images each, every
    run as long as the others. Rows l (with its m and captions), one column per T; StableRep on the
    source with the most budget runs."""
    if "budget" not in df.columns:
        return None
    runs = df.filter(pl.col("budget").is_not_null() & (pl.col("method") == "stablerep") & pl.col(metric).is_not_null())
    if runs.is_empty():
        return None
    data = runs.group_by("data").len().sort("len", "data", descending=[True, False])["data"][0]
    runs = runs.filter(pl.col("data") == data)
    if runs.select(pl.col("l").n_unique()).item() < 2:
        return None
    cells = mean_ci(runs, ["budget", "l", "m"], metric).sort("budget", "l", "m")
    budgets = sorted(cells["budget"].unique().to_list())
    table = cells.pivot(on="budget", index=["l", "m"], values="cell").sort("l", "m")
    table = table.rename({str(t): f"T={t}" for t in budgets})
    captions = [(pl.lit(t, dtype=pl.Int64) // pl.col("l")).alias("captions" if len(budgets) == 1 else f"captions at T={t}")
                for t in budgets]
    table = table.with_columns(*captions)
    front = ["l", "m", *[c for c in table.columns if c.startswith("captions")]]
    table = table.select(*front, *[f"T={t}" for t in budgets])
    return (f"StableRep, l at a fixed generation budget T ({data}; T // l captions, l images each; "
            "l = 1, m = 1 is SimCLR-like)", table.with_columns(pl.col(front).cast(pl.String)))


def table_m(df: pl.DataFrame, metric: str) -> tuple[str, pl.DataFrame] | None:
    """m at a fixed batch (batch / m rows; m = 1 is SimCLR), on the (source, l) with the most m."""
    sr = without_budget(df).filter(pl.col("method") == "stablerep")
    if sr.is_empty():
        return None
    counts = sr.group_by("data", "l").agg(pl.col("m").n_unique().alias("k")).sort("k", "l", descending=True)
    if counts["k"][0] < 3:
        return None
    data, l = counts["data"][0], counts["l"][0]
    cells = mean_ci(sr.filter((pl.col("data") == data) & (pl.col("l") == l)), ["m"], metric).sort("m")
    table = cells.select(pl.col("m").cast(pl.String), pl.col("cell").alias(metric))
    return f"StableRep, m at a fixed batch ({data}, l = {l}; m = 1 is SimCLR)", table


def sources_share_a_w(syn: pl.DataFrame) -> bool:
    """Whether two synthetic sources have the same w label (e.g. a generator and its NADA copy)."""
    most = syn.group_by("w_label").agg(pl.col("data").n_unique().alias("n"))["n"].max()
    return most is not None and most > 1


def table_w(df: pl.DataFrame, metric: str, cfg: DictConfig) -> tuple[str, pl.DataFrame] | None:
    """A column per w; none where sources share a w (it would pool them: the source table shows them)."""
    syn = default_runs(df, cfg).filter(pl.col("data") != "real")
    if syn.select(pl.col("w_label").n_unique()).item() < 2 or sources_share_a_w(syn):
        return None
    cells = mean_ci(syn, ["method", "w", "w_label"], metric).sort("w", "w_label")
    table = _label(_order_methods(cells.pivot(on="w_label", index="method", values="cell")))
    return "guidance scale w per method", table


def table_source(df: pl.DataFrame, metric: str, cfg: DictConfig) -> tuple[str, pl.DataFrame] | None:
    """A column per synthetic source, when some sources share a w (the w table would merge them,
    and the method x data table shows only the best): e.g. a generator and its adapted copy."""
    syn = default_runs(df, cfg).filter(pl.col("data") != "real")
    if not sources_share_a_w(syn):
        return None
    cells = mean_ci(syn, ["method", "data"], metric)
    order = list(dict.fromkeys(syn["data"].to_list()))
    table = _label(_order_methods(cells.pivot(on="data", index="method", values="cell")))
    return "synthetic source per method", table.select("method", *order)


def table_zeroshot_w(df: pl.DataFrame, metric: str, cfg: DictConfig, with_note: bool = False):
    """Zero-shot accuracy against w (the paper's CLIP ablation: one image per caption), one column
    per method with a text tower, and the same method on the real images as a reference row.
    (title, table), or None without two values of w; with_note: (title, table, the note under it)."""
    runs = default_runs(df, cfg).filter(pl.col(metric).is_not_null())
    syn = runs.filter(pl.col("data") != "real")
    if syn.select(pl.col("w_label").n_unique()).item() < 2:
        return None
    # a row per w, or per source where sources share a w (not pooled)
    row = pl.format("{} ({})", "data", "w_label") if sources_share_a_w(syn) else pl.col("w_label")
    cells = mean_ci(syn.with_columns(row.alias("row")), ["w", "row", "method"], metric).sort("w", "row")
    methods = [m for m in METHOD_ORDER if m in cells["method"].to_list()]
    table = cells.pivot(on="method", index="row", values="cell").rename({"row": "data"})
    real = mean_ci(runs.filter(pl.col("data") == "real"), ["method"], metric)
    if not real.is_empty():
        reference = real.select(pl.lit("real images (reference)").alias("data"), "method", "cell")
        table = pl.concat([table, reference.pivot(on="method", index="data", values="cell")], how="diagonal")
    methods += [m for m in table.columns if m != "data" and m not in methods]
    table = table.select("data", *methods).rename({m: METHOD_NAMES.get(m, m) for m in methods})
    note = (f"Synthetic sources by w (a set of scales at its mean); the last row: the same method trained on "
            f"the real images, the reference. {metric} is reported; nothing is chosen on it.")
    title = "zero-shot accuracy against w (one image per caption; real images as the reference)"
    return (title, table, note) if with_note else (title, table)


def best_sources(runs: pl.DataFrame, chooser: str) -> dict[str, dict]:
    """Each method run on several synthetic sources: its best one, the highest mean over seeds of
    the held-out selection accuracy ``chooser`` (ties: the first source by name). Never the reported
    metric: choosing on it would report the maximum of noisy estimates."""
    synthetic = runs.filter((pl.col("data") != "real") & pl.col(chooser).is_not_null())
    counts = synthetic.group_by("method").agg(pl.col("data").n_unique().alias("k"))
    several = counts.filter(pl.col("k") > 1)["method"].to_list()
    if not several:
        return {}
    chosen = (synthetic.filter(pl.col("method").is_in(several))
              .group_by("method", "data", "w_label").agg(pl.col(chooser).mean().alias("_sel"))
              .sort(["method", "_sel", "data"], descending=[False, True, False])
              .group_by("method", maintain_order=True).first())
    return {row["method"]: row for row in chosen.iter_rows(named=True)}


def table_method_data(df: pl.DataFrame, metric: str, cfg: DictConfig, base: pl.DataFrame | None,
                      primary: str | None = None, with_note: bool = False):
    """Real vs synthetic. Where every method ran on one synthetic source at most: one row per
    method, one column per source (and the baselines under "no training"). Where a method ran on
    several: the paper's rows, (method, data), its synthetic row at its own best source, chosen on
    the held-out selection split (the paper reports SimCLR at its own best w), the rule under the
    table; the other sources are in the w table. (title, table); with_note: (title, table, the
    note under it, or None)."""
    runs = default_runs(df, cfg).filter(pl.col(metric).is_not_null())
    cells = mean_ci(runs, ["method", "data", "w", "w_label"], metric).sort("w", nulls_last=False)
    synthetic = runs.filter(pl.col("data") != "real")
    several = synthetic.group_by("method").agg(pl.col("data").n_unique().alias("k")).filter(pl.col("k") > 1)
    bcells = (mean_ci(base.rename({"baseline": "method"}), ["method"], metric)
              if base is not None and metric in base.columns else None)
    if several.is_empty():
        table = cells.pivot(on="data", index="method", values="cell")
        if bcells is not None:
            table = pl.concat([table, bcells.select("method", pl.col("cell").alias("no training"))], how="diagonal")
        title, table = "method x data (real vs synthetic)", _label(_order_methods(table))
        return (title, table, None) if with_note else (title, table)

    chooser = selection_metric(df, metric, primary or cfg.eval.targets[0])
    best = best_sources(runs, chooser) if chooser in runs.columns else {}
    rows = []
    for method in cells["method"].unique(maintain_order=True).to_list():
        mine = cells.filter(pl.col("method") == method)
        for row in mine.filter(pl.col("data") == "real").iter_rows(named=True):
            rows.append({"method": method, "data": "real", metric: row["cell"]})
        syn = mine.filter(pl.col("data") != "real")
        if method in best:
            pick = syn.filter(pl.col("data") == best[method]["data"]).row(0, named=True)
            rows.append({"method": method, "data": f"synthetic (best: {pick['w_label']}, chosen on the held-out split)",
                         metric: pick["cell"]})
        else:  # one source, or no selection accuracy in the records: every source, none chosen
            rows += [{"method": method, "data": f"synthetic ({r['w_label']})", metric: r["cell"]}
                     for r in syn.sort("w", "w_label").iter_rows(named=True)]
    if bcells is not None:
        rows += [{"method": r["method"], "data": "no training", metric: r["cell"]} for r in bcells.iter_rows(named=True)]
    table = _label(_order_methods(pl.DataFrame(rows, schema={"method": pl.String, "data": pl.String, metric: pl.String})))
    if chooser in runs.columns:
        note = (f"A method run on several synthetic sources is reported at its best source: the highest mean over "
                f"seeds of {chooser}, the held-out selection split (never the reported {metric}); ties go to the "
                f"first source by name. Its other sources are in the w table.")
    else:
        note = (f"No selection accuracy ({chooser}) in these records: every synthetic source is shown, none "
                f"chosen (choosing on the reported {metric} would overstate it).")
    title = "method x data (real vs synthetic)"
    return (title, table, note) if with_note else (title, table)


def _cell(value: dict | None) -> str | None:
    if not value or value.get("mean") is None:
        return None
    if value.get("ci95") is None:
        return f"{value['mean']:.3f} (n = {value['n']})"
    return f"{value['mean']:.3f} ± {value['ci95']:.3f}"


def family_rows(df: pl.DataFrame, metric: str, cfg: DictConfig, quality: list[dict]) -> list[dict]:
    """Per source: its quality (from its shards) and StableRep's ``metric`` on it at the default l, m."""
    runs = default_runs(df, cfg).filter((pl.col("method") == "stablerep") & pl.col(metric).is_not_null())
    probe = {r["data"]: r for r in mean_ci(runs, ["data"], metric).iter_rows(named=True)}
    rows = []
    for q in quality:
        p = probe.get(q["source"])
        row = {"source": q["source"], "mode": q["mode"], "guidance": q["guidance"], "captions": q.get("captions")}
        # the judge's attributes in the world's order, then diversity, then the CLIPs
        matches = [f"match_{a}" for a in ("shape", "colour", "size", "background") if f"match_{a}" in q]
        # diversity_real: real images of the source's own domain with its captions' attributes
        diversities = [k for k in ("diversity", "diversity_real") if k in q]
        for key in matches + diversities + sorted(k for k in q if k.startswith("clip_")):
            row[key] = q[key]
        row["stablerep"] = None if p is None else {"mean": p["mean"], "ci95": None if p["n"] < 2 else p["ci95"],
                                                   "n": p["n"]}
        rows.append(row)
    return rows


def table_family(rows: list[dict], metric: str) -> tuple[str, pl.DataFrame]:
    cells = [{k: (_cell(v) if isinstance(v, dict) or v is None else v) for k, v in r.items()} for r in rows]
    table = pl.DataFrame(cells, infer_schema_length=None).rename({"stablerep": f"StableRep {metric}"})
    return "generator family (each source's images, and StableRep trained on them)", table


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


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


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


def dvc_metrics(df: pl.DataFrame, base: pl.DataFrame | None, metrics: list[str]) -> dict:
    out: dict = {}
    for group in df["group"].unique(maintain_order=True).to_list():
        rows = df.filter(pl.col("group") == group)
        out[group] = {m: round(float(rows[m].mean()), 4) for m in metrics if m in rows.columns and rows[m].null_count() < len(rows)}
    if base is not None:
        for name in base["baseline"].unique(maintain_order=True).to_list():
            rows = base.filter(pl.col("baseline") == name)
            out[f"baseline-{name}"] = {m: round(float(rows[m].mean()), 4) for m in metrics if m in rows.columns}
    return out


def build(cfg: DictConfig, run_metrics: list[Path], baseline_metrics: list[Path] | None, out: Path,
          source_quality: list[Path] | None = None) -> dict[str, Path]:
    df = load_runs(run_metrics)
    base = load_baselines(baseline_metrics)
    primary = cfg.eval.targets[0] if cfg.eval.dataset == "toyworld" else "class"
    metrics = [c for c in (f"probe_{primary}", f"fewshot_{primary}", f"zeroshot_{primary}") if c in df.columns]
    metrics += [c for c in df.columns if c.startswith("probe_") and not c.endswith(("_val", "_epoch")) and c not in metrics]

    outputs: dict[str, Path] = {}
    write_text(out / "runs.csv", _csv(df.sort(["method", "data", "l", "m", "seed"])))
    outputs["runs"] = out / "runs.csv"
    sections = [f"# Ablations: {cfg.name}\n",
                f"Cells: mean ± 95% CI (Student t) over seeds {list(cfg.sweep.seeds)}. Metric names: "
                "probe = linear probe test accuracy (lr chosen on the selection split, never the reported one), fewshot = "
                f"{cfg.eval.fewshot_ways}-way {cfg.eval.fewshot_shots}-shot accuracy, zeroshot = zero-shot "
                f"accuracy. Default l = {cfg.train.l}, m = {cfg.train.m}.\n"]
    for metric in metrics:
        if metric.startswith("zeroshot"):  # the methods with a text tower
            text = df.filter(pl.col(metric).is_not_null())
            made = [table_zeroshot_w(text, metric, cfg, with_note=True),
                    table_method_data(text, metric, cfg, None, primary, with_note=True)]
        else:
            made = [table_lm(df, metric), table_budget(df, metric), table_m(df, metric), table_w(df, metric, cfg),
                    table_source(df, metric, cfg), table_method_data(df, metric, cfg, base, primary, with_note=True)]
        for item in made:
            if item is None:
                continue
            title, table, note = (*item, None)[:3]
            slug = title.split(" (")[0].replace(" x ", "_x_").replace(" ", "_").replace(",", "").lower()[:48]
            write_text(out / f"{metric}__{slug}.csv", _csv(table))
            sections.append(f"## {metric}: {title}\n\n{markdown_table(table)}" + (f"\n{note}\n" if note else ""))
    write_text(out / "tables.md", "\n".join(sections))
    outputs["tables"] = out / "tables.md"
    outputs["metrics"] = write_json(out / "metrics.json", dvc_metrics(df, base, metrics))
    quality = [json.loads(Path(p).read_text()) for p in source_quality or [] if Path(p).exists()]
    rows = None
    if quality:
        rows = family_rows(df, metrics[0], cfg, quality)
        title, table = table_family(rows, metrics[0])
        write_text(out / "generator_family.csv", _csv(table))
        outputs["generator_family"] = write_text(
            out / "generator_family.md",
            f"# {title}\n\nCaption match, diversity and CLIP scores: the judge and CLIPs on each source's own "
            f"shards, mean ± 95% CI over captions. StableRep: {metrics[0]} at l = {cfg.train.l}, m = {cfg.train.m}, "
            f"mean ± 95% CI over seeds.\n\n{markdown_table(table)}")
    outputs.update(draw_plots(df, metrics[0], f"zeroshot_{primary}", cfg, base, rows, out))
    return outputs


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
            _save(figures[name](), path)
            outputs[name] = path
        else:
            path.unlink(missing_ok=True)
        if name in plan:
            record.append({"name": name, "file": file if plan[name] is None else None, "question": PLOTS[name],
                           "waits": plan[name]})
    outputs["plots"] = write_json(out / "plots.json", {"plots": record})
    return outputs


def runs_from_mlflow(cfg: DictConfig) -> pl.DataFrame:
    """The sweep's child runs from MLflow, one row per run (the latest attempt), as ``load_runs`` gives."""
    import mlflow

    from synrep.experiments.sweep_run import sweep_key

    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.name)
    if experiment is None:
        raise InputError(f"no MLflow experiment {cfg.name!r} at {tracking_uri(cfg)}")
    parents = client.search_runs([experiment.experiment_id], f"tags.`synrep.sweep` = '{sweep_key(cfg)}'")
    if not parents:
        raise InputError(f"no sweep run for this config in experiment {cfg.name!r} at {tracking_uri(cfg)}")
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`synrep.sweep_parent` = '{parents[0].info.run_id}' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=10000)
    rows, seen = [], set()
    for child in children:
        tags = child.data.tags
        if tags.get("synrep.run") in seen or "synrep.run" not in tags:
            continue
        seen.add(tags["synrep.run"])
        params = child.data.params
        rows.append({"run": tags["synrep.run"], "group": tags["synrep.group"], "method": params["method"],
                     "data": params["source"], "source": params["source"], "l": int(params["l"]),
                     "m": int(params["m"]), "seed": int(params["seed"]),
                     "budget": int(params["budget"]) if "budget" in params else None,
                     "w": float(params["w"]) if "w" in params else None, "w_set": params.get("w_set"),
                     **child.data.metrics})
    if not rows:
        raise InputError(f"the sweep in experiment {cfg.name!r} has no finished runs yet")
    return with_w_labels(pl.DataFrame(rows, infer_schema_length=None)).sort(["method", "data", "l", "m", "seed"])


def _csv(df: pl.DataFrame) -> str:
    return df.write_csv()


def run_paths(cfg: DictConfig) -> list[Path]:
    from synrep.experiments.sweep import expand, run_output_dir

    return [run_output_dir(cfg, spec) / "metrics.json" for spec in expand(cfg)]


def run(cfg: DictConfig) -> dict[str, Path]:
    """``python -m synrep report``: tables and plots of the sweep, into its MLflow parent run."""
    import mlflow

    from synrep.experiments.sweep_run import parent_run_id

    paths = run_paths(cfg)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} runs of the sweep have no metrics yet, e.g. {missing[0]}")
    from synrep.evaluation.evaluate import baselines_path

    baselines = [baselines_path(cfg, seed) for seed in cfg.sweep.seeds] if cfg.sweep.baselines else None
    out = run_dir(cfg, "ablations")
    from synrep.evaluation.source_quality import quality_path
    from synrep.generation.sources import referenced_sources

    # every source made: those trained on, and those only judged (sample_quality.sources)
    outputs = build(cfg, paths, baselines, out, [quality_path(cfg, s) for s in referenced_sources(cfg)])
    save_resolved(cfg, out)
    client = mlflow.MlflowClient(tracking_uri(cfg))
    parent = parent_run_id(cfg)
    for path in outputs.values():
        client.log_artifact(parent, str(path), artifact_path="ablations")
    for path in sorted(out.glob("*.csv")):
        client.log_artifact(parent, str(path), artifact_path="ablations")
    client.set_terminated(parent, "FINISHED")
    return outputs
