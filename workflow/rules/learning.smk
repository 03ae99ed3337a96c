# Learning: the sweep's runs (train + evaluate), the no-training baselines, and the report.
# The runs come from synrep.experiments.sweep.expand, the same function that `python -m synrep launch` uses.
from synrep.config import digest
from synrep.experiments.sweep import expand as expand_sweep, job_batches, run_identities

RUNS = {spec.run_id: spec for spec in expand_sweep(CFG)}
# The toy world's captions have their real images in the world; real caption sets point
# train.real_shards at img2dataset shards made outside the pipeline.
TOY_CAPTIONS = Path(CFG.captions.path).resolve() == (WORLD / "captions_raw.tsv").resolve()
# The toy world evaluated on: the world's own (rule toyworld) or another rendered one under
# eval.root, e.g. NADA's target domain (rule nada_target_world)
EVAL_INPUT = [str(Path(CFG.eval.root) / "real" / "test.npz")] if CFG.eval.dataset == "toyworld" else []


wildcard_constraints:
    seed=r"-?[0-9]+",


rule real_shards:
    input:
        captions=RESULTS / "captions" / "captions.parquet",
        train=rules.toyworld.output.train,
    output:
        index=Path(CFG.train.real_shards) / "index.parquet",
    params:
        config=section_hash(CFG, "captions", "generation.captions_per_shard"),
    priority: TRAINING_PATH_PRIORITY
    threads: 1
    log:
        LOGS / "real_shards.log",
    shell:
        synrep("real_shards")


def run_data(spec):
    """A run reads the real shards or its source's shard index."""
    if spec.data == "real":
        return [rules.real_shards.output.index] if TOY_CAPTIONS else []
    return [RESULTS / "shards" / spec.data / "index.parquet"]


# A run reruns when what its result depends on changes, not when the sweep around it does.
RUN_HASHES = {run_id: digest(identity) for run_id, identity in run_identities(CFG, list(RUNS.values())).items()}


# One job per batch of runs (sweep.runs_per_job, per seed; synrep.experiments.sweep.job_batches):
# the runs train one after another in one process, each into its own folder and MLflow run. A rule
# per batch, so that every run's metrics.json stays a target of its own. Cluster resources per run
# come from the launch section, as for submitit.
RUN_RESOURCES = dict(
    runtime=CFG.launch.timeout_min,
    mem_mb=CFG.launch.mem_gb * 1024,
    cpus_per_task=CFG.launch.cpus_per_task or CFG.threads,
    **({"gpu": CFG.launch.gpus_per_node} if CFG.launch.gpus_per_node else {}),
)
# The recipe's world size, launch.nodes x launch.tasks_per_node, as on submitit's path. A job of
# several tasks runs its training under `srun` from the rule's own shell, one task per rank
# (synrep.learning.distributed reads SLURM's environment). That way, not by handing the runs to
# `python -m synrep launch`, Snakemake keeps the job, its log, its retries and its outputs, and no
# job sits on its allocation waiting for another. The `mpi` resource is the SLURM plugin's sign for
# such jobs: it submits them with --nodes / --ntasks(-per-node) and runs their shell as it is
# instead of wrapping it in `srun -n1` (which makes one rank). Outside a SLURM job (`--cores`) the
# shell runs the step as one process, as before.
TRAIN_TASKS = CFG.launch.nodes * CFG.launch.tasks_per_node
TRAIN_LAUNCH = ""
if TRAIN_TASKS > 1:
    # the plugin turns `tasks` into --ntasks-per-gpu on a GPU job: tasks_per_node where there are
    # several a node, and the GPUs per node as gres (`gpu` would be the whole job's count)
    RUN_RESOURCES |= dict(
        mpi="srun",
        nodes=CFG.launch.nodes,
        **({"tasks_per_node": CFG.launch.tasks_per_node} if CFG.launch.tasks_per_node > 1
           else {"tasks": TRAIN_TASKS, "tasks_per_gpu": 0}),
    )
    if CFG.launch.gpus_per_node and CFG.launch.nodes > 1:
        del RUN_RESOURCES["gpu"]
        RUN_RESOURCES["gres"] = f"gpu:{CFG.launch.gpus_per_node}"
    # the job step's own SLURM_* variables are gone (the plugin clears them): every count explicit
    TRAIN_LAUNCH = (
        'if [ -n "${{SLURM_JOB_ID:-}}" ]; then LAUNCH="{resources.mpi} --kill-on-bad-exit=1 --nodes={resources.nodes} '
        f'--ntasks={TRAIN_TASKS} --ntasks-per-node={CFG.launch.tasks_per_node} '
        '--cpus-per-task={resources.cpus_per_task}"; else LAUNCH=""; fi; $LAUNCH '
    )
BATCHES = job_batches(CFG, list(RUNS.values()))
for order, (batch, specs) in enumerate(BATCHES.items()):

    rule:
        name:
            f"sweep_run_{batch}"
        input:
            data=sorted({str(p) for spec in specs for p in run_data(spec)}),
            eval=EVAL_INPUT,
        output:
            metrics=[RESULTS / "runs" / spec.run_id / "metrics.json" for spec in specs],
        params:
            runs=[RUN_HASHES[spec.run_id] for spec in specs],
            # the ids as a param: `shell:` is evaluated when the job runs, after this loop has ended
            ids=" ".join(spec.run_id for spec in specs),
        # in the sweep's order, first seed first: other stages read its runs (DreamBooth's encoder)
        priority: TRAINING_PATH_PRIORITY + len(BATCHES) - order
        threads: CFG.threads
        resources:
            **(RUN_RESOURCES | {"runtime": RUN_RESOURCES["runtime"] * len(specs)}),
        log:
            LOGS / "runs" / f"{batch}.log",
        shell:
            TRAIN_LAUNCH + synrep("sweep_run", "--run {params.ids}")


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
        # each source's quality, for the generator-family table (toy world: the judge reads its attributes)
        source_quality=lambda wildcards: (expand(RESULTS / "source_quality" / "{source}.json", source=SOURCES)
                                          if CFG.sample_quality.enabled else []),
    output:
        tables=RESULTS / "ablations" / "tables.md",
        metrics=RESULTS / "ablations" / "metrics.json",
        # the plots (accuracy_vs_w.png, lm_heatmap.png, ...) only where their axis has two values:
        # plots.json names each one drawn, or why it waits
        plots=RESULTS / "ablations" / "plots.json",
    params:
        config=section_hash(CFG, "train", "eval", "sweep"),
    threads: 1
    log:
        LOGS / "report.log",
    shell:
        synrep("report")
