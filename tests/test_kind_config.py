"""kind-config.yaml is a valid kind cluster config: checked by tests/kindcheck, which decodes it strictly into kind's own
v1alpha4 API types (the module kind itself uses), so a misspelt field or a wrong type fails as `kind create cluster`
would; broken variants prove the check bites."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from .controlplane.cluster import BIN, ROOT

CONFIG = ROOT / "kind-config.yaml"


def kindcheck(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kindcheck"), str(path)], capture_output=True, text=True, timeout=60)


def test_kind_config_is_valid():
    proc = kindcheck(CONFIG)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(CONFIG.read_text())
    roles = [n["role"] for n in doc["nodes"]]
    assert roles == ["control-plane", "worker"]
    mapping = doc["nodes"][1]["extraPortMappings"][0]
    assert mapping["containerPort"] == 30080 and mapping["hostPort"] == 8000  # the quickstart's chat endpoint


def _broken(doc: dict, change) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(doc))
    change(doc)
    return doc


BROKEN = {
    "misspelt-field": (lambda d: d["nodes"][1].__setitem__("extraPortMapings", []), "extraPortMapings"),
    "wrong-type": (lambda d: d["nodes"][1]["extraPortMappings"][0].__setitem__("hostPort", "eight"), "hostPort"),
    "no-control-plane": (lambda d: d.__setitem__("nodes", [{"role": "worker"}]), "control-plane"),
    "unknown-role": (lambda d: d["nodes"][1].__setitem__("role", "gpu"), "role"),
    "port-out-of-range": (lambda d: d["nodes"][1]["extraPortMappings"][0].__setitem__("hostPort", 70000), "port"),
    "wrong-api-version": (lambda d: d.__setitem__("apiVersion", "kind.x-k8s.io/v1alpha3"), "apiVersion"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_configs_are_rejected(case, tmp_path):
    change, field = BROKEN[case]
    path = tmp_path / "kind.yaml"
    path.write_text(yaml.safe_dump(_broken(yaml.safe_load(CONFIG.read_text()), change)))
    proc = kindcheck(path)
    assert proc.returncode == 1 and field in proc.stderr, proc.stderr
