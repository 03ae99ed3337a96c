"""A training recipe joins the config, the command line and the workflow from its declaration alone.

A throw-away recipe is added to a copy of the package, as a user adds one: a settings module that
declares its section and a module with its ``run(cfg)``; nothing else is edited. Its section loads
and is checked, its step runs, and Snakemake plans its rule from the declaration."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from synrep.config import Config, load_config
from synrep.training_recipes import RECIPES
from tests.conftest import REPO

SETTINGS = '''
from dataclasses import dataclass

from synrep.settings import setting
from synrep.training_recipes import recipe


@recipe("train_smoother", section="toy_smoother", run="synrep.recipes.smoother:run",
        help="average the toy world's training photos (a throw-away recipe)",
        description="A throw-away recipe", reads=("base",))
@dataclass
class ToySmootherConfig:
    output_dir: str = setting("${paths.results_dir}/${name}/toy_smoother", "Where it is saved")
    base: str = setting("models/toy_generator", "A folder it reads")
    images: int = setting(8, "Photos averaged", gt=0)
'''

RUN = '''
import json
from pathlib import Path

import numpy as np

from synrep.fileio import atomic_dir


def run(cfg):
    photos = np.load(Path(cfg.paths.data_dir) / "toyworld" / "real" / "train.npz")["images"][: cfg.toy_smoother.images]
    with atomic_dir(cfg.toy_smoother.output_dir) as folder:
        (folder / "mean.json").write_text(json.dumps(float(photos.mean())))
    return {"model": cfg.toy_smoother.output_dir}
'''


@pytest.fixture(scope="module")
def package_with_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    shutil.copytree(REPO / "src" / "synrep", root / "src" / "synrep", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "src" / "synrep" / "recipes" / "smoother_settings.py").write_text(textwrap.dedent(SETTINGS))
    (root / "src" / "synrep" / "recipes" / "smoother.py").write_text(textwrap.dedent(RUN))
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "SYNREP_CONFIG_DIR": str(REPO / "config")}
    return root, env


def synrep(env, *args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "synrep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_shipped_recipes_are_declared_once_with_a_section_each():
    import dataclasses

    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    assert {r.step for r in RECIPES.values()} >= {"train_generator", "train_inpaint", "train_unclip", "train_clip",
                                                   "train_noised_clip", "train_nada", "train_dreambooth"}
    for r in RECIPES.values():
        assert sections[r.section] is r.settings
        assert "output_dir" in {f.name for f in dataclasses.fields(r.settings)}
        for key in r.reads:  # a declared input is a key of its section
            assert key in {f.name for f in dataclasses.fields(r.settings)}, (r.step, key)


def test_the_config_loads_without_torch():
    """The declarations are read at every config load (Snakemake's parse, each step): they stay light."""
    done = subprocess.run([sys.executable, "-c", "import sys, synrep.config; "
                           "print(sorted({'torch', 'diffusers', 'timm', 'open_clip'} & set(sys.modules)))"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_new_recipe_file_is_a_section_a_step_and_a_rule(package_with_recipe, tmp_path):
    root, env = package_with_recipe
    listed = synrep(env, "--help")
    assert re.search(r"^    train_smoother +average the toy world", listed.stdout, re.M)

    shown = synrep(env, "config", "toy_smoother.images=3")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^toy_smoother:\n  output_dir: .*\n  base: models/toy_generator\n  images: 3$", shown.stdout, re.M)

    bad = synrep(env, "train_smoother", "toy_smoother.images=0")
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "synrep: error: config key 'toy_smoother.images': must be > 0, got 0")

    # its step runs the declared function on the loaded config
    data = tmp_path / "data"
    small = ["toyworld.n_train=64", "toyworld.n_val=8", "toyworld.n_test=8", "toyworld.n_domain_train=8",
             "toyworld.n_domain_test=8"]
    world = synrep(env, "toyworld", f"paths.data_dir={data}", *small)
    assert world.returncode == 0, world.stderr[-2000:]
    done = synrep(env, "train_smoother", f"paths.data_dir={data}", f"paths.results_dir={tmp_path}/results")
    assert done.returncode == 0, done.stderr[-2000:]
    import numpy as np

    photos = np.load(data / "toyworld" / "real" / "train.npz")["images"][:8]
    saved = json.loads((tmp_path / "results" / "toy" / "toy_smoother" / "mean.json").read_text())
    assert saved == pytest.approx(float(photos.mean()))

    # Snakemake plans its rule: the declared inputs, its output folder, its section's hash
    target = f"{tmp_path}/plan/toy/toy_smoother"
    planned = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config",
         f"paths={{data_dir: {tmp_path}/plan_data, results_dir: {tmp_path}/plan}}", "--", target],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-2000:]
    rule = planned.stdout[planned.stdout.index("rule train_smoother:"):]
    assert re.search(r"input: \S+/plan_data/toyworld/real/train.npz, models/toy_generator", rule)
    assert f"output: {target}" in rule
    assert "toy_smoother" not in load_config([])  # the copy, not this checkout, has the recipe
