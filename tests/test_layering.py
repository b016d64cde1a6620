"""Layering: kubetune.api imports neither torch nor kopf; the operator never imports torch or runtime internals;
the runtime never imports kopf; inside the runtime, `cli` sits above `train/convert/chat/vision`, above
`data/model/storage`, above `api` (LAYERS below): nothing imports upward, no private name crosses packages, and no
import circle exists. Checked both by importing and by reading the sources; the checker is shown a planted break."""

import ast
import subprocess
import sys

import pytest

from .conftest import REPO

HEAVY = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "datasets", "accelerate")


@pytest.mark.parametrize("module", ["kubetune.api", "kubetune_operator", "kubetune.api.crds", "kubetune.cli.main"])
def test_importing_loads_no_heavy_library(module):
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY + ('kopf',)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _sources(root):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_api_sources_import_only_light_modules():
    for path in _sources(REPO / "runtime" / "kubetune" / "api"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in HEAVY + ("kopf", "kubernetes"), f"{path}: imports {name}"
            assert not name.startswith("kubetune.") or name.startswith(("kubetune.api", "kubetune.errors")), \
                f"{path}: imports {name}"


def test_operator_imports_only_the_api_from_the_runtime():
    for path in _sources(REPO / "operator" / "kubetune_operator"):
        for name in _imports(path):
            assert name.split(".")[0] not in HEAVY, f"{path}: imports {name}"
            if name.split(".")[0] == "kubetune":
                assert name == "kubetune.api" or name.startswith("kubetune.api."), f"{path}: imports {name}"


def test_runtime_never_imports_kopf():
    for path in _sources(REPO / "runtime" / "kubetune"):
        for name in _imports(path):
            assert name.split(".")[0] not in ("kopf", "kubetune_operator"), f"{path}: imports {name}"


def test_no_top_level_operator_package_shadows_the_stdlib():
    assert not (REPO / "operator" / "__init__.py").exists()
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.__file__)"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert "site-packages" not in out.stdout and str(REPO) not in out.stdout


def test_source_files_stay_small():
    for path in _sources(REPO / "runtime") + _sources(REPO / "operator"):
        assert len(path.read_text().splitlines()) <= 500, f"{path} is past 500 lines: split it"


# The runtime's layers, bottom to top: a module imports only from its own layer or below, never a private name from
# another package, and no chain of imports (lazy ones included) comes back to where it started.
LAYERS = {
    0: ("api", "errors", "configs", "__init__"),
    1: ("data", "model", "storage"),
    2: ("train", "convert", "chat", "vision"),
    3: ("cli", "__main__", "tiny"),
}
RANK = {package: rank for rank, packages in LAYERS.items() for package in packages}


def _modules(root):
    """kubetune's modules under `root` (the directory holding the `kubetune` package) → their files."""
    out = {}
    for path in _sources(root / "kubetune"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _edges(name, path, modules):
    """(imported module, private names it takes) for every import in the file, module-level or lazy."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            yield from ((m, []) for m in submodules)
            names = [a.name for a in node.names if f"{base}.{a.name}" not in modules]
            if base in modules and (names or not submodules):  # `from pkg import submodule` is not pkg's own code
                yield base, [n for n in names if n.startswith("_") and not n.startswith("__")]


def _package(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(root):
    """Every broken rule in the runtime under `root`, as readable lines; empty when the layers hold."""
    modules, graph, found = _modules(root), {}, []
    for name, path in modules.items():
        graph[name] = set()
        for target, private in _edges(name, path, modules):
            if target == name:
                continue
            graph[name].add(target)
            mine, theirs = _package(name), _package(target)
            if RANK.get(theirs, 99) > RANK.get(mine, -1):
                found.append(f"{name} imports {target}: {theirs} (layer {RANK.get(theirs)}) is above {mine} "
                             f"(layer {RANK.get(mine)})")
            if private and mine != theirs:
                found.append(f"{name} imports private {', '.join(private)} from {target}")
    unknown = sorted({_package(m) for m in modules} - set(RANK))
    found += [f"package kubetune.{p} has no layer in tests/test_layering.py LAYERS" for p in unknown]
    return found + [f"import circle: {' -> '.join(c)}" for c in _circles(graph)]


def _circles(graph):
    """Strongly connected groups of more than one module (Tarjan), each as one path through the group."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group) + [sorted(group)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_runtime_keeps_its_layers():
    assert layer_violations(REPO / "runtime") == []


def test_a_planted_violation_is_found(tmp_path):
    """The checker on a copy of the runtime with three planted breaks: an upward import, a private name across
    packages, and an import circle."""
    import shutil

    shutil.copytree(REPO / "runtime" / "kubetune", tmp_path / "kubetune",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "kubetune" / "data" / "upward.py").write_text("from kubetune.cli.errors import UserError\n")
    (tmp_path / "kubetune" / "chat" / "peek.py").write_text("from kubetune.vision.load import _local\n")
    (tmp_path / "kubetune" / "storage" / "ring.py").write_text("def f():\n    from . import paths\n")
    paths = tmp_path / "kubetune" / "storage" / "paths.py"
    paths.write_text(paths.read_text() + "\n\ndef g():\n    from . import ring\n")
    found = layer_violations(tmp_path)
    assert found == [
        "kubetune.chat.peek imports private _local from kubetune.vision.load",
        "kubetune.data.upward imports kubetune.cli.errors: cli (layer 3) is above data (layer 1)",
        "import circle: kubetune.storage.paths -> kubetune.storage.ring -> kubetune.storage.paths",
    ], found


def test_examples_and_benchmarks_import_modules_that_exist():
    """Their kubetune imports are lazy (inside functions), so a moved module breaks them only when a user runs them:
    every one is resolved here."""
    import importlib.util

    for path in _sources(REPO / "examples") + _sources(REPO / "bench"):
        for name in _imports(path):
            if name.split(".")[0] in ("kubetune", "kubetune_operator"):
                assert importlib.util.find_spec(name) is not None, f"{path}: imports {name}, which does not exist"
