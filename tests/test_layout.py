"""The package's layers: imports go only downwards, data -> generation -> learning -> evaluation ->
experiments, over a base of config, file IO, tables and MLflow helpers (the command line sits on top)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "src" / "synrep"
LAYERS = {"config": 0, "fileio": 0, "tracking": 0, "tables": 0, "images": 0, "data": 1, "generation": 2, "learning": 3, "evaluation": 4,
          "experiments": 5, "__main__": 6, "__init__": 6}
# The one upward import: the config validates method names against the methods table, a module
# that imports nothing (a bad value must fail at load time, with its key).
ALLOWED = {("synrep.config", "synrep.learning.methods")}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else LAYERS["__init__"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def synrep_imports(path: Path) -> set[str]:
    """Every synrep module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("synrep.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("synrep"):
            if node.module == "synrep":
                found |= {f"synrep.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def test_imports_only_go_downwards():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in synrep_imports(path):
            if target == "synrep.__version__" or (source, target) in ALLOWED:
                continue
            if layer(target) > layer(source):
                upward.append(f"{source} imports {target}")
    assert upward == []


def test_every_module_is_in_a_layer():
    unknown = [module_name(p) for p in PACKAGE.rglob("*.py")
               if module_name(p) != "synrep" and module_name(p).split(".")[1] not in LAYERS]
    assert unknown == []
