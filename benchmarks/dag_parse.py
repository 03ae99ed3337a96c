"""How long Snakemake takes to read the workflow before it runs anything, per config.

Snakemake parses the Snakefile at every start, and on a cluster again inside every job it submits
(the SLURM plugin re-runs Snakemake for the job), so this is a cost per job at the paper's scale.
For the default and each paper recipe this prints the number of sweep runs, the seconds that the
runs' hashes take in-process (one config copy per run, as before, against
``sweep.run_identities``' one copy for all), and the wall seconds of ``snakemake -n --quiet rules``
in a fresh process (imports, parse, DAG; the recipes on a few fixture captions). On a machine where
SLURM is installed but its controller is down, Snakemake's SLURM plugin adds a wait of its own
(`scontrol show config` retries for about 9 s); the last column says whether it answered.

    python benchmarks/dag_parse.py [--configs default paper_cc3m_ablations ...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py

REPO = Path(__file__).resolve().parents[1]
RECIPE_FORMATS = {"paper_cc3m_ablations": "cc3m", "paper_cc12m": "cc12m", "paper_redcaps": "redcaps",
                  "paper_laion_plus": "laion"}


def hash_seconds(overrides: list[str]) -> tuple[int, float, float]:
    from synrep.config import digest, load_config
    from synrep.experiments import sweep

    cfg = load_config(overrides)
    specs = sweep.expand(cfg)
    t0 = time.perf_counter()
    for spec in specs:
        digest(sweep.run_identity(sweep.run_config(cfg, spec)))
    per_run_copy = time.perf_counter() - t0
    t0 = time.perf_counter()
    for identity in sweep.run_identities(cfg, specs).values():
        digest(identity)
    return len(specs), per_run_copy, time.perf_counter() - t0


def controller_answers() -> bool:
    if shutil.which("scontrol") is None:
        return True
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["default", *RECIPE_FORMATS])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.test_recipes import write_fixture

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            paths = [f"paths.data_dir={tmp}/{name}/data", f"paths.results_dir={tmp}/{name}/results"]
            overrides = paths if name == "default" else [f"experiment={name}", *paths]
            config = [] if name == "default" else [f"experiment={name}"]
            if name in RECIPE_FORMATS:
                from synrep.config import load_config
                from synrep.data import captions

                relative = load_config([f"experiment={name}"]).captions.path.split("/", 1)[1]
                write_fixture(RECIPE_FORMATS[name], (Path(tmp) / name / "data" / relative).parent)
                captions.run(load_config(overrides))  # the checkpoint's output: the shards are planned
            runs, before, now = hash_seconds(overrides)
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--quiet", "rules", "--config", *config,
                 f"paths={{data_dir: {tmp}/{name}/data, results_dir: {tmp}/{name}/results}}"],
                cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if done.returncode:
                sys.exit(f"snakemake -n failed for {name}:\n{done.stderr[-2000:]}")
            rows.append((name, runs, before, now, wall))
    print(f"\n{machine()}; SLURM controller "
          f"{'answers (or SLURM is not installed)' if controller_answers() else 'installed but down'}\n")
    print("| config | sweep runs | run hashes, a copy per run (s) | run hashes, one copy (s) | `snakemake -n` wall (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs, before, now, wall in rows:
        print(f"| {name} | {runs} | {before:.2f} | {now:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
