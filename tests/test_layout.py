"""The package's layers: imports go only downwards. Over a base of settings (what a config section is
made of, the helpers on a loaded config), the method and source-mode tables, file IO, tables and
MLflow helpers: data -> diffusion (the library: pipelines, samplers, guidance) -> generation (the
shard steps) and recipes (training, one run per model) -> learning -> evaluation -> experiments; the
config's composition and loading sit above the packages whose sections they compose, and the command
line on top. No import cycle between modules or packages, imports inside functions included."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "src" / "synrep"
LAYERS = {"settings": 0, "training_methods": 0, "training_recipes": 0, "source_modes": 0, "fileio": 0, "tracking": 0,
          "tables": 0, "images": 0, "pixels": 0,
          "data": 1, "diffusion": 2, "generation": 3, "recipes": 3, "learning": 4, "evaluation": 5, "experiments": 6,
          "config": 7, "__main__": 8, "__init__": 8}
# Imports inside functions hide cycles and the order of layers from a reader of a module's top; most
# left are lazy imports of heavy steps (torch, diffusers) that keep the command line quick. The
# ceiling only goes down.
MAX_FUNCTION_IMPORTS = 102


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
            if target == "synrep.__version__":
                continue
            if layer(target) > layer(source):
                upward.append(f"{source} imports {target}")
    assert upward == []


def test_every_module_is_in_a_layer():
    unknown = [module_name(p) for p in PACKAGE.rglob("*.py")
               if module_name(p) != "synrep" and module_name(p).split(".")[1] not in LAYERS]
    assert unknown == []


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> tuple[dict[str, set[str]], int]:
    """module -> the synrep modules it imports (``from synrep.x import y`` counts as synrep.x.y when
    that is a module), and the number of import statements inside functions."""
    graph, in_functions = {}, 0
    for name, path in MODULES.items():
        edges = set()

        def visit(node: ast.AST, in_function: bool) -> None:
            nonlocal in_functions
            for child in ast.iter_child_nodes(node):
                inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                targets = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names if a.name.startswith("synrep.")]
                elif isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").split(".")[0] == "synrep":
                    targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in MODULES else child.module
                               for a in child.names]
                in_functions += bool(targets) and inside
                for target in targets:
                    while target not in MODULES:  # synrep.x.attribute -> synrep.x
                        target = target.rsplit(".", 1)[0]
                    if target != name:
                        edges.add(target)
                visit(child, inside)

        visit(ast.parse(path.read_text()), False)
        graph[name] = edges
    return graph, in_functions


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), or a node importing itself."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_modules():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_no_import_cycle_between_packages():
    graph, _ = import_graph()
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        packages.setdefault(package(source), set()).update(package(t) for t in targets if package(t) != package(source))
    assert cycles(packages) == []


def test_cycle_finder_sees_function_level_imports():
    """The finder's own check, on a circle that only an import inside a function closes."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph, _ = import_graph()
    # clip_guidance imports noised_clip; a noised CLIP loads through clip_model, not back through guidance
    assert "synrep.diffusion.noised_clip" in graph["synrep.diffusion.clip_guidance"]
    assert "synrep.diffusion.clip_guidance" not in graph["synrep.diffusion.noised_clip"]


def test_imports_inside_functions_do_not_grow():
    _, in_functions = import_graph()
    print(f"synrep imports inside functions: {in_functions} (ceiling {MAX_FUNCTION_IMPORTS})")
    assert in_functions <= MAX_FUNCTION_IMPORTS


def test_imports_are_sorted_and_pyflakes_is_clean():
    """isort's order (first party: synrep, tests) and Pyflakes' checks (unused imports and names, redefinitions),
    as ruff reads them."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency: pip install -e '.[test]'"
    done = subprocess.run([ruff, "check", "--select", "I,F", "--output-format", "concise",
                           "src", "tests", "scripts", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + "\nfix: ruff check --select I,F --fix src tests scripts benchmarks"


def test_no_module_is_over_500_lines():
    """A module a reader can hold: past 500 lines one holds two concepts (config.py included)."""
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
