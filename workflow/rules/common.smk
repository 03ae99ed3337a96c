# Shared set-up: the validated config, where results go, and how rules call the steps.
import re
import sys
from pathlib import Path

from synrep.config import load_config, run_dir, section_hash, to_yaml
from synrep.data.shards import shard_path, shard_ranges
from synrep.fileio import write_text
from synrep.training_recipes import RECIPES

# Snakemake's config (config/config.yaml, --configfile, --config) validated by the structured
# config: unknown keys and wrong types stop here with the key's dotted path.
# Only what the command line adds (--config, --configfile) is passed on: config/config.yaml is
# loaded by load_config itself, before the experiment file, which these then override.
CFG = load_config(base=workflow.config_settings.overwrite_config)
RESULTS = run_dir(CFG)
LOGS = RESULTS / "logs"

# The resolved config that every job reads; rewritten only when it changes. Rules rerun when
# the sections they use change, through their `params.config` hash.
RESOLVED = RESULTS / "config.yaml"
if not RESOLVED.exists() or RESOLVED.read_text() != to_yaml(CFG):
    write_text(RESOLVED, to_yaml(CFG))

# The interpreter running Snakemake has synrep installed (also on SLURM nodes, where each job
# re-runs Snakemake with it). Named by its environment's prefix, not by the link that started it
# (.venv/bin/snakemake runs python3.11, `python -m snakemake` runs python): rules embed it in their
# commands, and Snakemake reruns a rule whose command changed.
PYTHON = str(Path(sys.prefix) / "bin" / "python") if (Path(sys.prefix) / "bin" / "python").exists() else sys.executable
# Sampling jobs' torch threads (generation.threads, else threads): a small UNet runs faster as
# two one-thread jobs side by side than as one two-thread job, with the same images
GENERATION_THREADS = CFG.generation.threads or CFG.threads


# Scheduling on a few cores: the jobs on the way to the sweep's training runs, and the runs, go
# first, so that the long runs start early (the default run left a core idle for 1.5 minutes when
# its last run started late); then the models that other jobs wait for (a generator, DreamBooth,
# NADA, a classifier: no train-then-measure chain left to run alone at the end) and the long
# measurements (a minute each: longest first); the short jobs (index, source quality, baselines,
# report: priority 0) fill the gaps and the end.
TRAINING_PATH_PRIORITY = 10
EARLY_PRIORITY = 1


def synrep(step, extra=""):
    """Shell command of one step; its output goes to the rule's log."""
    return f"{PYTHON} -m synrep {step} --config {RESOLVED} threads={{threads}} {extra} > {{log}} 2>&1"


def local_model_dir(model):
    """The pipeline folder as an input when it is local (retraining it reruns generation)."""
    return [model] if Path(model).exists() or model.startswith(str(CFG.paths.results_dir)) else []


onstart:
    # Parallel jobs race on creating the MLflow schema and experiment: create both first.
    from synrep.tracking import ensure_experiment

    ensure_experiment(CFG)
    if RUNS:
        from synrep.experiments.sweep_run import parent_run_id

        parent_run_id(CFG)
