"""NADA runs side by side: the last measured step of each run's ``quality/nada_quality.json``, and
per variant the mean with its 95 % interval over the runs (seeds) of that variant.

    python scripts/nada_summary.py VARIANT=RUN_DIR [VARIANT=RUN_DIR ...]

e.g. ``directional=results/a/s0 directional=results/a/s1 global=results/a/global0``. Prints one
markdown table per run and one of the variants (``tables.mean_ci``: t-interval, "(n = 1)" for one run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from synrep.tables import markdown_table, mean_ci  # noqa: E402

METRICS = ("target_fraction", "kept_shape", "kept_colour", "diversity", "clip_direction", "domain_none")


def last_rows(pairs: list[str]) -> pl.DataFrame:
    rows = []
    for pair in pairs:
        variant, folder = pair.split("=", 1)
        data = json.loads((Path(folder) / "quality" / "nada_quality.json").read_text())
        adapted = [r for r in data["rows"] if r["kind"] == "adapted"]
        last = max(adapted, key=lambda r: r["step"])
        base = next(r for r in adapted if r["step"] == 0)
        rows.append({"variant": variant, "run": Path(folder).name, "step": last["step"],
                     **{m: last.get(m) for m in METRICS}, "diversity_step0": base["diversity"]})
    return pl.DataFrame(rows)


def main(pairs: list[str]) -> None:
    runs = last_rows(pairs)
    print(markdown_table(runs.with_columns(pl.col(pl.Float64).round(3))), end="\n\n")
    cells = None
    for metric in METRICS:
        table = mean_ci(runs, ["variant"], metric).select("variant", "n", pl.col("cell").alias(metric))
        cells = table if cells is None else cells.join(table.drop("n"), on="variant", maintain_order="left")
    print(markdown_table(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
