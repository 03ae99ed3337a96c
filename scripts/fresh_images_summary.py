"""Fresh images during training (experiment toy_fresh_images): per arm (a refreshing source, or a
fixed set at l images per caption), the images generated for what it reads, the generation time
they cost, the training wall time and the probe accuracies, mean ± 95 % t-interval over seeds; and
a plot of the shape probes per arm and of the training loss by pass (where a new round begins, the
fresh run meets images it has not seen).

    python scripts/fresh_images_summary.py RUN_DIR [--plot PNG]

RUN_DIR is ``<results_dir>/<name>`` (e.g. results/toy_fresh_images). Prints a markdown table.
Generation time is that of the shard jobs (their logs' ``shard <source> #i (...) in Xs`` lines),
summed over jobs; an arm is charged the seconds per image of the source whose shards it reads times
the images it reads (a fixed set at l = 4 of a 16-image source reads round 0 alone: what a source of
4 images would generate).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import polars as pl
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from synrep.data.rounds import Refresh, round_of_pass  # noqa: E402
from synrep.fileio import write_figure  # noqa: E402
from synrep.generation.sources import refresh_reading  # noqa: E402
from synrep.tables import markdown_table, mean_ci  # noqa: E402

PROBES = ("probe_shape", "probe_colour", "probe_size", "probe_background", "fewshot_shape")
SHARD_LINE = re.compile(r"shard (?P<source>\S+) #(?P<index>\d+) \((?P<captions>\d+) captions\) in (?P<seconds>[0-9.]+)s")


def generating_source(cfg, name: str) -> str:
    """The source whose shards ``name`` reads: itself, or a union's one source."""
    union = list(cfg.sources[name].get("union") or [])
    if len(union) > 1:
        raise SystemExit(f"source {name!r} joins {union}: one generating source per arm")
    return union[0] if union else name


def generation_seconds(run_dir: Path, source: str) -> float | None:
    """The source's shard jobs' seconds, summed (None when its logs are gone)."""
    seconds = [float(m["seconds"]) for path in sorted((run_dir / "logs" / "generate").glob(f"{source}-*.log"))
               for m in SHARD_LINE.finditer(path.read_text()) if m["source"] == source]
    return sum(seconds) if seconds else None


def arm(cfg, name: str, l: int, passes: int) -> dict:
    """What a run on source ``name`` at ``l`` reads: rounds, images per caption over the run, and
    how the arm is named."""
    refresh = refresh_reading(cfg, name)  # a refreshing source, or a union reading its rounds on its own schedule
    if refresh is None:
        return {"arm": f"fixed, l = {l}", "every": None, "rounds read": 1, "images per caption": l}
    reading = Refresh(refresh[0], refresh[1], l)
    read = len({round_of_pass(p, reading) for p in range(passes)})
    return {"arm": f"fresh every {reading.every} passes, {reading.rounds} rounds of l = {l}", "every": reading.every,
            "rounds read": read, "images per caption": l * read}


def runs(run_dir: Path) -> pl.DataFrame:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    rows = []
    for path in sorted((run_dir / "runs").glob("*/metrics.json")):
        record = json.loads(path.read_text())
        train = json.loads((path.parent / "train.json").read_text())
        length = train["length"]
        source = generating_source(cfg, record["source"])
        stats = json.loads((run_dir / "shards" / source / "stats.json").read_text())
        made = generation_seconds(run_dir, source)
        a = arm(cfg, record["source"], record["l"], length["passes"])
        images = length["n_captions"] * a["images per caption"]
        rows.append({**a, "source": record["source"], "l": record["l"], "m": record["m"], "steps": record["steps"],
                     "losses": [h["loss"] for h in train["history"]],
                     "passes": length["passes"], "images generated": images,
                     "generation s": None if made is None else round(made / stats["images"] * images, 1),
                     "seed": record["seed"], "train s": record["train_seconds"],
                     **{p: record.get(p) for p in PROBES}})
    if not rows:
        raise SystemExit(f"{run_dir}: no runs/*/metrics.json")
    return pl.DataFrame(rows)


def table(df: pl.DataFrame) -> pl.DataFrame:
    keys = ["arm", "source", "l", "m", "steps", "passes", "rounds read", "images generated", "generation s"]
    out = df.select(keys).unique(maintain_order=True).sort("images generated", "arm")
    for metric in ["train s", *[p for p in PROBES if df[p].is_not_null().any()]]:
        name = metric.replace("probe_", "probe ").replace("fewshot_", "few-shot ")
        cells = mean_ci(df, keys, metric).select(*keys, pl.col("cell").alias(name))
        out = out.join(cells, on=keys, how="left", maintain_order="left")
    seeds = df.group_by(keys).agg(pl.col("seed").n_unique().alias("seeds"))
    return out.join(seeds, on=keys, maintain_order="left")


def paired(df: pl.DataFrame) -> pl.DataFrame:
    """Each fresh arm minus each fixed arm, seed by seed (a seed is the same initialisation, and the
    same first round, in every arm), mean ± 95 % t-interval of the differences."""
    rows = []
    metrics = [p for p in ("probe_shape", "fewshot_shape") if df[p].is_not_null().any()]
    for fresh in df.filter(pl.col("every").is_not_null())["arm"].unique(maintain_order=True):
        for fixed in df.filter(pl.col("every").is_null())["arm"].unique(maintain_order=True):
            both = (df.filter(pl.col("arm") == fresh).select("seed", *metrics)
                    .join(df.filter(pl.col("arm") == fixed).select("seed", *metrics), on="seed", suffix="_fixed"))
            diffs = both.select("seed", *[(pl.col(m) - pl.col(f"{m}_fixed")).alias(m) for m in metrics])
            row = {"fresh": fresh, "minus": fixed, "seeds": len(diffs)}
            for m in metrics:
                row[f"{m.replace('probe_', 'probe ').replace('fewshot_', 'few-shot ')} difference"] = (
                    mean_ci(diffs.with_columns(pl.lit(0).alias("all")), ["all"], m)["cell"][0])
            rows.append(row)
    return pl.DataFrame(rows)


def short_name(arm_name: str) -> str:
    """An arm as a tick label: "fixed\nl = 4", "fresh\nevery 5"."""
    if arm_name.startswith("fresh every "):
        return "fresh\nevery " + arm_name.removeprefix("fresh every ").split(" ")[0]
    return arm_name.replace(", ", "\n")


def plot(df: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = table(df)["arm"].to_list()
    metrics = [(p, f"{p.replace('probe_', 'probe: ').replace('fewshot_', 'few-shot: ')} accuracy (test)")
               for p in ("probe_shape", "fewshot_shape") if df[p].is_not_null().any()]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(3.8 * (len(metrics) + 1), 3.8), squeeze=False)
    for ax, (metric, label) in zip(axes[0], metrics):
        stats = mean_ci(df, ["arm"], metric)
        stats = pl.DataFrame({"arm": arms}).join(stats, on="arm", how="left", maintain_order="left")
        ax.errorbar(range(len(arms)), stats["mean"].to_list(),
                    yerr=[0 if v is None or v != v else v for v in stats["ci95"].to_list()], fmt="o", capsize=4)
        for arm_name, value in df.select("arm", metric).iter_rows():  # each seed, faint
            ax.plot(arms.index(arm_name) + 0.12, value, ".", color="grey", alpha=0.6)
        ax.set_xticks(range(len(arms)), [short_name(a) for a in arms], fontsize=7)
        ax.set_xlim(-0.5, len(arms) - 0.5)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[0][-1]
    for arm_name in arms:  # the training loss of each pass, mean over seeds; a dot where a new round begins
        runs_of_arm = df.filter(pl.col("arm") == arm_name)
        losses = np.mean(runs_of_arm["losses"].to_list(), axis=0)
        every = runs_of_arm["every"][0]
        starts = [] if every is None else [p for p in range(every, len(losses), every)]
        ax.plot(range(1, len(losses) + 1), losses, "-", label=short_name(arm_name).replace("\n", " "), lw=1.2,
                marker="o" if starts else None, ms=3, markevery=starts or None)
    ax.set_xlabel("pass over the captions")
    ax.set_ylabel("training loss (mean of the pass)", fontsize=8)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.suptitle("fresh images every k passes against fixed sets (mean ± 95 % CI over seeds; grey: each seed;"
                 " dots on the loss: a new round)", fontsize=8)
    fig.tight_layout()
    write_figure(path, fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--plot", type=Path, help="write the plot here (PNG)")
    args = parser.parse_args()
    df = runs(args.run_dir)
    print(markdown_table(table(df)))
    differences = paired(df)
    if len(differences):
        print("\nPaired by seed:\n")
        print(markdown_table(differences))
    if args.plot:
        plot(df, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
