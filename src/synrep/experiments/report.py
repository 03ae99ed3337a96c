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

from synrep.experiments.ablation_tables import (
    family_rows,
    load_baselines,
    load_runs,
    table_budget,
    table_family,
    table_lm,
    table_m,
    table_method_data,
    table_source,
    table_w,
    table_zeroshot_w,
    with_w_labels,
)
from synrep.experiments.report_plots import draw_plots
from synrep.fileio import write_json, write_text
from synrep.settings import InputError, run_dir, save_resolved
from synrep.tables import markdown_table
from synrep.tracking import tracking_uri


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
