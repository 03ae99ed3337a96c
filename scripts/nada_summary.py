"""NADA runs side by side: the last measured step of each run's ``quality/nada_quality.json``, and
per variant the mean with its 95 % interval over the runs (seeds) of that variant.

    python scripts/nada_summary.py [--every N] [--plot PNG] VARIANT=RUN_DIR [VARIANT=RUN_DIR ...]

e.g. ``directional=results/a/s0 directional=results/a/s1 global=results/a/global0``. Prints one
markdown table per run and one of the variants (``tables.mean_ci``: t-interval, "(n = 1)" for one run).
``--every N``: also each variant's curve, every N steps (the share in the target domain and the
colour kept, mean and interval over its runs); ``--plot``: that curve as a figure, 95 % bands.
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
from synrep.tables import markdown_table, mean_ci  # noqa: E402

METRICS = ("target_fraction", "kept_shape", "kept_colour", "diversity", "clip_direction", "domain_none")


def curve_rows(pairs: list[str]) -> pl.DataFrame:
    """Every measured step of every run: variant, run, step and the metrics."""
    rows = []
    for pair in pairs:
        variant, sep, folder = pair.partition("=")
        path = Path(folder) / "quality" / "nada_quality.json"
        if not sep or not path.is_file():
            raise SystemExit(f"nada_summary: {pair!r}: expected VARIANT=RUN_DIR, RUN_DIR a NADA folder (its "
                             f"quality/nada_quality.json, written by `python -m synrep nada_quality`): {path} not found")
        data = json.loads(path.read_text())
        rows += [{"variant": variant, "run": str(Path(folder)), "step": r["step"], **{m: r.get(m) for m in METRICS}}
                 for r in data["rows"] if r["kind"] == "adapted"]
    return pl.DataFrame(rows)


def last_rows(curves: pl.DataFrame) -> pl.DataFrame:
    """Each run's last measured step, with its diversity at step 0 beside it."""
    runs = ["variant", "run"]
    last = curves.filter(pl.col("step") == pl.col("step").max().over(runs))
    start = curves.filter(pl.col("step") == 0).select(*runs, pl.col("diversity").alias("diversity_step0"))
    return last.join(start, on=runs, how="left", maintain_order="left")


def cells(df: pl.DataFrame, keys: list[str], metrics: tuple[str, ...]) -> pl.DataFrame:
    """Per ``keys``: the run count and each metric's mean ± 95 % t-interval over runs (tables.mean_ci)."""
    out = None
    for metric in metrics:
        table = mean_ci(df, keys, metric).select(*keys, "n", pl.col("cell").alias(metric))
        out = table if out is None else out.join(table.drop("n"), on=keys, maintain_order="left")
    return out


CURVE = ("target_fraction", "kept_colour")


def curve_table(curves: pl.DataFrame, every: int) -> pl.DataFrame:
    """Per variant and step (multiples of ``every``): mean and interval of each CURVE metric over runs."""
    picked = curves.filter(pl.col("step") % every == 0)
    return cells(picked, ["variant", "step"], CURVE).sort("variant", "step", maintain_order=True)


def plot_curves(curves: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    titles = {"target_fraction": "does it reach the target domain? (share of samples)",
              "kept_colour": "does it keep the content? (colour kept)"}
    for ax, metric in zip(axes, CURVE):
        for variant in curves["variant"].unique(maintain_order=True):
            per_step = (curves.filter(pl.col("variant") == variant).group_by("step")
                        .agg(pl.col(metric).mean().alias("mean"), pl.col(metric).std().alias("sd"),
                             pl.len().alias("n")).sort("step"))
            steps, mean = per_step["step"].to_numpy(), per_step["mean"].to_numpy()
            n = int(per_step["n"].min())
            line, = ax.plot(steps, mean, label=f"{variant} ({n} run{'s' if n > 1 else ''})")
            if n > 1:
                half = stats.t.ppf(0.975, n - 1) * per_step["sd"].to_numpy() / n ** 0.5
                # a share lies in [0, 1]; the t-interval of 3 runs can reach past it
                ax.fill_between(steps, (mean - half).clip(0, 1), (mean + half).clip(0, 1), color=line.get_color(),
                                alpha=0.2)
        ax.axhline(0.5 if metric == "target_fraction" else 0.8, color="grey", linestyle=":", linewidth=1)
        ax.set_title(titles[metric], fontsize=10)
        ax.set_xlabel("NADA step")
        ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    write_figure(path, fig)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=0, help="also each variant's curve every N steps")
    parser.add_argument("--plot", type=Path, help="the curves as a PNG (95 %% bands over runs)")
    parser.add_argument("pairs", nargs="+", metavar="VARIANT=RUN_DIR")
    args = parser.parse_args(argv)
    curves = curve_rows(args.pairs)
    runs = last_rows(curves)
    print(markdown_table(runs.with_columns(pl.col(pl.Float64).round(3))), end="\n\n")
    print(markdown_table(cells(runs, ["variant"], METRICS)))
    if args.every or args.plot:
        if args.every:
            print("\n" + markdown_table(curve_table(curves, args.every)))
        if args.plot:
            plot_curves(curves, args.plot)
            print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main(sys.argv[1:])
