"""`kubetune-operator`'s command line: run (the default), render, version, --help; unknown arguments refused. What
`render` prints for every example is accepted by the real test apiserver (server-side dry run)."""

import os
import subprocess
import sys

import yaml

from .conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def operator_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "kubetune_operator", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, cwd=REPO)


def test_help_version_and_unknown_arguments_never_start_the_operator():
    out = operator_cli("--help")
    assert out.returncode == 0 and "render" in out.stdout and "version" in out.stdout
    version = operator_cli("version")
    assert version.returncode == 0 and version.stdout.startswith("kubetune-operator ")
    for wrong in (["--bogus"], ["frobnicate"], ["render"]):
        refused = operator_cli(*wrong)
        assert refused.returncode == 2 and "usage: kubetune-operator" in refused.stderr


def test_render_prints_what_the_apiserver_accepts(control_plane):
    out = operator_cli("render", *map(str, EXAMPLES), env={"KUBETUNE_RUNTIME_IMAGE": "registry.example/kt:1"})
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Job", "ConfigMap", "Deployment", "Service", "Role", "RoleBinding", "ServiceAccount"} <= kinds
    images = {c["image"] for d in docs if d["kind"] == "Job" for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example/kt:1"}  # the operator's settings come from the environment, as in its pod
    for namespace in {d["metadata"]["namespace"] for d in docs}:
        control_plane.kubectl("create", "namespace", namespace, check=False)
    proc = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=out.stdout, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(docs)


def test_render_refuses_an_invalid_manifest_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"uri": "hf://o/m"}, "training": {"batchSize": 0}}))
    out = operator_cli("render", str(bad))
    assert out.returncode == 1 and "training.batchSize" in out.stderr and "Traceback" not in out.stderr
    missing = operator_cli("render", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
