# Learning: one job per sweep run (train + evaluate), the no-training baselines, and the report.
# The runs come from synrep.experiments.sweep.expand, the same function that `python -m synrep launch` uses.
from synrep.experiments.sweep import expand as expand_sweep, run_config, run_identity

RUNS = {spec.run_id: spec for spec in expand_sweep(CFG)}
# The toy world's captions have their real images in the world; real caption sets point
# train.real_shards at img2dataset shards made outside the pipeline.
TOY_CAPTIONS = Path(CFG.captions.path).resolve() == (WORLD / "captions_raw.tsv").resolve()
EVAL_INPUT = [rules.toyworld.output.test] if CFG.eval.dataset == "toyworld" else []


wildcard_constraints:
    run="|".join(re.escape(r) for r in RUNS) if RUNS else "NO_RUNS",
    seed=r"-?[0-9]+",


rule real_shards:
    input:
        captions=RESULTS / "captions" / "captions.parquet",
        train=rules.toyworld.output.train,
    output:
        index=Path(CFG.train.real_shards) / "index.parquet",
    params:
        config=section_hash(CFG, "captions", "generation.captions_per_shard"),
    threads: 1
    log:
        LOGS / "real_shards.log",
    shell:
        synrep("real_shards")


def run_data(wildcards):
    """A run reads the real shards or its source's shard index."""
    source = RUNS[wildcards.run].data
    if source == "real":
        return rules.real_shards.output.index if TOY_CAPTIONS else []
    return RESULTS / "shards" / source / "index.parquet"


def run_hash(wildcards):
    """A run reruns when what its result depends on changes, not when the sweep around it does."""
    from synrep.config import digest

    return digest(run_identity(run_config(CFG, RUNS[wildcards.run])))


rule sweep_run:
    input:
        data=run_data,
        eval=EVAL_INPUT,
    output:
        metrics=RESULTS / "runs" / "{run}" / "metrics.json",
        model=RESULTS / "runs" / "{run}" / "model.pt",
    params:
        run=run_hash,
    threads: CFG.threads
    resources:
        runtime=240,
        mem_mb=8000,
    log:
        LOGS / "runs" / "{run}.log",
    shell:
        synrep("sweep_run", "--run {wildcards.run}")


rule baselines:
    input:
        eval=EVAL_INPUT,
    output:
        metrics=RESULTS / "baselines" / "s{seed}" / "metrics.json",
    params:
        config=section_hash(CFG, "train", "eval"),
    threads: CFG.threads
    resources:
        runtime=60,
        mem_mb=4000,
    log:
        LOGS / "baselines" / "s{seed}.log",
    shell:
        synrep("baselines", "--seed {wildcards.seed}")


rule report:
    input:
        runs=expand(RESULTS / "runs" / "{run}" / "metrics.json", run=list(RUNS)),
        baselines=expand(rules.baselines.output.metrics, seed=CFG.sweep.seeds) if CFG.sweep.baselines else [],
    output:
        tables=RESULTS / "ablations" / "tables.md",
        metrics=RESULTS / "ablations" / "metrics.json",
        accuracy_vs_w=RESULTS / "ablations" / "accuracy_vs_w.png",
        lm_heatmap=RESULTS / "ablations" / "lm_heatmap.png",
    params:
        config=section_hash(CFG, "train", "eval", "sweep"),
    threads: 1
    log:
        LOGS / "report.log",
    shell:
        synrep("report")
