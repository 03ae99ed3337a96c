"""``python -m synrep launch``: the sweep's runs as a submitit job array.

The runs come from ``synrep.experiments.sweep.expand``, the function the Snakefile uses. Each array task is a
``SweepRunJob``: it trains and evaluates one run through ``sweep_run.run_one``, the same code as the
Snakemake rule. ``checkpoint()`` makes a preempted or timed-out task requeue itself; the trainer
then resumes from its last checkpoint. The sweep's MLflow parent run is created here, before the
jobs fan out.

The data must exist first (``snakemake --cores 2 --until index_source real_shards baselines``, or
the same through ``--profile slurm``).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from synrep.experiments import sweep, sweep_run
from synrep.settings import to_yaml


class SweepRunJob:
    """A picklable, checkpointable callable for one run of the sweep."""

    def __init__(self, cfg_yaml: str, run_id: str):
        self.cfg_yaml, self.run_id = cfg_yaml, run_id

    def __call__(self) -> str:
        # The resolved config validated at submission: read back as it is, with no config/ folder
        # needed on the node (experiments sit below synrep.config, which loads config files)
        cfg = OmegaConf.create(self.cfg_yaml)
        outputs = sweep_run.run_one(cfg, self.run_id)
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
    specs = sweep.expand(cfg)
    if run_ids is not None:
        specs = [sweep.find(cfg, r) for r in run_ids]
    if cfg.launch.only_missing:
        specs = [s for s in specs if not (sweep.run_output_dir(cfg, s) / "metrics.json").exists()]
    sweep_run.parent_run_id(cfg)  # before the fan-out: parallel jobs race on creating it in SQLite
    executor = make_executor(cfg)
    cfg_yaml = to_yaml(cfg)
    jobs = []
    if specs:
        with executor.batch():
            for spec in specs:
                jobs.append(executor.submit(SweepRunJob(cfg_yaml, spec.run_id)))
    return specs, jobs


# SLURM job states after which a job runs no more (squeue -j shows them for MinJobAge seconds)
ENDED = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                   "DEADLINE", "REVOKED", "SPECIAL_EXIT"})


def active_slurm_jobs(job_ids: list[str]) -> set[str] | None:
    """The ids among ``job_ids`` that SLURM still runs or will run (pending, running, requeued,
    ...), from one ``squeue`` call; None when squeue fails for another reason (controller busy)."""
    import subprocess

    done = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        # one id that slurmctld has forgotten is an error; a list of them is an empty answer
        return set() if "invalid job id" in done.stderr.lower() else None
    return {job_id for job_id, state in (line.split() for line in done.stdout.splitlines()) if state not in ENDED}


def wait_for(specs: list, jobs: list, poll_s: float = 10.0, vanished_grace_s: float = 120.0) -> list[str]:
    """Wait for every job; return one line per failed run.

    submitit reads SLURM job states from ``sacct``. Without accounting (the local cluster, some
    small clusters) every state reads UNKNOWN, and a job that died without writing its result
    (``scancel``, a node failure, an out-of-memory kill) would make ``job.result()`` wait forever.
    So a SLURM job that has been gone from ``squeue`` for ``vanished_grace_s`` seconds with no
    result file counts as failed.
    """
    import time

    import submitit

    failed, pending = [], dict(enumerate(jobs))
    gone_since: dict[int, float] = {}
    while pending:
        for i, job in list(pending.items()):
            if job.done():
                try:
                    job.result()
                except Exception as err:  # report every failure, not only the first
                    failed.append(f"{specs[i].run_id} (job {job.job_id}): "
                                  f"{str(err).splitlines()[-1] if str(err) else err!r}")
                del pending[i]
        on_slurm = {i: job for i, job in pending.items() if isinstance(job, submitit.SlurmJob)}
        active = active_slurm_jobs([job.job_id for job in on_slurm.values()]) if on_slurm else None
        for i, job in on_slurm.items():
            if active is None or job.job_id in active:
                gone_since.pop(i, None)
                continue
            since = gone_since.setdefault(i, time.time())
            if time.time() - since > vanished_grace_s and not job.paths.result_pickle.exists():
                failed.append(f"{specs[i].run_id} (job {job.job_id}): left the SLURM queue without a result "
                              f"(cancelled or killed?); see {job.paths.stderr}")
                del pending[i]
        if pending:
            time.sleep(poll_s)
    return failed


def run(cfg: DictConfig) -> dict[str, Path]:
    specs, jobs = submit(cfg)
    print(f"submitted {len(jobs)} runs to {jobs[0].__class__.__name__ if jobs else 'nothing'} "
          f"(logs in {cfg.launch.folder})", flush=True)
    for spec, job in zip(specs, jobs):
        print(f"  {job.job_id}  {spec.run_id}", flush=True)
    if not cfg.launch.wait:
        return {}
    failed = wait_for(specs, jobs)
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed:\n  " + "\n  ".join(failed))
    from synrep.experiments import report

    return report.run(cfg)
