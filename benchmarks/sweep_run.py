"""Where a sweep run's time goes: process start-up, data (reading + decoding, augmentation),
forward/backward, checkpoints, evaluation (loading, features, probe, few-shot, zero-shot) and MLflow,
for a process per run (``sweep.runs_per_job=1``) against the runs of a job in one process.

    snakemake --cores 2                        # once: the shards the runs read
    python benchmarks/sweep_run.py [--runs 4] [key=value ...]

Runs the first ``--runs`` runs of seed 0 twice with ``python -m synrep sweep_run``, into a scratch
results folder that links the default run's shards (nothing of ``results/`` is changed): once a
process each, once all in one process. The parts come from what each run records
(``metrics.json`` ``seconds``: the trainer's loader wait and compute, the evaluation's parts, the
MLflow calls); start-up is the process's wall time less its runs. The loader wait is split into
reading + decoding and augmentation by timing the run's dataset with and without its transform.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py

REPO = Path(__file__).resolve().parents[1]


def scratch_results(cfg, root: Path) -> None:
    """``root/<name>`` with links to the default run's shards, real shards and captions."""
    from synrep.config import run_dir

    src, dst = run_dir(cfg), root / cfg.name
    dst.mkdir(parents=True)
    for part in ("shards", "real_shards", "captions"):
        if not (src / part).exists():
            sys.exit(f"{src / part} not found: run `snakemake --cores 2` first (the runs read its shards)")
        (dst / part).symlink_to((src / part).resolve())


def run_job(run_ids: list[str], overrides: list[str]) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``sweep_run`` process, and each run's seconds inside it."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "synrep", "sweep_run", *overrides, "--run", *run_ids],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    inside = {m.group(1): float(m.group(2)) for m in re.finditer(r"^run (\S+): ([0-9.]+)s", done.stdout, re.M)}
    return wall, inside


def decode_share(cfg, run_id: str, samples: int = 256) -> float:
    """Share of the loader's time spent reading and decoding (the rest: augmentation)."""
    import torch

    from synrep.experiments.sweep import find, run_config
    from synrep.learning import trainer

    torch.set_num_threads(cfg.threads)
    rcfg = run_config(cfg, find(cfg, run_id))
    from synrep.data import stream
    from synrep.learning import augment

    length = trainer.training_length(rcfg, stream.count_captions(rcfg, rcfg.train.data))
    dataset = trainer.training_data(rcfg, length)
    dataset.transform = augment.train_transform(rcfg)
    n = min(samples, len(dataset))
    times = {}
    for name, transform in (("decode", lambda x: x.float()), ("all", dataset.transform)):
        dataset.transform = transform
        start = time.perf_counter()
        for i in range(n):
            dataset[i]
        times[name] = time.perf_counter() - start
    return min(1.0, times["decode"] / times["all"])


def parts_of(record: dict, decode: float) -> dict[str, float]:
    s = record["seconds"]
    train, ev = s.get("train_parts", {}), s.get("evaluate_parts", {})
    data, batched = train.get("data", 0.0), train.get("augment", 0.0)
    if batched:  # augmented a batch at a time in the loop: the loader only reads and decodes
        decode = 1.0
    parts = {
        "data: read + decode": data * decode,
        "data: augmentation": data * (1 - decode) + batched,
        "forward / backward / optimizer": train.get("compute", 0.0),
        "checkpoints": train.get("checkpoint", 0.0),
        "eval: load model + data": ev.get("load", 0.0),
        "eval: features": ev.get("features", 0.0),
        "eval: linear probe": ev.get("probe", 0.0),
        "eval: few-shot": ev.get("few_shot", 0.0),
        "eval: zero-shot": ev.get("zero_shot", 0.0),
        "MLflow": s.get("mlflow", 0.0),
    }
    parts["other (model set-up, metrics file)"] = max(0.0, s["train"] + s["evaluate"] - sum(
        v for k, v in parts.items() if k != "MLflow"))
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--runs", type=int, default=4, help="first N runs of seed 0 (default 4)")
    args = parser.parse_args()

    from synrep.config import load_config, run_dir
    from synrep.experiments.sweep import expand
    from synrep.tracking import ensure_experiment

    cfg = load_config(args.overrides)
    seed = cfg.sweep.seeds[0]
    run_ids = [s.run_id for s in expand(cfg) if s.seed == seed][: args.runs]
    decode = decode_share(cfg, run_ids[0])
    rows: dict[str, dict[str, float]] = {}
    for mode in ("a process per run", f"{len(run_ids)} runs in one process"):
        with tempfile.TemporaryDirectory(prefix="synrep-bench-") as tmp:
            overrides = [*args.overrides, f"paths.results_dir={tmp}"]
            scratch = load_config(overrides)
            scratch_results(cfg, Path(tmp))
            ensure_experiment(scratch)  # as the workflow's onstart: the schema is made once per sweep
            walls, inside = [], {}
            if mode.startswith("a process"):
                for run_id in run_ids:
                    wall, seconds = run_job([run_id], overrides)
                    walls.append(wall)
                    inside.update(seconds)
            else:
                wall, inside = run_job(run_ids, overrides)
                walls.append(wall)
            totals: dict[str, float] = {"process start-up (imports, config, exit)": sum(walls) - sum(inside.values())}
            for run_id in run_ids:
                record = json.loads((run_dir(scratch, "runs", run_id) / "metrics.json").read_text())
                for part, value in parts_of(record, decode).items():
                    totals[part] = totals.get(part, 0.0) + value
                # MLflow after the record was written (artifact, run end)
                inside_parts = record["seconds"]["train"] + record["seconds"]["evaluate"] + record["seconds"]["mlflow"]
                totals["MLflow"] += max(0.0, inside[run_id] - inside_parts)
            rows[mode] = {k: v / len(run_ids) for k, v in totals.items()} | {"total": sum(walls) / len(run_ids)}

    modes = list(rows)
    print(f"Seconds per sweep run ({len(run_ids)} runs of seed {seed}: {', '.join(run_ids)}; "
          f"{cfg.threads} threads; {machine()})\n")
    print(f"| part | {' | '.join(modes)} | share ({modes[-1]}) |")
    print(f"| --- | {' | '.join('---:' for _ in modes)} | ---: |")
    for part in rows[modes[0]]:
        values = " | ".join(f"{rows[m][part]:.2f}" for m in modes)
        share = rows[modes[-1]][part] / rows[modes[-1]]["total"]
        print(f"| {part} | {values} | {share:.0%} |")
    for m in modes:
        orchestration = rows[m]["process start-up (imports, config, exit)"] + rows[m]["MLflow"]
        print(f"\norchestration (start-up + MLflow), {m}: {orchestration:.2f} s a run, "
              f"{orchestration / rows[m]['total']:.0%} of its time")


if __name__ == "__main__":
    main()
