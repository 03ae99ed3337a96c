"""The sweep's runs as tables shaped like StableRep's: loading every run's metrics and the
baselines, choosing the rows each table reports, and the tables themselves (l x m, the generation
budget, m, w, source, zero-shot against w, method x data, the generator family). Each ``table_*``
returns its title and a frame of "mean ± 95% CI" cells, or None where the sweep has no runs for it;
experiments/report.py writes them, experiments/report_plots.py draws from the same selections.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from synrep.learning.methods import METHODS
from synrep.settings import InputError
from synrep.tables import mean_ci, mean_ci_cell

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
    return mean_ci_cell(value.get("mean"), value.get("ci95"), value.get("n")) if value else None


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
