"""environment.yml (conda, for clusters) must agree with pyproject.toml (the source of truth)."""

import tomllib

import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO


def _normalise(spec: str) -> tuple[str, str]:
    req = Requirement(spec)
    return req.name.lower().replace("_", "-"), str(req.specifier)


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert Requirement(project["requires-python"].join(["python", ""])).specifier.contains(conda_python.split("=")[1])
    ours = sorted(_normalise(s) for s in project["dependencies"])
    theirs = sorted(_normalise(s) for s in pip if s != "-e .")
    assert ours == theirs
