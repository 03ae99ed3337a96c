"""Shared fixtures: configs that write under tmp_path, a small toy world, tiny generators."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.slurm import slurm_cluster  # noqa: F401 (the real local SLURM, a fixture for every module)

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# A toy world and a generator small enough for tests.
SMALL_WORLD = [
    "toyworld.n_train=400",
    "toyworld.n_val=100",
    "toyworld.n_test=200",
    "toyworld.n_domain_train=40",
    "toyworld.n_domain_test=20",
]
TINY_GENERATOR = [
    "toy_generator.model.block_out_channels=[8,16]",
    "toy_generator.model.norm_num_groups=4",
    "toy_generator.model.attention_head_dim=4",
    "toy_generator.model.text_hidden_size=16",
    "toy_generator.model.text_layers=1",
    "toy_generator.steps=4",
    "toy_generator.batch_size=8",
    "toy_generator.log_every=2",
]


def tmp_overrides(tmp: Path, *extra: str) -> list[str]:
    return [f"paths.data_dir={tmp}/data", f"paths.results_dir={tmp}/results", "threads=1", *SMALL_WORLD, *extra]


def assert_regenerated(regenerated, stored) -> None:
    """An image regenerated from its record against the stored one: equal up to two uint8 levels in
    under 1 % of the values. Batched sampling and one image at a time sum in other orders on some
    thread counts and memory layouts (the shipped generator at 1 thread: 23 of 24,576 values one
    level apart; the tiny test pipeline after some other tests in the same process: 2 of 768 values
    two levels apart); any real change of noise, caption, scale or settings moves most values by far
    more."""
    import numpy as np

    diff = np.abs(np.asarray(regenerated).astype(int) - np.asarray(stored).astype(int))
    assert diff.shape and diff.max() <= 2 and (diff > 0).mean() < 0.01, (int(diff.max()), float((diff > 0).mean()))


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


SLURM_STARTED_HERE = pytest.StashKey[bool]()


def _in_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    """The local SLURM's controller up for the whole session where SLURM is installed (tests/slurm.py),
    started once by the process that runs the session, not by each xdist worker."""
    if not _in_xdist_worker(session.config):
        from tests.slurm import start_controller

        session.config.stash[SLURM_STARTED_HERE] = start_controller()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.stash.get(SLURM_STARTED_HERE, False):
        from tests.slurm import stop_controller

        stop_controller()


# The longest groups go first, so that the other worker fills in beside them rather than waiting at the end.
FIRST_GROUPS = ("reduced_run", "slurm")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """xdist's groups (`--dist loadgroup`, two workers by default): the tests that read the one reduced
    Snakemake run share a worker, and so its session fixture runs once; the SLURM tests share another
    (one cluster, whose node's CPUs they size jobs by); every other module runs whole in one worker,
    so its module fixtures are built once."""
    groups = {}
    for item in items:
        if "reduced_run" in getattr(item, "fixturenames", ()):
            group = "reduced_run"
        elif item.get_closest_marker("slurm"):
            group = "slurm"
        else:
            group = item.nodeid.split("::")[0]
        groups[item.nodeid] = group
        item.add_marker(pytest.mark.xdist_group(group))
    if _in_xdist_worker(config):
        rank = {group: i for i, group in enumerate(FIRST_GROUPS)}
        items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist 3.8 groups tests (`--dist loadgroup`) by a suffix it writes to Node._nodeid, which
    pytest 9.2 no longer reads: there every group's session fixture would run in both workers,
    silently. Fail at the start instead."""
    from packaging.version import Version

    if (not _in_xdist_worker(config) and config.getvalue("dist") == "loadgroup"
            and Version(pytest.__version__) >= Version("9.2")):
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks pytest-xdist's test groups: install "
                                "'pytest<9.2' (pyproject.toml's test extra), or run in one process with -n 0")


@pytest.fixture
def make_cfg(tmp_path):
    from synrep.config import load_config

    def make(*extra: str, base: Path | None = None):
        return load_config(tmp_overrides(base or tmp_path, *extra))

    return make


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A rendered small toy world; returns the tmp root its config writes under."""
    from synrep.config import load_config
    from synrep.data import toyworld

    root = tmp_path_factory.mktemp("world")
    toyworld.run(load_config(tmp_overrides(root)))
    return root


@pytest.fixture(scope="session")
def tiny_toy_pipeline_dir(tmp_path_factory, small_world):
    """A randomly initialised tiny toy generator saved with save_pretrained: seeded, so that a test
    sees the same weights whichever tests ran before it."""
    import torch

    from synrep.config import load_config
    from synrep.recipes.toy_generator import build_pipeline

    out = tmp_path_factory.mktemp("tiny_toy") / "pipeline"
    cfg = load_config(tmp_overrides(small_world, *TINY_GENERATOR))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        build_pipeline(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_sd_pipeline_dir(tmp_path_factory):
    """A tiny randomly initialised Stable-Diffusion-architecture pipeline (UNet, VAE, CLIP text
    encoder, CLIP BPE tokenizer), saved with save_pretrained, as a stand-in for real SD weights."""
    from synrep.diffusion.random_sd import random_sd_pipeline

    pipe = random_sd_pipeline("tiny")
    out = tmp_path_factory.mktemp("tiny_sd") / "pipeline"
    pipe.save_pretrained(out)
    return out


TINY_CLIP = ["toy_clip.model.vision_width=32", "toy_clip.model.vision_layers=1", "toy_clip.model.text_layers=1",
             "toy_clip.model.text_width=32", "toy_clip.model.embed_dim=16"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, small_world):
    """A randomly initialised tiny toy CLIP saved as an open_clip local-dir folder."""
    import torch

    from synrep.config import load_config
    from synrep.learning import toy_clip

    out = tmp_path_factory.mktemp("tiny_clip") / "clip"
    out.mkdir()
    torch.manual_seed(0)
    cfg = load_config(tmp_overrides(small_world, *TINY_CLIP))
    toy_clip.save(toy_clip.build_model(cfg), cfg, out)
    return out


@pytest.fixture(scope="session")
def tiny_noised_clip_dir(tmp_path_factory, tiny_clip_dir, tiny_toy_pipeline_dir):
    """The tiny CLIP as GLIDE's noised CLIP, its timestep embedding random (non-zero), on the tiny
    generator's noise schedule."""
    import json

    import torch

    from synrep.diffusion import noised_clip
    from synrep.diffusion.clip_guidance import load_clip

    clip, _ = load_clip(tiny_clip_dir)
    torch.manual_seed(0)
    model = noised_clip.NoisedClip(clip)
    for p in model.timestep.parameters():
        torch.nn.init.normal_(p, std=0.5)
    out = tmp_path_factory.mktemp("noised") / "clip"
    out.mkdir()
    config = json.loads((tiny_clip_dir / "open_clip_config.json").read_text())
    schedule = json.loads((tiny_toy_pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    noised_clip.save(model, out, config, schedule, "0" * 64)
    return out


# A training config small enough for unit tests: 8-wide toy CNN, a few steps, quick evaluation.
TINY_TRAINING = [
    "train.encoder_kwargs.width=8",
    "train.head_hidden=32",
    "train.head_out=16",
    "train.batch_images=32",
    "train.epochs=4",
    "train.text.width=16",
    "train.text.layers=1",
    "train.text.embed_dim=16",
    "train.text.context_length=16",
    "eval.probe_epochs=3",
    "eval.fewshot_episodes=40",
    "sources.w4.guidance.w=4",
    "generation.images_per_caption=4",
    "generation.captions_per_shard=16",
    "generation.steps=2",
    "generation.batch_size=64",
    "captions.limit=48",
]


@pytest.fixture(scope="session")
def learning_world(tmp_path_factory, small_world, tiny_toy_pipeline_dir):
    """Captions, synthetic shards (tiny random generator, w in {2, 4}, l = 4) and real shards;
    returns a function giving config overrides that read them."""
    from synrep.config import load_config
    from synrep.data import captions, real_shards
    from synrep.generation import generate, index

    results = tmp_path_factory.mktemp("learning") / "results"

    def overrides(*extra: str) -> list[str]:
        return [f"paths.data_dir={small_world}/data", f"paths.results_dir={results}", "threads=1", *SMALL_WORLD,
                f"generation.model={tiny_toy_pipeline_dir}", *TINY_TRAINING, *extra]

    cfg = load_config(overrides())
    captions.run(cfg)
    for source in ("w2", "w4"):
        generate.run(cfg, source=source)
        index.run(cfg, source=source)
    real_shards.run(cfg)
    return overrides


REDUCED_CONFIG = REPO / ".test" / "config" / "config.yaml"


def reduced_snakemake(root: Path, *args: str, config: str | tuple[str, ...] = "",
                      timeout: float = 900):
    """`snakemake --cores 2` on the reduced config (.test/config/config.yaml), writing under ``root``."""
    import subprocess
    import sys

    extra = [config] if isinstance(config, str) and config else list(config or [])
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(REDUCED_CONFIG), "--config",
           f"paths={{results_dir: {root}/results, data_dir: {root}/data}}", *extra, *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def reduced_run(tmp_path_factory) -> Path:
    """The reduced pipeline run once to the end, shared by the end-to-end tests that only read it;
    returns its root (results/ and data/ below)."""
    root = tmp_path_factory.mktemp("reduced")
    done = reduced_snakemake(root)
    assert done.returncode == 0, done.stderr[-4000:]
    return root


@pytest.fixture(scope="session")
def reduced_mlflow_server(reduced_run):
    """`mlflow server` on the reduced run's store, started once for the tests that only read it:
    yields its address and the experiment's id."""
    import json
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = reduced_run / "results" / "mlflow.db"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    name = yaml_name(REDUCED_CONFIG)
    try:
        deadline = time.time() + 120
        while True:
            try:
                experiment = json.loads(urllib.request.urlopen(
                    f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}", timeout=5).read())
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(1)
        yield base, experiment["experiment"]["experiment_id"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def yaml_name(config_file: Path) -> str:
    import yaml

    return yaml.safe_load(config_file.read_text())["name"]
