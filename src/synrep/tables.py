"""Tables for people: markdown tables and mean ± 95% t-intervals over seeds (polars)."""

from __future__ import annotations

import math

import polars as pl


def markdown_table(df: pl.DataFrame, floatfmt: str = ".3f") -> str:
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.iter_rows():
        cells = [format(v, floatfmt) if isinstance(v, float) else ("" if v is None else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_ci_cell(mean: float | None, ci95: float | None, n: int | None = None) -> str | None:
    """A table cell: "mean ± half-width", or "mean (n = 1)" (just "mean" when n is unknown) without an
    interval; three decimals always (0.500, not 0.5), so that a column's numbers line up."""
    if mean is None:
        return None
    if ci95 is None or math.isnan(ci95):
        return f"{mean:.3f}" if n is None else f"{mean:.3f} (n = {n})"
    return f"{mean:.3f} ± {ci95:.3f}"


def t_halfwidth(std: float | None, n: int, confidence: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of a mean of n values (NaN for n < 2: one
    value has no interval, and printing "± 0.0" would claim one)."""
    from scipy import stats

    if n < 2 or std is None or math.isnan(std):
        return math.nan
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))


def mean_ci(df: pl.DataFrame, by: list[str], metric: str) -> pl.DataFrame:
    """Mean, 95% CI half-width and count of ``metric`` per group, plus a "mean ± ci" cell ("mean (n = 1)"
    for a single value)."""
    grouped = (df.filter(pl.col(metric).is_not_null())
               .group_by(by, maintain_order=True)
               .agg(pl.col(metric).mean().alias("mean"), pl.col(metric).std().alias("std"), pl.len().alias("n")))
    ci = [t_halfwidth(s, n) for s, n in zip(grouped["std"].to_list(), grouped["n"].to_list())]
    grouped = grouped.with_columns(pl.Series("ci95", ci, dtype=pl.Float64))
    cells = [mean_ci_cell(m, c, n)
             for m, c, n in zip(grouped["mean"].to_list(), grouped["ci95"].to_list(), grouped["n"].to_list())]
    return grouped.with_columns(pl.Series("cell", cells, dtype=pl.String))


def mean_ci_table(rows: pl.DataFrame, keys: list[str], skip: tuple[str, ...] = ("seed",)) -> pl.DataFrame:
    """One row per group of ``keys`` (in first-seen order) and a "mean ± ci" cell per other column
    (``skip`` left out): a study's summary over seeds. A null key is a group of its own."""
    metrics = [c for c in rows.columns if c not in (*keys, *skip)]
    table = rows.select(keys).unique(maintain_order=True)
    for metric in metrics:
        cells = mean_ci(rows, keys, metric).select(*keys, pl.col("cell").alias(metric))
        table = table.join(cells, on=keys, how="left", nulls_equal=True)
    return table
