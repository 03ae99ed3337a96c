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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import REPO
from tests.slurm import FINAL_STATES, all_jobs, sbatch, wait_for_jobs

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

TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"


def reduced_config(root: Path, model: Path) -> dict:
    """What this test changes in the reduced pipeline (.test/config/config.yaml): its own paths and
    name, the tiny generator, 16 captions in 2 shards of the one source it builds."""
    return {
        "name": "slurmtest",
        "paths": {"data_dir": str(root / "data"), "results_dir": str(root / "results")},
        "captions": {"limit": 16},
        "generation": {"model": str(model), "captions_per_shard": 8},
    }


def run_snakemake(workdir: Path, configfile: Path, *args: str, timeout: float) -> str:
    results = yaml.safe_load(configfile.read_text())["paths"]["results_dir"]
    target = f"{results}/slurmtest/shards/w2/index.parquet"
    cmd = [*SNAKEMAKE, "--configfile", str(TEST_CONFIG), str(configfile), *args, target]
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
    # Copies of the workflow, so that each run's .snakemake/ (locks, SLURM logs) is the test's own.
    repos, configs = {}, {}
    for run in ("slurm", "local"):
        repos[run] = tmp_path / f"repo-{run}"
        for part in ("workflow", "config", "slurm"):
            shutil.copytree(REPO / part, repos[run] / part, ignore=shutil.ignore_patterns("__pycache__"))
        configs[run] = tmp_path / f"{run}.yaml"
        configs[run].write_text(yaml.safe_dump(reduced_config(tmp_path / run, tiny_toy_pipeline_dir)))
    repo = repos["slurm"]

    def timed(*args, **kwargs) -> tuple[str, float]:
        t0 = time.monotonic()
        return run_snakemake(*args, **kwargs), time.monotonic() - t0

    with ThreadPoolExecutor(1) as pool:
        # The same pipeline with the local executor, at the same time: the SLURM run spends most of
        # its time between the plugin's status checks.
        local = pool.submit(timed, repos["local"], configs["local"], "--cores", "2", timeout=300)
        # `snakemake --profile slurm`, with quicker status checks and the logs of successful jobs kept
        log, slurm_seconds = timed(
            repo, configs["slurm"], "--profile", "slurm",
            "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
            "--slurm-keep-successful-logs", "--retries", "0",
            timeout=300,
        )
        local_seconds = local.result()[1]
    # Snakemake names the profile, and the workflow's own profile (workflow/profiles/default) beside it
    assert "Using profiles slurm and workflow specific profile workflow/profiles/default" in log, log[:3000]

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

    # The local run gives the same outputs, byte for byte.
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
    print(f"snakemake --profile slurm: {slurm_seconds:.0f} s, --cores 2 beside it: {local_seconds:.0f} s")


# ------------------------------------------------------------------------------------------------
# MLflow: concurrent sweep runs, as SLURM jobs, logging to one SQLite store
# ------------------------------------------------------------------------------------------------

N_JOBS = 8

# One sweep run as a job runs it: synrep.experiments.sweep_run.run_one (the sweep's parent run,
# synrep.tracking.mlflow_run, params, metrics, metrics.json, the artifact), with training and
# evaluation replaced by numbers the test knows: a function of the run's seed.
MLFLOW_JOB = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    config_file, run_id, barrier, n_jobs = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    from synrep.config import load_config
    from synrep.evaluation import evaluate
    from synrep.experiments import sweep, sweep_run
    from synrep.learning import trainer

    cfg = load_config(config_file=config_file)
    seed = sweep.find(cfg, run_id).seed
    trainer.train = lambda rcfg, **kwargs: {"seconds": 10.0 + seed, "length": {"steps": 7}, "final_loss": 3.0 - seed / 10}
    evaluate.evaluate_run = lambda rcfg: {
        "linear_probe": {"shape": {"test": 0.5 + seed / 100, "val": 0.4 + seed / 100}},
        "few_shot": {"shape": {"mean": 0.3 + seed / 100, "ci95": 0.01}},
        "zero_shot": {},
    }

    # All jobs start logging at the same moment: the worst case for SQLite.
    (barrier / run_id).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < n_jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    print("running together:", len(list(barrier.iterdir())), flush=True)
    print("logged", sweep_run.run_one(cfg, run_id)["metrics"], flush=True)
    """
)


@pytest.mark.timeout(300)
def test_concurrent_sweep_runs_log_to_one_mlflow_store(slurm_cluster, tmp_path, make_cfg):
    import json

    import mlflow

    from synrep.config import save_resolved
    from synrep.experiments import ablation_tables, report, sweep, sweep_run
    from synrep.tracking import tracking_uri

    cfg = make_cfg("name=slurm_mlflow", "sweep.grids=[{method:[stablerep],data:[w2]}]",
                   f"sweep.seeds={list(range(N_JOBS))}")
    specs = sweep.expand(cfg)
    assert len(specs) == N_JOBS
    uri = tracking_uri(cfg)
    assert uri.startswith("sqlite:////"), uri  # absolute: jobs run in other working directories
    # As launch.submit does: the sweep's parent run before the fan-out (jobs race on creating it).
    parent = sweep_run.parent_run_id(cfg)
    config_file = save_resolved(cfg, tmp_path)

    script = tmp_path / "sweep_run_job.py"
    script.write_text(MLFLOW_JOB)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "OMP_NUM_THREADS": "1"}
    job_ids = [
        sbatch(
            # --oversubscribe: all 8 share the node's cores (the local partition allows it)
            "--oversubscribe", "--cpus-per-task=1", "--mem=1000", "--job-name=mlflow-race",
            f"--output={tmp_path}/job-{i}.log",
            "--wrap", f"{sys.executable} {script} {config_file} {spec.run_id} {barrier} {N_JOBS}",
            cwd=tmp_path, env=env,
        )
        for i, spec in enumerate(specs)
    ]
    states = wait_for_jobs(*job_ids, timeout=240)
    logs = {i: (tmp_path / f"job-{i}.log").read_text() for i in range(N_JOBS)}
    assert set(states.values()) == {"COMPLETED"}, (states, logs)
    for i in range(N_JOBS):
        assert f"running together: {N_JOBS}" in logs[i], logs[i]
        assert "logged" in logs[i], logs[i]

    # One parent: every job found the run made before the fan-out instead of making its own.
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.name)
    sweeps = client.search_runs([experiment.experiment_id], "tags.`synrep.step` = 'sweep'")
    assert [r.info.run_id for r in sweeps] == [parent]
    # Every job's run finished under it, with what the job logged: the report's view of MLflow ...
    runs = report.runs_from_mlflow(cfg)
    seeds = [spec.seed for spec in specs]
    assert runs["run"].to_list() == [spec.run_id for spec in specs]
    assert runs["probe_shape"].to_list() == pytest.approx([0.5 + s / 100 for s in seeds])
    assert runs["fewshot_shape"].to_list() == pytest.approx([0.3 + s / 100 for s in seeds])
    assert runs["train_seconds"].to_list() == pytest.approx([10.0 + s for s in seeds])
    # ... agrees with the metrics files the jobs wrote, and each child run logged its own config.
    files = ablation_tables.load_runs(report.run_paths(cfg)).sort("seed")
    assert files["probe_shape"].to_list() == runs["probe_shape"].to_list()
    children = client.search_runs([experiment.experiment_id], f"tags.`synrep.sweep_parent` = '{parent}'")
    assert len(children) == N_JOBS
    for child in children:
        record = json.loads((sweep.run_output_dir(cfg, sweep.find(cfg, child.info.run_name)) / "metrics.json").read_text())
        assert child.data.tags["synrep.step"] == "sweep_run" and child.info.status == "FINISHED"
        assert child.data.params["train.seed"] == child.data.params["seed"] == str(record["seed"])
        assert child.data.params["train.output_dir"] == str(sweep.run_output_dir(cfg, sweep.find(cfg, record["run"])))


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

    from synrep.config import load_config
    from synrep.experiments import launch, sweep, sweep_run
    from tests.test_launch import _metrics

    # seed 5: a run folder of its own (the local test trains seed 3 in the same learning_world).
    # timeout_min=30: submitit counts a signal before min(80%, timeout - 10 min) of the time limit as
    # a preemption, later as a timeout; with 10 minutes every signal would read as a timeout.
    overrides = learning_world("sweep.grids=[{method:[stablerep],data:[w4]}]", "sweep.seeds=[5]", "train.epochs=60",
                               "train.checkpoint_seconds=0", "launch.cluster=slurm", f"launch.folder={tmp_path}/submitit", "launch.timeout_min=30",
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
    from synrep.config import load_config
    from synrep.experiments import launch, sweep

    # 20,000 epochs (minutes): a run that cannot finish before the kill lands, however fast the machine
    overrides = learning_world("sweep.grids=[{method:[simclr],data:[w4]}]", "sweep.seeds=[6]", "train.epochs=20000",
                               "launch.cluster=slurm", f"launch.folder={tmp_path}/submitit", "launch.mem_gb=2")
    cfg = load_config(overrides)
    (spec,) = sweep.expand(cfg)
    shutil.rmtree(sweep.run_output_dir(cfg, spec), ignore_errors=True)
    specs, jobs = launch.submit(cfg)
    (job,) = jobs
    try:
        # RUNNING comes before the job's step exists, and a signal sent then may reach no process:
        # wait until training has started (it writes the run's identity first)
        started = sweep.run_output_dir(cfg, spec) / "identity.json"
        wait_for(lambda: scontrol_job(job.job_id).get("JobState") == "RUNNING" and started.exists(),
                 "the job's training start", 180, diagnose=lambda: scontrol_job(job.job_id))
        # SIGKILL to every step, batch script included, as the OOM killer would: nothing for submitit to catch
        # (a plain scancel sends SIGTERM, which submitit ignores, and a short run may then still finish)
        subprocess.run(["scancel", "--full", "--signal=KILL", job.job_id], check=True)

        t0 = time.monotonic()
        failed = launch.wait_for(specs, jobs, poll_s=1.0, vanished_grace_s=3.0)
        assert time.monotonic() - t0 < 150, scontrol_job(job.job_id)
        log = job.paths.stderr.read_text()[-2000:] if job.paths.stderr.exists() else "(no stderr)"
        assert len(failed) == 1 and spec.run_id in failed[0] and "left the SLURM queue" in failed[0], (failed, log)
    finally:  # a kill that missed must not leave a long job on the node for the next tests
        subprocess.run(["scancel", job.job_id], check=False)
    assert not job.paths.result_pickle.exists()


# ------------------------------------------------------------------------------------------------
# Training through `snakemake --profile slurm` with the recipe's world size (launch.nodes x
# launch.tasks_per_node): the sweep_run rule runs its ranks under srun
# ------------------------------------------------------------------------------------------------

def ranks_in_one_process(cfg, world: int):
    """What ``world`` DDP ranks of ``trainer.train`` compute, in one process: every rank's batches
    drawn as the rank draws them (its sampler shard, its per-pass seeds), then each step taken on
    the ranks' batches put together (synchronised BatchNorm and a mean over all anchors make that
    the DDP step). Returns the per-pass mean losses."""
    import numpy as np
    import torch

    from synrep.data import stream as data
    from synrep.learning import augment, trainer
    from synrep.learning.distributed import DistInfo
    from synrep.learning.step import forward_loss, optimizer_step

    t = cfg.train
    torch.set_num_threads(cfg.threads)
    length = trainer.training_length(cfg, data.count_captions(cfg, t.data), world)
    torch.manual_seed(t.seed)
    model = trainer.build_model(cfg).to(memory_format=torch.channels_last)
    optimizer = trainer.build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    dataset = trainer.training_data(cfg, length)
    batch_augment = augment.batch_augment(cfg)
    assert batch_augment is not None, "the toy's augmentation: crops and flips a batch at a time"
    model.train()
    step, losses = 0, []
    for pass_index in range(length.passes):
        steps_now = min(length.steps_per_pass, length.steps - step)
        per_rank = []
        for rank in range(world):
            trainer.seed_pass(t.seed, pass_index, rank)
            loader = trainer.data_loader(cfg, dataset, length, DistInfo(rank, world))
            trainer.set_pass(loader, pass_index)
            batches = []
            for batch in loader:
                if len(batches) == steps_now:
                    break
                images = batch["images"].contiguous(memory_format=torch.channels_last)
                batches.append((batch_augment(images), batch["captions"]))
            per_rank.append(batches)
        now = []
        for i in range(steps_now):
            images = torch.cat([per_rank[r][i][0] for r in range(world)])
            captions = [c for r in range(world) for c in per_rank[r][i][1]]
            group_ids = torch.arange(len(captions)).repeat_interleave(images.shape[0] // len(captions))
            trainer.set_lr(optimizer, trainer.lr_at(step, length))
            loss, _ = forward_loss(cfg, model, images, group_ids, captions, None)
            optimizer_step(loss, optimizer, scaler)
            step += 1
            now.append(float(loss.detach()))
        losses.append(float(np.mean(now)))
    return losses


@pytest.mark.timeout(600)
def test_snakemake_sweep_run_on_slurm_trains_with_the_recipes_world_size(slurm_cluster, learning_world, tmp_path):
    import json

    from omegaconf import OmegaConf

    from synrep.config import load_config
    from synrep.experiments import sweep

    assert slurm_cluster.cpus >= 2, f"the node has {slurm_cluster.cpus} CPUs, the job needs 2 tasks x 1 CPU"
    # seed 9: a run folder of its own in the shared learning world; 2 tasks on the one node
    overrides = learning_world("sweep.grids=[{method:[stablerep],data:[w4]}]", "sweep.seeds=[9]",
                               "sweep.baselines=false", "launch.nodes=1", "launch.tasks_per_node=2",
                               "launch.cpus_per_task=1", "launch.mem_gb=2", "launch.timeout_min=10")
    cfg = load_config(overrides)
    (spec,) = sweep.expand(cfg)
    out = sweep.run_output_dir(cfg, spec)
    shutil.rmtree(out, ignore_errors=True)
    # the overrides as Snakemake's --configfile (a mapping over config/config.yaml, as --config)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(OmegaConf.to_container(OmegaConf.from_dotlist(overrides))))

    repo = tmp_path / "repo"
    for part in ("workflow", "config", "slurm"):
        shutil.copytree(REPO / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    target = out / "metrics.json"
    cmd = [*SNAKEMAKE, "--configfile", str(config_file), "--profile", "slurm",
           "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
           "--slurm-keep-successful-logs", "--retries", "0", str(target)]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=480)
    seconds = time.monotonic() - t0
    log = done.stdout + done.stderr
    job_logs = "\n".join(p.read_text() for p in (repo / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert done.returncode == 0, log[-4000:] + job_logs[-4000:]

    # one SLURM job of 2 tasks (2 CPUs), the only job Snakemake submitted
    submitted = slurm_submissions(log)
    rules = {rule for rule, _ in jobs_by_rule(log).values()}
    assert rules == {f"sweep_run_{next(iter(sweep.job_batches(cfg, [spec])))}"}, log[-3000:]
    (slurm_id,) = submitted.values()
    assert all_jobs()[slurm_id]["cpus"] == 2, all_jobs()[slurm_id]
    # both ranks joined: the run trained on a world of 2, with the length that world gives
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2, summary
    assert json.loads(target.read_text())["steps"] == summary["length"]["steps"]

    # DDP = one process on the ranks' batches put together
    rcfg = sweep.run_config(cfg, spec)
    losses = ranks_in_one_process(rcfg, world=2)
    # (the same sums in another order: equal to float32 rounding carried through the steps, up to
    # 2e-5 relative after two steps when other tests ran first in this process; a rank's own
    # half-batch as the step, or another world's batches, is off by several percent)
    got = [h["loss"] for h in summary["history"]]
    assert got == pytest.approx(losses, rel=1e-4), (got, losses)
    print(f"snakemake --profile slurm, sweep_run on 2 tasks: {seconds:.0f} s; losses {got} vs one process {losses}")
