"""DVC: dvc.yaml calls Snakemake, data/ round-trips through a remote, metrics show, and the
pull helper that keeps Snakemake from rerunning everything after a checkout.

Every DVC repository here is a fresh git repository under tmp_path, with the project's own
.dvc/config, .dvcignore and dvc.yaml copied in; nothing touches the project's .dvc/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    # DVC keeps a per-repository index and state database here (default /var/tmp/dvc)
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "dvc-site")
    # what an activated environment gives: dvc and snakemake of this interpreter on PATH
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SNAKEMAKE_ARGS", None)
    env.pop("FORCE_TOUCH", None)
    return env


def _run(args, cwd, env, check=True, timeout=300):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args, cwd, env, check=True):
    return _run([sys.executable, "-m", "dvc", *args], cwd, env, check)


def git(*args, cwd, env):
    return _run(["git", "-c", "commit.gpgsign=false", *args], cwd, env)


def _init_repo(root: Path, env: dict[str, str]) -> Path:
    """A git + DVC repository with the project's DVC settings (as after `dvc init`)."""
    root.mkdir(parents=True)
    git("init", "-q", cwd=root, env=env)
    git("config", "user.email", "test@example.com", cwd=root, env=env)
    git("config", "user.name", "synrep test", cwd=root, env=env)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    dvc("init", "-q", cwd=root, env=env)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    return root


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _default_run_dir() -> Path:
    from synrep.config import load_config, run_dir

    return run_dir(load_config([]))


# --- dvc.yaml ---------------------------------------------------------------------------------


def test_dvc_yaml_stage_calls_snakemake_and_tracks_the_project():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert list(spec["stages"]) == ["pipeline"]
    stage = spec["stages"]["pipeline"]

    # the stage runs Snakemake's default target and declares no DAG of its own
    cmd = shlex.split(stage["cmd"])
    assert cmd[0] == "snakemake" and "--cores" in cmd
    assert not {"-s", "--snakefile", "--forceall", "-F", "--touch"} & set(cmd)
    assert {"config", "src", "workflow", "data"} <= set(stage["deps"])

    def entries(kind):
        return {path: opts or {} for item in stage.get(kind, []) for path, opts in item.items()}

    outs, plots, metrics = entries("outs"), entries("plots"), entries("metrics")
    run_dir = _default_run_dir()
    assert set(metrics) == {(run_dir / "ablations" / "metrics.json").as_posix()}
    assert all(opts.get("cache") is False for opts in metrics.values())

    produced = {**outs, **plots, **metrics}
    # outputs persist: DVC must not delete Snakemake's results before running it
    assert all(opts.get("persist") is True for opts in produced.values()), produced
    # shards are hashed but never copied into the cache
    assert outs[(run_dir / "shards").as_posix()].get("cache") is False
    for path in produced:
        assert Path(path).is_relative_to(run_dir), path
    # DVC refuses overlapping outputs; check it here too so the message names the culprit
    paths = sorted(produced)
    for a in paths:
        for b in paths:
            assert a == b or not Path(b).is_relative_to(a), (a, b)


def test_dvc_metrics_show_reads_the_ablation_metrics(tmp_path):
    env = _env(tmp_path)
    root = _init_repo(tmp_path / "repo", env)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    for d in ("config", "src", "workflow", "models", "data"):
        (root / d).mkdir()

    # DVC validates dvc.yaml against its schema when it lists the stages
    assert "pipeline" in dvc("stage", "list", cwd=root, env=env).stdout

    metrics_path = _default_run_dir() / "ablations" / "metrics.json"
    numbers = {"stablerep": {"linear_top1": 0.8125, "knn_top1": 0.6875}, "baseline_random": {"linear_top1": 0.25}}
    (root / metrics_path).parent.mkdir(parents=True)
    (root / metrics_path).write_text(json.dumps(numbers))

    shown = json.loads(dvc("metrics", "show", "--json", cwd=root, env=env).stdout)
    (workspace,) = shown.values()
    assert workspace["data"][metrics_path.as_posix()]["data"] == numbers
    table = dvc("metrics", "show", cwd=root, env=env).stdout
    assert metrics_path.as_posix() in table
    assert all(v in table for v in ("0.8125", "0.6875", "0.25")), table

    # the project's settings: no analytics, a cache that copies (see README, DVC)
    settings = dvc("config", "--project", "--list", cwd=root, env=env).stdout.split()
    assert "core.analytics=false" in settings
    (cache_type,) = [s for s in settings if s.startswith("cache.type=")]
    assert cache_type.split("=", 1)[1].split(",")[0] in ("reflink", "copy")
    # byte code and half-written files are not part of the deps
    ignored = dvc("check-ignore", "src/synrep/__pycache__/x.pyc", "results/x.tmp", cwd=root, env=env, check=False)
    assert ignored.stdout.split() == ["src/synrep/__pycache__/x.pyc", "results/x.tmp"]


# --- data.dvc round trip ----------------------------------------------------------------------


def test_data_push_remove_pull_round_trip(tmp_path, small_world):
    env = _env(tmp_path)
    root = _init_repo(tmp_path / "repo", env)
    shutil.copytree(small_world / "data", root / "data")
    (root / "data" / "eval" / "nested").mkdir(parents=True)
    (root / "data" / "eval" / "nested" / "bytes.bin").write_bytes(bytes(range(256)) * 3)
    (root / "data" / "eval" / "empty.txt").write_bytes(b"")
    before = _digests(root / "data")
    assert len(before) >= 6 and "toyworld/real/train.npz" in before

    dvc("add", "data", cwd=root, env=env)
    tracked = yaml.safe_load((root / "data.dvc").read_text())
    assert tracked["outs"][0]["path"] == "data" and tracked["outs"][0]["nfiles"] == len(before)
    # data/ stays out of git, data.dvc goes in
    assert _run(["git", "check-ignore", "-q", "data"], root, env, check=False).returncode == 0
    assert _run(["git", "check-ignore", "-q", "data.dvc"], root, env, check=False).returncode == 1
    git("add", "data.dvc", ".gitignore", ".dvc/config", ".dvcignore", cwd=root, env=env)
    git("commit", "-q", "-m", "track data", cwd=root, env=env)

    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "local", str(remote), cwd=root, env=env)
    dvc("push", cwd=root, env=env)
    assert any(p.is_file() for p in remote.rglob("*"))

    shutil.rmtree(root / "data")
    shutil.rmtree(root / ".dvc" / "cache")
    dvc("pull", cwd=root, env=env)

    assert _digests(root / "data") == before
    assert dvc("status", "--quiet", cwd=root, env=env, check=False).returncode == 0
    # the project's cache type gives plain files, not links into the cache
    train = root / "data" / "toyworld" / "real" / "train.npz"
    assert not train.is_symlink() and train.stat().st_nlink == 1


# --- the mtime pitfall and scripts/dvc_pull.sh -------------------------------------------------

TARGET = "results/toy/captions/captions.parquet"


def _dry_run(root, env):
    proc = _run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", TARGET], root, env)
    return proc.stdout + proc.stderr


def _age(paths, seconds):
    """Make outputs older than the inputs just pulled, as a checkout in the wrong order leaves them."""
    stamp = time.time() - seconds
    for p in paths:
        os.utime(p, (stamp, stamp))


@pytest.mark.slow
def test_pull_helper_restamps_outputs_so_snakemake_has_nothing_to_do(tmp_path):
    """The real workflow on a tiny toy world: make data/ with Snakemake, track it, reproduce a
    one-target stage, push; then in a fresh clone, pull, and check that Snakemake wants to rerun
    (the pitfall) until scripts/dvc_pull.sh has re-stamped the outputs, and that the helper
    leaves the outputs alone when the inputs really changed."""
    base_env = _env(tmp_path)
    root = _init_repo(tmp_path / "repo", base_env)
    clone = tmp_path / "clone"
    # synrep reads config/ of the checkout it is installed from unless told otherwise
    env = {**base_env, "SYNREP_CONFIG_DIR": str(root / "config")}
    clone_env = {**base_env, "SYNREP_CONFIG_DIR": str(clone / "config")}
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "workflow", root / "workflow", ignore=ignore)
    shutil.copytree(REPO / "config", root / "config", ignore=ignore)
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "dvc_pull.sh", root / "scripts" / "dvc_pull.sh")
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text()) or {}
    cfg.update(name="toy", threads=1, toyworld={"n_train": 100, "n_val": 20, "n_test": 20})
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))

    _run([sys.executable, "-m", "snakemake", "--cores", "1", "data/toyworld/attributes.json"], root, env)
    # the tiny world of this repo's config, not the default one
    assert len((root / "data" / "toyworld" / "captions_raw.tsv").read_text().splitlines()) < 150
    dvc("add", "data", cwd=root, env=env)
    # the project's stage, cut down to one cheap target
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["pipeline"]
    stage["cmd"] = f"{stage['cmd']} {TARGET}".replace("--cores all", "--cores 1")
    stage["deps"] = ["config", "workflow", "data"]
    stage["outs"] = [{"results/toy/captions": {"persist": True}}]
    for key in ("plots", "metrics", "params"):
        stage.pop(key, None)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"pipeline": stage}}))
    dvc("repro", cwd=root, env=env)
    dvc("remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=root, env=env)
    git("add", "-A", cwd=root, env=env)
    git("commit", "-q", "-m", "pipeline", cwd=root, env=env)
    dvc("push", cwd=root, env=env)

    git("clone", "-q", str(root), str(clone), cwd=tmp_path, env=env)
    env = clone_env
    dvc("pull", cwd=clone, env=env)
    outputs = sorted((clone / "results" / "toy" / "captions").iterdir())
    _age(outputs, 120)
    pending = _dry_run(clone, env)  # the pitfall: pulled inputs look newer than the results
    assert "updated input files" in pending.lower() and "Nothing to be done" not in pending

    helper = {**env, "SNAKEMAKE_ARGS": TARGET}
    out = _run(["scripts/dvc_pull.sh"], clone, helper).stdout
    assert "re-stamping" in out
    assert "Nothing to be done" in _dry_run(clone, env)
    assert (clone / TARGET).read_bytes() == (root / TARGET).read_bytes()

    # a real change (a config key the captions step reads): the helper must not hide it
    _age(outputs, 120)
    cfg["captions"] = {**(cfg.get("captions") or {}), "limit": 50}
    (clone / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    stamp = (clone / TARGET).stat().st_mtime
    out = _run(["scripts/dvc_pull.sh", "--checkout"], clone, helper).stdout
    assert "not touching" in out
    assert (clone / TARGET).stat().st_mtime == stamp
    assert "Nothing to be done" not in _dry_run(clone, env)
