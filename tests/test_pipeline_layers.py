"""The pipeline's import layers, read from the source with ``ast`` (nothing is imported).

Every module of ``pipeline/`` sits in one layer; a module may import its own layer and the layers
below it, never one above. The leaves are layers of their own, in a fixed order. An import counts
wherever it is written (module level or inside a function); only imports under
``if TYPE_CHECKING:`` are left out, since they never run. On top of the order:

- no import circle between pipeline modules;
- Ray only in the driver and the replica's actor shell;
- no torch in planning (the driver plans rows without loading a model);
- ``dia_model`` only in the model boundary (and the apps, which build its requests);
- no name starting with ``_`` imported from another sub-package or from ``dia_model``;
- the apps never import the driver (they run without Ray);
- every package under pipeline/ is listed in pyproject.toml, so a wheel ships it.

Run with ``-s`` to see the layer table.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from import_graph import circles

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

# (layer name, module prefixes), lowest first. A module belongs to the layer of its longest prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("pipeline.errors",)),
    ("files", ("pipeline.files",)),
    ("htmlsafe", ("pipeline.htmlsafe",)),
    ("config", ("pipeline.config",)),
    ("audio", ("pipeline.audio",)),
    ("storage", ("pipeline.storage",)),
    ("records", ("pipeline.records",)),
    ("quality", ("pipeline.quality",)),
    ("model", ("pipeline.model",)),
    ("planning", ("pipeline.planning",)),
    ("replica", ("pipeline.replica",)),
    ("export", ("pipeline.export",)),  # python -m pipeline.export, and the driver's output.export at a job's end
    ("driver", ("pipeline.driver",)),
    ("apps", ("pipeline.apps",)),
    # the package itself (run_job), python -m pipeline, and the shims of python -m pipeline.report/.say/.audition
    ("entry", ("pipeline", "pipeline.__main__", "pipeline.report", "pipeline.say", "pipeline.audition")),
]
LEAVES = ("errors", "files", "htmlsafe", "config", "audio")
RAY_ALLOWED = ("pipeline.driver", "pipeline.replica.actor")
DIA_MODEL_ALLOWED = ("pipeline.model", "pipeline.apps")
NO_TORCH = ("pipeline.planning",)
FORBIDDEN = [("pipeline.apps", "pipeline.driver")]  # (importer prefix, imported prefix)
OUTSIDE = ("pipeline.examples",)  # data-making script shipped with the examples; imports no pipeline module


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (dotted, absolute)
    names: tuple[str, ...]  # names taken from it (from-imports)
    line: int
    in_function: bool


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def pipeline_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if not _under(module_name(p), OUTSIDE)}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import the module runs (TYPE_CHECKING blocks left out), with relative ones made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(module, alias.name, (), child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                names = tuple(a.name for a in child.names)
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
                if submodules:  # from . import audio: an import of the module pipeline.audio
                    found.extend(Import(module, s, (), child.lineno, in_function) for s in submodules)
                    names = tuple(n for n in names if f"{target}.{n}" not in known)
                    if not names:
                        continue
                found.append(Import(module, target, names, child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def layer_of(module: str) -> int:
    """The index of the module's layer (its longest matching prefix; the bare package matches only itself)."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            matches = module == p if p == "pipeline" else _under(module, (p,))
            if matches and len(p) > best_len:
                best, best_len = index, len(p)
    return best


def _internal(target: str, known: set[str]) -> str | None:
    """The pipeline module an import loads (the longest known prefix), None when it is not ours."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in known:
            return name
        parts.pop()
    return None


def _collect() -> tuple[dict[str, Path], list[Import]]:
    modules = pipeline_modules()
    known = set(modules)
    edges: list[Import] = []
    for name, path in modules.items():
        edges += imports_of(name, path, known)
    return modules, edges


def _table(modules: dict[str, Path]) -> str:
    lines = ["layer  name      lines  modules (each row may import its own row and the rows above it)"]
    for index, (name, _) in enumerate(LAYERS):
        members = sorted(m for m in modules if layer_of(m) == index)
        count = sum(len(modules[m].read_text().splitlines()) for m in members)
        shown = ", ".join(m.removeprefix("pipeline.") or "pipeline" for m in members)
        lines.append(f"{index:>5}  {name:<8} {count:>6}  {shown}")
    return "\n".join(lines)


def test_every_module_has_a_layer():
    modules, _ = _collect()
    assert [m for m in modules if layer_of(m) < 0] == []


def test_imports_point_down_and_never_circle():
    modules, edges = _collect()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    upward, forbidden = [], []
    for e in edges:
        target = _internal(e.target, known)
        if target is None or target == "pipeline" and e.target != "pipeline":
            continue  # not ours (or the implicit parent package of a submodule)
        if target != e.source:
            graph[e.source].add(target)
        if layer_of(target) > layer_of(e.source):
            upward.append(f"{e.source}:{e.line} imports {target} "
                          f"({LAYERS[layer_of(e.source)][0]} -> {LAYERS[layer_of(target)][0]})")
        forbidden += [f"{e.source}:{e.line} imports {target}" for a, b in FORBIDDEN
                      if _under(e.source, (a,)) and _under(target, (b,))]
    found = circles(graph)
    in_functions = sum(1 for e in edges if e.in_function and _internal(e.target, known))
    print()
    print(_table(modules))
    print(f"{len(modules)} modules, {sum(len(v) for v in graph.values())} import edges between them, "
          f"{in_functions} of them inside functions")
    print(f"{len(found)} circles")
    assert found == []
    assert upward == []
    assert forbidden == []


def test_heavy_and_outside_imports_stay_where_they_belong():
    _, edges = _collect()
    wrong = []
    for e in edges:
        top = e.target.split(".")[0]
        if top == "ray" and not _under(e.source, RAY_ALLOWED):
            wrong.append(f"{e.source}:{e.line} imports ray (allowed only in {', '.join(RAY_ALLOWED)})")
        if top == "torch" and _under(e.source, NO_TORCH):
            wrong.append(f"{e.source}:{e.line} imports torch (planning never loads a model)")
        if top == "dia_model" and not _under(e.source, DIA_MODEL_ALLOWED):
            wrong.append(f"{e.source}:{e.line} imports dia_model (allowed only in {', '.join(DIA_MODEL_ALLOWED)})")
    assert wrong == []


def test_no_private_name_crosses_a_package():
    modules, edges = _collect()
    known = set(modules)
    wrong = []
    for e in edges:
        private = [n for n in e.names if n.startswith("_") and not n.startswith("__")]
        if not private:
            continue
        target = _internal(e.target, known)
        if target is None:
            if e.target.split(".")[0] == "dia_model":
                wrong.append(f"{e.source}:{e.line} takes {private} from {e.target}")
            continue
        if target.rpartition(".")[0] != e.source.rpartition(".")[0]:
            wrong.append(f"{e.source}:{e.line} takes {private} from {target}")
    assert wrong == []


def test_every_package_is_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert packages - listed == set()


def test_planning_loads_neither_torch_nor_ray():
    """Not only no direct import: nothing planning imports pulls torch, dia_model or Ray in either."""
    code = ("import sys, pipeline.planning.planner, pipeline.planning.scan, pipeline.records.store, "
            "pipeline.records.report; print(sorted(m for m in ('torch', 'ray', 'dia_model') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert out.stdout.strip() == "[]", out.stderr
