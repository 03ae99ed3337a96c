"""DVC: dvc.yaml calls Snakemake, data.dvc is the toy world synrep renders, `dvc metrics show` reads
the report's metrics, and the pull helper keeps Snakemake from rerunning everything after a pull.

Every DVC repository here is a fresh git repository under tmp_path, with the project's own
.dvc/config, .dvcignore and dvc.yaml copied in; nothing touches the project's .dvc/.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
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


def _report_metrics(cfg) -> tuple[Path, dict[str, dict[str, float]]]:
    """The sweep's report, from run and baseline metrics files in the format sweep_run.run_one and
    evaluate.baselines_run write, each accuracy a known function of the run; returns the report's
    metrics.json and what it must hold: per group of seeds (and per baseline) the mean of each
    headline metric, computed here from the values written."""
    from synrep.config import run_dir
    from synrep.evaluation.evaluate import baselines_path
    from synrep.experiments import report, sweep, sweep_run
    from synrep.fileio import write_json

    values: dict[str, dict[str, list[float]]] = {}
    for i, spec in enumerate(sweep.expand(cfg)):
        row = {"probe_shape": 0.31 + 0.0123457 * i + 0.00731 * spec.seed, "probe_size": 0.9 - 0.00377 * i,
               "fewshot_shape": 0.2 + 0.0041 * i - 0.0013 * spec.seed}
        if spec.method in ("clip", "stablerep_plus"):  # zero-shot: methods with a text tower only
            row["zeroshot_shape"] = 0.25 + 0.0037 * i + 0.001 * spec.seed
        for metric, value in row.items():
            values.setdefault(spec.group, {}).setdefault(metric, []).append(value)
        # the rest of a run's record, which the metrics must leave out
        extra = {"probe_shape_val": 0.5, "probe_size_val": 0.5, "fewshot_shape_ci95": 0.01, "train_seconds": 12.0,
                 "steps": 10, "final_loss": 3.0, "details": {"linear_probe": {}}}
        write_json(sweep.run_output_dir(cfg, spec) / "metrics.json",
                   {"run": spec.run_id, "group": spec.group, **asdict(spec), **sweep_run.run_params(cfg, spec),
                    **row, **extra})
    baselines = []
    for name, base in (("random_init", 0.26), ("raw_pixels", 0.21)):
        for seed in cfg.sweep.seeds:
            row = {"probe_shape": base + 0.0071 * seed, "probe_size": base + 0.5, "fewshot_shape": base - 0.05}
            for metric, value in row.items():
                values.setdefault(f"baseline-{name}", {}).setdefault(metric, []).append(value)
            baselines.append({"baseline": name, "seed": seed, "encoder": cfg.train.encoder, **row,
                              "probe_shape_val": 0.3, "fewshot_shape_ci95": 0.01, "details": {}})
    paths = []
    for seed in cfg.sweep.seeds:  # one file per seed, as baselines_run writes
        paths.append(write_json(baselines_path(cfg, seed), {"baselines": [b for b in baselines if b["seed"] == seed]}))

    out = report.build(cfg, report.run_paths(cfg), paths, run_dir(cfg, "ablations"))
    return out["metrics"], {group: {m: sum(v) / len(v) for m, v in by_metric.items()}
                            for group, by_metric in values.items()}


def test_dvc_metrics_show_reads_the_reports_metrics(tmp_path):
    """`dvc metrics show` with the project's dvc.yaml, on the metrics.json that synrep's report writes
    for the default config's sweep: every group's mean of every headline metric, where dvc.yaml
    declares it."""
    from synrep.config import load_config

    env = _env(tmp_path)
    root = _init_repo(tmp_path / "repo", env)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    for d in ("config", "src", "workflow", "models", "data"):
        (root / d).mkdir()

    cfg = load_config([f"paths.results_dir={root / 'results'}"])
    written, expected = _report_metrics(cfg)
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["pipeline"]
    (metrics_path,) = [path for item in stage["metrics"] for path in item]
    assert written == root / metrics_path

    # The table a user reads (DVC parses dvc.yaml, schema checked, to find the file): one column
    # <group>.<metric> per number, the mean over seeds rounded to 4 decimals. Nothing else: not a
    # run's other fields (val accuracy, CI, timings), and zero-shot only where a method has it.
    lines = dvc("metrics", "show", cwd=root, env=env).stdout.splitlines()
    header, row = (line.split() for line in lines[:2])
    assert header[0] == "Path" and row[0] == metrics_path, lines
    cells = dict(zip(header[1:], map(float, row[1:]), strict=True))
    assert cells == {f"{g}.{m}": pytest.approx(v, abs=5.1e-5) for g, by_metric in expected.items() for m, v in by_metric.items()}

    # the project's settings: no analytics, a cache that copies (docs/cluster.md, "Versioning data with DVC")
    settings = dvc("config", "--project", "--list", cwd=root, env=env).stdout.split()
    assert "core.analytics=false" in settings
    (cache_type,) = [s for s in settings if s.startswith("cache.type=")]
    assert cache_type.split("=", 1)[1].split(",")[0] in ("reflink", "copy")
    # byte code and half-written files are not part of the deps
    ignored = dvc("check-ignore", "src/synrep/__pycache__/x.pyc", "results/x.tmp", cwd=root, env=env, check=False)
    assert ignored.stdout.split() == ["src/synrep/__pycache__/x.pyc", "results/x.tmp"]


# --- data.dvc ---------------------------------------------------------------------------------


def test_data_dvc_is_the_toy_world_the_default_config_renders(tmp_path):
    """data.dvc records data/ as `python -m synrep toyworld` writes it with the embedded default
    config (the toy world is byte-reproducible from its config): a user who renders the world
    instead of pulling it finds data/ up to date, and a change to the world's code or config that
    was not followed by `dvc add data` fails here."""
    from synrep.config import load_config
    from synrep.data import toyworld

    env = _env(tmp_path)
    root = _init_repo(tmp_path / "repo", env)
    toyworld.run(load_config([f"paths.data_dir={root / 'data'}"]))
    shutil.copy(REPO / "data.dvc", root / "data.dvc")

    # the workspace matches data.dvc; only the cache lacks it, as in a fresh clone before `dvc pull`
    status = json.loads(dvc("status", "--json", cwd=root, env=env).stdout)
    assert status == {"data.dvc": [{"changed outs": {"data": "not in cache"}}]}, (
        f"data.dvc does not match the toy world this code renders ({status}): "
        "run `python -m synrep toyworld && dvc add data` and commit data.dvc")
    # data/ stays out of git, data.dvc goes in
    assert _run(["git", "check-ignore", "-q", "data"], root, env, check=False).returncode == 0
    assert _run(["git", "check-ignore", "-q", "data.dvc"], root, env, check=False).returncode == 1


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
