"""Against the real local SLURM (scripts/slurm_local.sh): sbatch, `snakemake --profile slurm`, MLflow
from concurrent jobs, DDP over `srun -n 2`, and submitit's requeue after preemption. Skipped when
SLURM is not installed, unless SYNREP_REQUIRE_SLURM=1."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import REPO
from tests.slurm import FINAL_STATES, all_jobs, sbatch, slurm_cluster, wait_for_jobs  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def test_sbatch_runs_a_job(slurm_cluster, tmp_path):
    t0 = time.monotonic()
    job = sbatch(f"--output={tmp_path}/out-%j.txt", "--wrap", 'echo "hello from job $SLURM_JOB_ID on $(hostname)"',
                 cwd=tmp_path)
    assert wait_for_jobs(job, timeout=60) == {job: "COMPLETED"}
    out = (tmp_path / f"out-{job}.txt").read_text()
    assert out.strip() == f"hello from job {job} on {slurm_cluster.node}"
    assert time.monotonic() - t0 < 60


# ------------------------------------------------------------------------------------------------
# snakemake --profile slurm on a reduced pipeline, against a local run of the same config
# ------------------------------------------------------------------------------------------------

def reduced_config(root: Path, model: Path) -> dict:
    """The toy pipeline, cut down to seconds of work: 16 captions, 2 shards at one w."""
    return {
        "name": "slurmtest",
        "threads": 1,
        "paths": {"data_dir": str(root / "data"), "results_dir": str(root / "results")},
        "toyworld": {"n_train": 200, "n_val": 50, "n_test": 50},
        "captions": {"limit": 16},
        "generation": {
            "model": str(model),
            "images_per_caption": 4,
            "captions_per_shard": 8,
            "steps": 4,
            "batch_size": 16,
            "grid_captions": 2,
        },
        # the workflow expands the sweep when it parses; keep it to the one w generated here
        "sweep": {"grids": [{"method": ["stablerep"], "data": ["w2"]}]},
    }


def run_snakemake(workdir: Path, configfile: Path, *args: str, timeout: float) -> str:
    results = yaml.safe_load(configfile.read_text())["paths"]["results_dir"]
    target = f"{results}/slurmtest/shards/w2/index.parquet"
    cmd = [*SNAKEMAKE, "--configfile", str(configfile), *args, target]
    done = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-6000:]}"
    return log


def jobs_by_rule(log: str) -> dict[str, tuple[str, bool]]:
    """Snakemake job id -> (rule, ran locally), from the job headers Snakemake prints."""
    jobs = {}
    for m in re.finditer(r"^(local)?(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", log, re.M):
        jobid = re.search(r"^    jobid: (\d+)$", m.group(3), re.M)
        if jobid:
            jobs[jobid.group(1)] = (m.group(2), bool(m.group(1)))
    return jobs


def slurm_submissions(log: str) -> dict[str, str]:
    """Snakemake job id -> SLURM job id (array tasks as <id>_<task>), from the plugin's messages."""
    submitted = {}
    for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log):
        submitted[m.group(1)] = m.group(2)
    for m in re.finditer(r"Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)\. "
                         r"The individual task IDs are (\d+)-(\d+)", log):
        ids = m.group(1).split(",")
        first = int(m.group(3))
        for k, jobid in enumerate(ids):
            submitted[jobid] = f"{m.group(2)}_{first + k}"
    return submitted


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(420)
def test_snakemake_profile_slurm_matches_local_run(slurm_cluster, tmp_path, tiny_toy_pipeline_dir):
    # A copy of the workflow, so that its .snakemake/ (locks, SLURM logs) is the test's own.
    repo = tmp_path / "repo"
    for part in ("workflow", "config", "slurm"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    configs = {}
    for run in ("slurm", "local"):
        configs[run] = tmp_path / f"{run}.yaml"
        configs[run].write_text(yaml.safe_dump(reduced_config(tmp_path / run, tiny_toy_pipeline_dir)))

    # `snakemake --profile slurm`, with quicker status checks and the logs of successful jobs kept
    t0 = time.monotonic()
    log = run_snakemake(
        repo, configs["slurm"], "--profile", "slurm",
        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
        "--slurm-keep-successful-logs", "--retries", "0",
        timeout=300,
    )
    slurm_seconds = time.monotonic() - t0
    assert "Using profile slurm" in log

    jobs = jobs_by_rule(log)
    submitted = slurm_submissions(log)
    rules = {rule for rule, _ in jobs.values()}
    assert {"toyworld", "captions", "generate_shard", "index_source"} <= rules, log[-4000:]
    # Every job that Snakemake did not run as a localrule went to SLURM ...
    remote = {jobid: rule for jobid, (rule, local) in jobs.items() if not local}
    assert set(remote) == set(submitted), (remote, submitted)
    assert "generate_shard" in remote.values()
    # ... the 2 shards as one array job ...
    shard_ids = [submitted[j] for j, rule in remote.items() if rule == "generate_shard"]
    assert len(shard_ids) == 2 and all("_" in s for s in shard_ids)
    assert len({s.split("_")[0] for s in shard_ids}) == 1
    # ... and SLURM ran each to completion, under the run's job name, writing its log where the
    # plugin puts it.
    known = all_jobs()
    run_name = re.search(r"SLURM run ID: (\S+)", log).group(1)
    logs = repo / ".snakemake" / "slurm_logs"
    for jobid, slurm_id in submitted.items():
        assert known[slurm_id]["state"] == "COMPLETED", known[slurm_id]
        assert known[slurm_id]["name"] == run_name
        rule_logs = list((logs / f"rule_{remote[jobid]}").rglob(f"{slurm_id}.log"))
        assert rule_logs, f"no SLURM log for {remote[jobid]} ({slurm_id}) under {logs}"
    # A torch job asks for as many CPUs as it runs torch threads (config `threads`).
    assert all(known[s]["cpus"] == 1 for s in shard_ids), [known[s] for s in shard_ids]

    # The same pipeline with the local executor gives the same outputs, byte for byte.
    t0 = time.monotonic()
    run_snakemake(repo, configs["local"], "--cores", "2", timeout=300)
    local_seconds = time.monotonic() - t0
    out = {run: tmp_path / run / "results" / "slurmtest" for run in ("slurm", "local")}
    world = {run: tmp_path / run / "data" / "toyworld" for run in ("slurm", "local")}
    assert sha256(world["slurm"] / "captions_raw.tsv") == sha256(world["local"] / "captions_raw.tsv")
    captions = {run: pl.read_parquet(out[run] / "captions" / "captions.parquet") for run in out}
    assert captions["slurm"].equals(captions["local"])
    index = {run: pl.read_parquet(out[run] / "shards" / "w2" / "index.parquet") for run in out}
    assert index["slurm"].height == 2
    assert index["slurm"].drop("path").equals(index["local"].drop("path"))
    for run in out:
        assert [Path(p).relative_to(out[run]).as_posix() for p in index[run]["path"]] == [
            "shards/w2/shard-000000.tar", "shards/w2/shard-000001.tar"
        ]
        assert [sha256(Path(p)) for p in index[run]["path"]] == index[run]["sha256"].to_list()
    print(f"snakemake --profile slurm: {slurm_seconds:.0f} s, --cores 2: {local_seconds:.0f} s")


# ------------------------------------------------------------------------------------------------
# MLflow: concurrent SLURM jobs logging to one SQLite store
# ------------------------------------------------------------------------------------------------

N_JOBS = 8

MLFLOW_JOB = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    index, uri, experiment_id, barrier = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    import mlflow

    # All jobs start logging at the same moment: the worst case for SQLite.
    (barrier / str(index)).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < int(sys.argv[5]) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("running together:", len(list(barrier.iterdir())), flush=True)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"job-{index}"):
        mlflow.set_tag("slurm_job_id", os.environ["SLURM_JOB_ID"])
        mlflow.log_param("index", index)
        mlflow.log_metric("value", index * 1.5)
        for step in range(5):
            mlflow.log_metric("curve", index + step / 10, step=step)
    print("logged", flush=True)
    """
)


@pytest.mark.timeout(300)
def test_concurrent_slurm_jobs_log_to_one_mlflow_store(slurm_cluster, tmp_path, make_cfg):
    import mlflow

    from synrep.tracking import ensure_experiment, tracking_uri

    cfg = make_cfg("name=slurm_mlflow")
    uri = tracking_uri(cfg)
    assert uri.startswith("sqlite:////"), uri  # absolute: jobs run in other working directories
    # Schema and experiment first: parallel jobs race on creating them.
    experiment_id = ensure_experiment(cfg)

    script = tmp_path / "log_run.py"
    script.write_text(MLFLOW_JOB)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    job_ids = [
        sbatch(
            # --oversubscribe: all 8 share the node's cores (the local partition allows it)
            "--oversubscribe", "--cpus-per-task=1", "--mem=400", "--job-name=mlflow-race",
            f"--output={tmp_path}/job-{i}.log",
            "--wrap", f"{sys.executable} {script} {i} {uri} {experiment_id} {barrier} {N_JOBS}",
            cwd=tmp_path, env=env,
        )
        for i in range(N_JOBS)
    ]
    states = wait_for_jobs(*job_ids, timeout=240)
    logs = {i: (tmp_path / f"job-{i}.log").read_text() for i in range(N_JOBS)}
    assert set(states.values()) == {"COMPLETED"}, (states, logs)
    for i in range(N_JOBS):
        assert f"running together: {N_JOBS}" in logs[i], logs[i]
        assert "logged" in logs[i], logs[i]

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == [f"job-{i}" for i in range(N_JOBS)]
    for run in runs:
        i = int(run.data.params["index"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["slurm_job_id"] == job_ids[i]
        assert run.data.metrics["value"] == i * 1.5
        history = client.get_metric_history(run.info.run_id, "curve")
        assert sorted((m.step, m.value) for m in history) == [(s, i + s / 10) for s in range(5)]


# ------------------------------------------------------------------------------------------------
# DDP over `srun -n 2`: synrep.learning.distributed reads SLURM's environment
# ------------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["stablerep", "stablerep_plus"])
def test_srun_two_task_ddp_matches_one_process(slurm_cluster, make_cfg, tmp_path, method):
    """tests/test_train.py::test_ddp_under_torchrun_matches_one_process, with `srun` as the launcher."""
    import torch

    from tests.test_train import DDP_OVERRIDES, _fixed_batch, assert_matches_reference

    assert slurm_cluster.cpus >= 2, f"the node has {slurm_cluster.cpus} CPUs, the job needs 2 tasks x 1 CPU"
    overrides = [f"train.method={method}", *DDP_OVERRIDES]
    cfg = make_cfg(*overrides)
    batch = _fixed_batch(cfg, rows=8, per_row=3)
    torch.save(batch, tmp_path / "batch.pt")
    args = [str(REPO / "tests" / "ddp_step.py"), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt"),
            f"paths.results_dir={tmp_path}", *overrides]
    # No MASTER_ADDR / MASTER_PORT here: init_distributed derives them from the job's node list and id.
    script = tmp_path / "ddp.sbatch"
    script.write_text(textwrap.dedent(
        f"""\
        #!/bin/bash
        #SBATCH --job-name=ddp-srun
        #SBATCH --ntasks=2
        #SBATCH --cpus-per-task=1
        #SBATCH --mem=2G
        #SBATCH --output={tmp_path}/job-%j.log
        export OMP_NUM_THREADS=1
        srun --kill-on-bad-exit=1 {sys.executable} {' '.join(args)}
        """
    ))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    t0 = time.monotonic()
    job = sbatch(str(script), cwd=REPO, env=env)
    states = wait_for_jobs(job, timeout=240)
    log = (tmp_path / f"job-{job}.log").read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    assert all_jobs()[job]["cpus"] == 2
    result = torch.load(tmp_path / "out.pt")
    assert result["world_size"] == 2 and result["source"] == "slurm", result
    assert_matches_reference(result, cfg, batch, world=2)
    print(f"srun -n 2 DDP step: {time.monotonic() - t0:.0f} s")


# ------------------------------------------------------------------------------------------------
# submitit on SLURM: a preempted sweep run requeues itself and resumes from its checkpoint
# ------------------------------------------------------------------------------------------------

def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as key -> value (empty once slurmctld has forgotten the job)."""
    done = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True)
    if done.returncode:
        return {}
    return dict(field.split("=", 1) for field in done.stdout.split() if "=" in field)


def wait_for(predicate, what: str, timeout: float, poll: float = 0.2, diagnose=lambda: ""):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s\n{diagnose()}"
        time.sleep(poll)
    return value


@pytest.mark.timeout(600)
def test_submitit_on_slurm_requeues_and_matches_uninterrupted(slurm_cluster, learning_world, tmp_path):
    """tests/test_launch.py::test_preempted_job_requeues_and_matches_an_uninterrupted_run, with
    launch.cluster=slurm: sbatch through submitit, preemption as SLURM delivers it (USR2 to the job's
    step), `scontrol requeue` from SweepRunJob.checkpoint(), and a second attempt that resumes."""
    import json

    import submitit
    from submitit.slurm.slurm import SlurmJobEnvironment

    from synrep.experiments import launch
    from synrep.experiments import sweep, sweep_run
    from synrep.config import load_config
    from tests.test_launch import _metrics

    # seed 5: a run folder of its own (the local test trains seed 3 in the same learning_world).
    # timeout_min=30: submitit counts a signal before min(80%, timeout - 10 min) of the time limit as
    # a preemption, later as a timeout; with 10 minutes every signal would read as a timeout.
    overrides = learning_world("sweep.grids=[{method:[stablerep],data:[w4]}]", "sweep.seeds=[5]", "train.epochs=60",
                               "launch.cluster=slurm", f"launch.folder={tmp_path}/submitit", "launch.timeout_min=30",
                               "launch.mem_gb=2")
    cfg = load_config(overrides)
    (spec,) = sweep.expand(cfg)
    out = sweep.run_output_dir(cfg, spec)
    shutil.rmtree(out, ignore_errors=True)

    # reference: the same run, uninterrupted, in this process
    t0 = time.monotonic()
    sweep_run.run_one(cfg, spec.run_id)
    reference_seconds = time.monotonic() - t0
    expected = _metrics(out / "metrics.json")
    expected_history = json.loads((out / "train.json").read_text())["history"]
    assert len(expected_history) >= 3, expected_history  # passes enough to preempt one in the middle
    shutil.rmtree(out)

    t0 = time.monotonic()
    specs, jobs = launch.submit(cfg)
    assert [s.run_id for s in specs] == [spec.run_id]
    (job,) = jobs
    assert isinstance(job, submitit.SlurmJob), type(job)
    job_id = job.job_id
    # submitit's sbatch script asks SLURM for the same signal ahead of the time limit
    (script,) = (tmp_path / "submitit").glob(f"{job_id.split('_')[0]}_submission.sh")
    assert f"#SBATCH --signal={SlurmJobEnvironment.USR_SIG}@" in script.read_text()

    def logs() -> str:
        return (job.stdout() or "") + (job.stderr() or "")

    def state() -> str:
        return scontrol_job(job_id).get("JobState", "")

    # Preempt once the first pass is checkpointed: SLURM signals the job's step (srun), where
    # submitit's handler checkpoints the run and runs `scontrol requeue`.
    ckpt = out / "checkpoints" / "last.pt"
    wait_for(lambda: ckpt.exists() or state() in FINAL_STATES, "a checkpoint", 180, diagnose=logs)
    assert state() == "RUNNING", (state(), logs()[-3000:])
    subprocess.run(["scancel", f"--signal={SlurmJobEnvironment.USR_SIG}", job_id], check=True)

    # Requeued: back to PENDING with Restarts=1. SLURM holds a requeued job until its credentials
    # expire (Reason=BeginTime, about 2 min: cred_expire 120 s + 1); as root, let it start at once.
    info = wait_for(lambda: (i := scontrol_job(job_id)) and int(i.get("Restarts", 0)) >= 1
                    and i["JobState"] == "PENDING" and i, "a requeue", 60, diagnose=logs)
    assert info["Restarts"] == "1", info
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)

    # Without accounting, sacct fails and submitit's watcher reports UNKNOWN: job.done() and
    # job.result() only see the result pickle, and would wait forever if the job died without one.
    # So wait on SLURM's own state as well, and call result() only once the pickle is there.
    wait_for(lambda: job.paths.result_pickle.exists() or state() in FINAL_STATES, "the second attempt", 240,
             poll=0.5, diagnose=logs)
    assert job.paths.result_pickle.exists(), (state(), logs()[-3000:])
    assert job.result() == str(out / "metrics.json")
    wait_for(lambda: state() in FINAL_STATES, "the job's end", 60)
    assert state() == "COMPLETED" and scontrol_job(job_id)["Restarts"] == "1"
    slurm_seconds = time.monotonic() - t0

    log = logs()  # --open-mode=append: both attempts' output
    assert f"Caught signal SIG{SlurmJobEnvironment.USR_SIG} on {slurm_cluster.node}: this job is preempted" in log, \
        log[-3000:]
    assert f"Requeued job {job_id}" in log, log[-3000:]
    assert f"resuming {out} from pass" in log, log[-3000:]
    assert _metrics(out / "metrics.json") == expected
    assert json.loads((out / "train.json").read_text())["history"] == expected_history
    print(f"uninterrupted in-process run: {reference_seconds:.0f} s; on SLURM with a requeue: {slurm_seconds:.0f} s")


@pytest.mark.timeout(300)
def test_launch_reports_a_killed_job_instead_of_waiting_forever(slurm_cluster, learning_world, tmp_path):
    """Without accounting submitit never learns that a job died without its result; launch.wait_for
    notices the job has left the queue and reports the run as failed, naming its log."""
    from synrep.experiments import launch
    from synrep.experiments import sweep, sweep_run
    from synrep.config import load_config

    # 600 epochs: a run that cannot finish before the kill lands
    overrides = learning_world("sweep.grids=[{method:[simclr],data:[w4]}]", "sweep.seeds=[6]", "train.epochs=600",
                               "launch.cluster=slurm", f"launch.folder={tmp_path}/submitit", "launch.mem_gb=2")
    cfg = load_config(overrides)
    (spec,) = sweep.expand(cfg)
    shutil.rmtree(sweep.run_output_dir(cfg, spec), ignore_errors=True)
    specs, jobs = launch.submit(cfg)
    (job,) = jobs
    wait_for(lambda: scontrol_job(job.job_id).get("JobState") == "RUNNING", "the job's start", 120)
    # SIGKILL to every step, batch script included, as the OOM killer would: nothing for submitit to catch
    # (a plain scancel sends SIGTERM, which submitit ignores, and a short run may then still finish)
    subprocess.run(["scancel", "--full", "--signal=KILL", job.job_id], check=True)

    t0 = time.monotonic()
    failed = launch.wait_for(specs, jobs, poll_s=1.0, vanished_grace_s=3.0)
    assert time.monotonic() - t0 < 150, scontrol_job(job.job_id)
    assert len(failed) == 1 and spec.run_id in failed[0] and "left the SLURM queue" in failed[0], failed
    assert not job.paths.result_pickle.exists()
