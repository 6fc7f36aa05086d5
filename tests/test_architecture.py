"""The import contract, read from the source with ``ast`` (nothing is imported to check it):

* no import circle among ``dia_model`` modules, nor among ``pipeline`` modules;
* inside ``dia_model`` every import points down the layers of ``DIA_MODEL_LAYERS`` (a new module
  must be given a layer here, which is the point: its place is decided, not drifted into);
* ``pipeline`` uses ``dia_model`` only through its public names (``dia_model.__all__``), never a
  submodule or a private name;

and a wheel built from ``pyproject.toml`` holds, and imports, every package of the source tree.

Every import statement counts, at module level or inside a function or ``TYPE_CHECKING`` block: an
import moved into a function to dodge a circle is still the same dependency.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from import_graph import circles

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dia_model", "pipeline")

# Bottom up; a module may import modules of lower layers only (sub-package __init__ files hold a
# docstring only and import nothing). "" is dia_model/__init__.py itself, the public face.
DIA_MODEL_LAYERS: list[list[str]] = [
    ["errors", "limits", "hub"],  # leaves: import nothing of the package
    ["config", "text", "types"],  # import only the leaves above
    ["nn", "audio", "engine"],  # the sub-packages' own __init__ (docstrings)
    ["nn.devices", "nn.layout", "nn.cpu_kernels"],
    ["nn.model"],
    ["nn.checkpoint"],
    ["audio.files", "audio.codec"],
    ["engine.sampling", "engine.buckets", "engine.timeline", "engine.waiting"],
    ["engine.segments"],  # which runs of slots read how far (an eager step's attention)
    ["engine.step"],  # the one decode step both decode paths run
    ["engine.static", "engine.slot_state", "engine.slot_table", "engine.longform"],
    ["engine.graphs", "engine.admission"],
    ["engine.loop"],
    ["api"],  # Dia, the facade
    ["tiny"],
    [""],
]


# Circles that exist today and are to be removed (issue 17, the pipeline half): the test fails on any
# other circle, and on an entry here that no longer exists (take it out then: the list only shrinks).
KNOWN_CIRCLES: list[set[str]] = []  # pipeline.metadata <-> pipeline.plan went with the sub-packages


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a package's __init__ when a name comes from it)
    names: tuple[str, ...]  # names taken from the target by ``from target import ...`` (empty: ``import``)
    line: int


def _module_files(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES: dict[str, Path] = {name: path for pkg in PACKAGES for name, path in _module_files(pkg).items()}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name>`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(module, alias.name, (), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node.level, node.module)
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # ``from package import submodule``
                    out.append(Import(module, sub, (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain or not node.names:
                out.append(Import(module, target, tuple(plain), node.lineno))
    return out


def _internal(target: str) -> str | None:
    """The scanned module an import target lands in (``a.b.c`` not a module: its nearest module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def graph(package: str) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        if module.split(".")[0] != package:
            continue
        edges[module]
        for imp in imports_of(module):
            target = _internal(imp.target)
            if target is not None and target.split(".")[0] == package:
                edges[module].add(target)
    return edges


def _describe(found: list[list[str]], edges: dict[str, set[str]]) -> str:
    lines = []
    for component in found:
        members = set(component)
        lines.append(" <-> ".join(component) + ": " + "; ".join(
            f"{a} -> {b}" for a in component for b in sorted(edges[a] & members)))
    return "\n".join(lines)


def _layer_of() -> dict[str, int]:
    return {("dia_model." + m).rstrip("."): i for i, layer in enumerate(DIA_MODEL_LAYERS) for m in layer}


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles(package):
    edges = graph(package)
    found = circles(edges)
    known = [c for c in KNOWN_CIRCLES if next(iter(c)).split(".")[0] == package]
    new = [c for c in found if set(c) not in known]
    print(f"{package}: {len(edges)} modules, {sum(map(len, edges.values()))} internal imports, "
          f"{len(found)} circles ({len(found) - len(new)} known)")
    assert not new, f"import circles in {package}:\n{_describe(new, edges)}"
    gone = [sorted(c) for c in known if sorted(c) not in found]
    assert not gone, f"these circles are gone: take them out of KNOWN_CIRCLES: {gone}"


def test_every_dia_model_module_has_a_layer():
    layers = _layer_of()
    modules = {m for m in MODULES if m.split(".")[0] == "dia_model"}
    assert not modules - set(layers), f"give these modules a layer in DIA_MODEL_LAYERS: {sorted(modules - set(layers))}"
    assert not set(layers) - modules, f"DIA_MODEL_LAYERS names modules that do not exist: {sorted(set(layers) - modules)}"


def test_dia_model_imports_point_down():
    layers = _layer_of()
    upward = []
    for module in sorted(m for m in MODULES if m.split(".")[0] == "dia_model"):
        for imp in imports_of(module):
            target = _internal(imp.target)
            if target is None or target.split(".")[0] != "dia_model" or target not in layers:
                continue
            if layers[target] >= layers[module]:
                upward.append(f"{MODULES[module].relative_to(REPO)}:{imp.line}: {module} (layer {layers[module]}) "
                              f"imports {target} (layer {layers[target]})")
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(upward)


def test_dia_model_has_no_ray_or_hydra():
    found = [f"{MODULES[m].relative_to(REPO)}:{imp.line}: {imp.target}"
             for m in MODULES if m.split(".")[0] == "dia_model"
             for imp in imports_of(m) if imp.target.split(".")[0] in ("ray", "hydra", "omegaconf", "pipeline")]
    assert not found, "dia_model must know nothing of Ray, Hydra or the pipeline:\n" + "\n".join(found)


def _public_names() -> set[str]:
    tree = ast.parse(MODULES["dia_model"].read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("dia_model/__init__.py has no __all__")


def test_the_public_names_exist():
    import dia_model

    assert [n for n in dia_model.__all__ if not hasattr(dia_model, n)] == []
    assert set(dia_model.__all__) == _public_names()


def test_pipeline_uses_only_public_dia_model_names():
    public = _public_names()
    bad = []
    for module in sorted(m for m in MODULES if m.split(".")[0] == "pipeline"):
        for imp in imports_of(module):
            where = f"{MODULES[module].relative_to(REPO)}:{imp.line}"
            if imp.target.startswith("dia_model."):
                bad.append(f"{where}: imports the submodule {imp.target} (use `from dia_model import ...`)")
            elif imp.target == "dia_model":
                bad += [f"{where}: dia_model.{n} is not public (not in dia_model.__all__)"
                        for n in imp.names if n not in public or n.startswith("_")]
    assert not bad, "pipeline reaches past dia_model's public names:\n" + "\n".join(bad)


def test_the_checks_see_what_they_should():
    """The parser itself: relative imports resolve, ``from package import submodule`` is an edge to
    the submodule, and a circle is found where there is one."""
    edges = graph("dia_model")
    assert "dia_model.engine.step" in edges["dia_model.engine.slot_state"]
    assert "dia_model.nn.checkpoint" in edges["dia_model.api"]  # ``from .nn import checkpoint``
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"a"}}) == [["a"]] and circles({"a": {"b"}, "b": set()}) == []


# ------------------------------------------------------------------------------------------ the wheel
def _source_packages() -> set[str]:
    return {m for m in MODULES if _is_package(m)}


def _pyproject_packages() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        pytest.skip("needs tomllib (Python 3.11+)")
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["tool"]["setuptools"]["packages"])


def test_pyproject_lists_every_package():
    listed = _pyproject_packages()
    missing = _source_packages() - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"


def test_a_wheel_built_from_pyproject_imports_every_package():
    """Build the wheel from a copy of the source (so no build/ or egg-info lands in the checkout),
    unpack it, and import every package and every dia_model module from it alone."""
    with tempfile.TemporaryDirectory(prefix="dia-wheel-") as tmp:
        src, dist, site = Path(tmp, "src"), Path(tmp, "dist"), Path(tmp, "site")
        skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
        for folder in ("dia_model", "pipeline", "configs"):
            shutil.copytree(REPO / folder, src / folder, ignore=skip)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, src / name)
        env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                                "-w", str(dist), str(src)], capture_output=True, text=True, env=env, timeout=300)
        assert build.returncode == 0, build.stdout + build.stderr
        wheels = list(dist.glob("*.whl"))
        assert len(wheels) == 1, wheels
        with zipfile.ZipFile(wheels[0]) as whl:
            names = set(whl.namelist())
            whl.extractall(site)
        assert "dia_model/nn/kernels/avx2_linear.cpp" in names  # the CPU kernel's source, found at run time
        assert any(n.startswith("pipeline/conf/") and n.endswith(".yaml") for n in names)
        wanted = sorted(_source_packages() | {m for m in MODULES if m.split(".")[0] == "dia_model"})
        missing = [m for m in wanted if not (site / Path(*m.split("."))).with_suffix(".py").is_file()
                   and not (site / Path(*m.split(".")) / "__init__.py").is_file()]
        assert not missing, f"the wheel lacks {missing}"
        code = (
            "import importlib, sys\n"
            f"site = {str(site)!r}\n"
            f"for name in {wanted!r}:\n"
            "    m = importlib.import_module(name)\n"
            "    assert m.__file__.startswith(site), (name, m.__file__)\n"
            "from dia_model.nn.cpu_kernels import _SOURCE\n"
            "assert _SOURCE.is_file(), _SOURCE\n"
            "print('imported', len(sys.modules))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True, env=env,
                             timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_finds_nothing():
    """The lint gate: pyproject's small rule set (syntax errors, undefined and unused names, mutable
    defaults) over every Python file of the project."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    run = subprocess.run([ruff, "check", "--no-cache", "dia_model", "pipeline", "bench", "tests", "scripts"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
