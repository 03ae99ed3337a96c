"""The real local SLURM for tests: the `slurm_cluster` fixture and sbatch / squeue helpers.

Not a test module. Tests that need SLURM import the fixture (``from tests.slurm import
slurm_cluster``) and carry the ``slurm`` marker. The fixture starts the one-node cluster of
``scripts/slurm_local.sh`` (munged, slurmctld, slurmd) for the session and stops it afterwards if
it was not running before.

Environment:
  SYNREP_SLURM_INSTALL=1   run ``scripts/slurm_local.sh install`` (apt-get) first
  SYNREP_REQUIRE_SLURM=1   fail, instead of skipping, when SLURM is missing or cannot start (CI)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol")
# States after which a job never runs again.
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
     "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
)


@dataclass(frozen=True)
class SlurmCluster:
    node: str
    cpus: int
    started_here: bool
    start_seconds: float


def _which(exe: str) -> str | None:
    # the daemons live in /usr/sbin, which a non-login PATH may lack
    return shutil.which(exe) or shutil.which(exe, path="/usr/sbin:/sbin")


def _unavailable(reason: str):
    if os.environ.get("SYNREP_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason} (SYNREP_REQUIRE_SLURM=1 turns this skip into a failure)", pytrace=False)
    pytest.skip(reason)


def _script(command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout, check=False
    )


def installed() -> bool:
    """The daemons and clients are installed, and this process may start them (root)."""
    return all(_which(exe) for exe in DAEMONS + CLIENTS) and os.geteuid() == 0


def start_controller() -> bool:
    """Where the local SLURM is installed and down, start it; returns whether it was started here.
    Snakemake's SLURM plugin runs `scontrol show config` whenever snakemake starts, and where SLURM is
    installed but its controller is down that call waits 9 s for it: every snakemake a test runs
    would pay that. The conftest starts it once per test session (in xdist's controller process,
    not in each worker) and stops it at the end if it started it."""
    if not installed() or _script("status", timeout=60).returncode == 0:
        return False
    return _script("start", timeout=300).returncode == 0  # a failure is the slurm tests' to report


def stop_controller() -> None:
    _script("stop", timeout=120)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node SLURM cluster on this machine (skips when SLURM is not installed)."""
    if os.environ.get("SYNREP_SLURM_INSTALL") == "1":
        done = _script("install", timeout=900)
        if done.returncode:
            pytest.fail(f"scripts/slurm_local.sh install failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    missing = [exe for exe in DAEMONS + CLIENTS if _which(exe) is None]
    if missing:
        _unavailable(
            f"SLURM is not installed ({', '.join(missing)} not found): run `scripts/slurm_local.sh install` "
            "(Debian/Ubuntu packages slurm-wlm and munge) or set SYNREP_SLURM_INSTALL=1"
        )
    if os.geteuid() != 0:
        _unavailable("the local SLURM cluster needs root (scripts/slurm_local.sh writes /etc/slurm and starts daemons)")
    was_running = _script("status", timeout=60).returncode == 0
    t0 = time.monotonic()
    done = _script("start", timeout=300)
    if done.returncode:
        pytest.fail(f"scripts/slurm_local.sh start failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    start_seconds = time.monotonic() - t0
    node = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    cpus = int(subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%c"], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    yield SlurmCluster(node=node, cpus=cpus, started_here=not was_running, start_seconds=start_seconds)
    if not was_running:
        _script("stop", timeout=120)


def sbatch(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Submit with ``sbatch --parsable ARGS``; returns the job id."""
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd, env=env)
    assert done.returncode == 0, f"sbatch {' '.join(args)} failed: {done.stderr}"
    return done.stdout.strip().split(";")[0]


def job_states(*job_ids: str) -> dict[str, str]:
    """State of each job (array tasks as ``<id>_<task>``), from squeue: without accounting,
    finished jobs stay visible for MinJobAge (600 s on the local cluster)."""
    if not job_ids:
        return {}
    done = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T", "--jobs", ",".join(job_ids)],
        capture_output=True, text=True,
    )
    if done.returncode:
        return {}
    states = {}
    for line in done.stdout.splitlines():
        if "|" in line:
            job, state = line.strip().split("|", 1)
            states[job] = state
    return states


def all_jobs() -> dict[str, dict[str, str]]:
    """Every job slurmctld still knows: id -> name, state, cpus (allocated or requested), comment."""
    done = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%C|%k"], capture_output=True, text=True,
        check=True,
    )
    jobs = {}
    for line in done.stdout.splitlines():
        job, name, state, cpus, comment = line.strip().split("|", 4)
        jobs[job] = {"name": name, "state": state, "cpus": int(cpus), "comment": comment}
    return jobs


def wait_for_jobs(*job_ids: str, timeout: float = 120.0, poll: float = 0.5) -> dict[str, str]:
    """Wait until every job has reached a final state; returns their states."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = job_states(*job_ids)
        if len(states) >= len(job_ids) and all(s in FINAL_STATES for s in states.values()):
            return states
        time.sleep(poll)
    subprocess.run(["scancel", *job_ids], check=False)
    raise AssertionError(f"SLURM jobs {job_ids} not finished after {timeout} s: {states}")
