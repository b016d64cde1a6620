"""Layering: kubetune.api imports neither torch nor kopf; the operator never imports torch or runtime internals;
the runtime never imports kopf. Checked both by importing and by reading the sources."""

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
