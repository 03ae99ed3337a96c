"""Command line: ``python -m synrep <step> [key=value ...]``.

Each step calls the same ``run(cfg)`` function that its Snakemake rule calls. ``experiment=NAME``
loads ``config/experiment/NAME.yaml`` over the defaults; ``--config FILE`` replaces
``config/config.yaml`` (Snakemake passes the resolved config it validated).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

from synrep.config import ConfigError, InputError, json_schema, load_config, to_yaml
from synrep.training_recipes import RECIPES

# step -> (module, function, help); modules are imported lazily so that --help stays fast. The
# training recipes' steps come from their declarations (synrep/training_recipes.py), after these.
STEPS: dict[str, tuple[str, str, str]] = {
    "toyworld": ("synrep.data.toyworld", "run", "render the embedded toy world (captions and real splits)"),
    "captions": ("synrep.data.captions", "run", "ingest and deduplicate captions"),
    "nada_target_world": ("synrep.data.toyworld", "target_world_run", "render NADA's target domain as a toy world of real images (StableRep's domain-shift evaluation set)"),
    "domain_classifier": ("synrep.evaluation.domain_classifier", "run", "train the photo / other-domain classifier into nada.domain_classifier"),
    "nada_quality": ("synrep.evaluation.nada_quality", "run", "target-domain fraction, content kept and diversity of the NADA-adapted generator per step"),
    "download_weights": ("synrep.generation.download", "run", "fetch generation.model (a hub id) into the Hugging Face cache once, only the files its pipeline loads, and store its weights' hash"),
    "generate": ("synrep.generation.generate", "run", "generate l images per caption of each source into shards"),
    "index": ("synrep.generation.index", "run", "index each source's shards, draw its sample grid, log to MLflow"),
    "sample_quality": ("synrep.evaluation.sample_quality", "run", "caption-match accuracy and diversity of the generator by w"),
    "source_quality": ("synrep.evaluation.source_quality", "run", "caption match, diversity and CLIP scores of each source's shards (the judge)"),
    "dreambooth_quality": ("synrep.evaluation.dreambooth_quality", "run", "DreamBooth's subject fidelity, prompt fidelity, language drift and class diversity, with and without prior preservation"),
    "subject_probe": ("synrep.experiments.subject_probe", "run", "DreamBooth as a source: a linear probe of the subject against near-miss rings, per training source"),
    "inpaint_quality": ("synrep.evaluation.inpaint_quality", "run", "edit accuracy and preservation of text-guided inpainting"),
    "attribute_classifier": ("synrep.evaluation.attribute_classifier", "run", "train the toy world's attribute classifier (the judge) into sample_quality.classifier"),
    "real_shards": ("synrep.data.real_shards", "run", "write the captions' real images as shards (real-image baselines)"),
    "train": ("synrep.learning.trainer", "run", "train one encoder as train.* describes"),
    "evaluate": ("synrep.evaluation.evaluate", "run", "linear probe, few-shot and zero-shot of the encoder in train.output_dir"),
    "baselines": ("synrep.evaluation.evaluate", "baselines_run", "evaluate a random-init encoder and raw pixels"),
    "sweep": ("synrep.experiments.sweep", "list_runs", "list the runs the sweep expands to"),
    "sweep_run": ("synrep.experiments.sweep_run", "run_many", "train and evaluate runs of the sweep (--run RUN_ID ...)"),
    "report": ("synrep.experiments.report", "run", "ablation tables and plots of the sweep"),
    "page": ("synrep.experiments.page", "run", "results/<name>/report.html: every table and plot of the run on one page"),
    "plan": ("synrep.experiments.planner", "run", "print the jobs and GPU-hours a config will cost"),
    "launch": ("synrep.experiments.launch", "run", "submit the sweep's runs with submitit (SLURM job array or local)"),
}
STEPS.update({r.step: (*r.function(), r.help) for r in RECIPES.values()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m synrep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, (_, _, help_text) in STEPS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.add_argument("--config", dest="config_file", help="config file to use instead of config/config.yaml")
        if name in ("generate", "index", "source_quality"):
            p.add_argument("--source", help="only this source (default: every source that training reads)")
        if name == "captions":
            p.add_argument("--source", help="the caption set of this source (sources.<name>.caption_set), not the run's")
        if name == "generate":
            p.add_argument("--shard", type=int, help="only this shard index (with --source)")
        if name == "baselines":
            p.add_argument("--seed", type=int, help="only this seed (default: every sweep seed)")
        if name == "sweep_run":
            p.add_argument("--run", required=True, nargs="+", dest="run_ids",
                           help="run id(s), as `python -m synrep sweep` lists; several run one after another")
    p = sub.add_parser("config", help="print the resolved config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--config", dest="config_file")
    sub.add_parser("schema", help="print the JSON schema of the config (workflow/schemas/config.schema.json)")
    return parser


def peak_memory() -> str:
    """The process's peak resident memory, and its largest child's (DataLoader workers, pools): the
    kernel's high-water marks, which a sampling profiler can miss."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return f"peak RSS {own:.0f} MB (largest child {child:.0f} MB)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.step == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        cfg = load_config(args.overrides, config_file=args.config_file)
    except ConfigError as err:
        print(f"synrep: error: {err}", file=sys.stderr)
        return 2
    if args.step == "config":
        print(to_yaml(cfg), end="")
        return 0

    module, function, _ = STEPS[args.step]
    fn = getattr(importlib.import_module(module), function)
    kwargs = {}
    if args.step == "generate":
        kwargs = {"source": args.source, "shard": args.shard}
    elif args.step in ("index", "source_quality", "captions"):
        kwargs = {"source": args.source}
    elif args.step == "baselines":
        kwargs = {"seed": args.seed}
    elif args.step == "sweep_run":
        kwargs = {"run_ids": args.run_ids}
    start = time.time()
    try:
        outputs = fn(cfg, **kwargs)
    except (FileNotFoundError, InputError) as err:
        # what the user gave (a missing input, a malformed file, a config value a step checks) as one
        # clear line, SYNREP_DEBUG=1 shows its traceback; any other exception, a ValueError included,
        # is a bug and keeps its traceback
        if os.environ.get("SYNREP_DEBUG"):
            raise
        print(f"synrep {args.step}: error: {err}", file=sys.stderr)
        return 1
    # one fixed-format line per job: benchmarks/rule_resources.py reads it from the rules' logs
    print(f"synrep {args.step}: done in {time.time() - start:.1f}s, {peak_memory()}", file=sys.stderr)
    if isinstance(outputs, dict):
        for key, path in outputs.items():
            print(f"  {key}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
