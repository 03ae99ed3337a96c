"""submitit launch path (cluster="local"): the sweep's runs as jobs, requeue after preemption, and
no second submission of a finished run."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from synrep.config import load_config
from synrep.experiments import launch, sweep, sweep_run


def _metrics(path):
    record = json.loads(path.read_text())
    return {k: v for k, v in record.items() if k.startswith(("probe_", "fewshot_", "zeroshot_")) or k == "final_loss"}


@pytest.mark.slow
def test_preempted_job_requeues_and_matches_an_uninterrupted_run(learning_world, tmp_path):
    overrides = learning_world("sweep.grids=[{method:[stablerep],data:[w4]}]", "sweep.seeds=[3]", "train.epochs=60",
                               "train.checkpoint_seconds=0", "launch.cluster=local", f"launch.folder={tmp_path}/submitit",
                               # submitit counts a signal in the last 10 minutes of the time limit as a timeout:
                               # 30 minutes makes this one a preemption
                               "launch.timeout_min=30")
    cfg = load_config(overrides)
    (spec,) = sweep.expand(cfg)
    out = sweep.run_output_dir(cfg, spec)
    shutil.rmtree(out, ignore_errors=True)

    # reference: the same run, uninterrupted, in this process
    sweep_run.run_one(cfg, spec.run_id)
    expected = _metrics(out / "metrics.json")
    expected_history = json.loads((out / "train.json").read_text())["history"]
    shutil.rmtree(out)

    specs, jobs = launch.submit(cfg)
    assert [s.run_id for s in specs] == [spec.run_id]
    job = jobs[0]
    deadline = time.time() + 240
    while not (out / "checkpoints" / "last.pt").exists():
        assert time.time() < deadline, job.stderr()
        assert not job.done(), job.stderr()
        time.sleep(0.2)
    # preemption: submitit's signal to the task (the local controller itself forwards only
    # SIGTERM and its own timeout signal); checkpoint() requeues the run
    import psutil
    from submitit.local.local import LocalJobEnvironment

    (task,) = [p for p in psutil.Process(job._process.pid).children(recursive=True) if "python" in p.name()]
    task.send_signal(LocalJobEnvironment._usr_sig())
    job.result()
    log = job.stderr() or ""
    assert "Requeued job" in log + (job.stdout() or ""), log[-3000:]
    assert "preempted" in log + (job.stdout() or ""), log[-3000:]
    assert "resuming" in log + (job.stdout() or ""), log[-3000:]
    assert _metrics(out / "metrics.json") == expected
    assert json.loads((out / "train.json").read_text())["history"] == expected_history
    # launch.only_missing (the default): a run with its metrics is not submitted again
    assert launch.submit(cfg) == ([], [])
