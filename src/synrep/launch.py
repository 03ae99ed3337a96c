"""``python -m synrep launch``: the sweep's runs as a submitit job array.

The runs come from ``synrep.sweep.expand``, the function the Snakefile uses. Each array task is a
``SweepRunJob``: it trains and evaluates one run through ``sweep.run_one``, the same code as the
Snakemake rule. ``checkpoint()`` makes a preempted or timed-out task requeue itself; the trainer
then resumes from its last checkpoint. The sweep's MLflow parent run is created here, before the
jobs fan out.

The data must exist first (``snakemake --cores 2 index_shards real_shards baselines``, or the
same through ``--profile slurm``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synrep import sweep


class SweepRunJob:
    """A picklable, checkpointable callable for one run of the sweep."""

    def __init__(self, cfg_yaml: str, run_id: str):
        self.cfg_yaml, self.run_id = cfg_yaml, run_id

    def __call__(self) -> str:
        from synrep.config import load_config

        cfg = load_config(base=OmegaConf.to_container(OmegaConf.create(self.cfg_yaml)))
        outputs = sweep.run_one(cfg, self.run_id)
        return str(outputs.get("metrics", ""))

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on preemption or timeout (SIGUSR1): requeue the same run; the trainer
        resumes from ``checkpoints/last.pt``."""
        import submitit

        return submitit.helpers.DelayedSubmission(SweepRunJob(self.cfg_yaml, self.run_id))


def make_executor(cfg: DictConfig, folder: str | Path | None = None):
    import submitit

    lc = cfg.launch
    executor = submitit.AutoExecutor(folder=str(folder or lc.folder), cluster=lc.cluster)
    params = dict(
        name=f"synrep-{cfg.name}", timeout_min=lc.timeout_min, nodes=lc.nodes, tasks_per_node=lc.tasks_per_node,
        cpus_per_task=lc.cpus_per_task or cfg.threads, gpus_per_node=lc.gpus_per_node, mem_gb=lc.mem_gb,
        slurm_array_parallelism=lc.array_parallelism,
    )
    if lc.partition:
        params["slurm_partition"] = lc.partition
    if lc.account:
        params["slurm_account"] = lc.account
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k != "nodes"}
    executor.update_parameters(**params)
    return executor


def submit(cfg: DictConfig, run_ids: list[str] | None = None):
    """Submit the runs (default: every run of the sweep without metrics) as one job array."""
    from synrep.config import to_yaml

    specs = sweep.expand(cfg)
    if run_ids is not None:
        specs = [sweep.find(cfg, r) for r in run_ids]
    if cfg.launch.only_missing:
        specs = [s for s in specs if not (sweep.run_output_dir(cfg, s) / "metrics.json").exists()]
    sweep.parent_run_id(cfg)  # before the fan-out: parallel jobs race on creating it in SQLite
    executor = make_executor(cfg)
    cfg_yaml = to_yaml(cfg)
    jobs = []
    if specs:
        with executor.batch():
            for spec in specs:
                jobs.append(executor.submit(SweepRunJob(cfg_yaml, spec.run_id)))
    return specs, jobs


def run(cfg: DictConfig) -> dict[str, Path]:
    specs, jobs = submit(cfg)
    print(f"submitted {len(jobs)} runs to {jobs[0].__class__.__name__ if jobs else 'nothing'} "
          f"(logs in {cfg.launch.folder})", flush=True)
    for spec, job in zip(specs, jobs):
        print(f"  {job.job_id}  {spec.run_id}", flush=True)
    if not cfg.launch.wait:
        return {}
    failed = []
    for spec, job in zip(specs, jobs):
        try:
            job.result()
        except Exception as err:  # report every failure, not only the first
            failed.append(f"{spec.run_id} (job {job.job_id}): {str(err).splitlines()[-1] if str(err) else err!r}")
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed:\n  " + "\n  ".join(failed))
    from synrep import report

    return report.run(cfg)
