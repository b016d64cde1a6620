"""The CRDs against a real kube-apiserver (tests/controlplane): every example and predefined config is accepted,
invalid manifests are rejected by the apiserver itself (OpenAPI schema or CEL) naming the field, `kubectl explain`
shows the models' descriptions, status subresource, printer columns and short names work, and the lifecycle harness
(controller-manager + scheduler + kwok) runs an Indexed Job to Complete and garbage-collects its Pods."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from kubetune.api import ManifestError, catalog, parse_manifest

from .test_api_invalid import CASES, _doc

EXAMPLES = sorted(p for p in (Path(__file__).parents[1] / "examples").glob("*.yaml"))

# Not a CRD's job: the apiserver routes by apiVersion/kind (a wrong one is "no matches for kind", tested below) and
# has no catalogue of predefined configs (the operator resolves baseConfig and fails the job, naming it).
CLIENT_ONLY = ("wrong-kind", "wrong-api-version", "unknown-base-config")
SERVER_CASES = [c for c in CASES if c[0] not in CLIENT_ONLY]


def _namespace(plane, name: str) -> str:
    plane.kubectl("create", "namespace", name, check=False)
    return name


def test_every_example_manifest_applies(control_plane):
    ns = _namespace(control_plane, "examples")
    docs = [d for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d and "kind" in d]
    assert len(docs) >= 8
    text = yaml.safe_dump_all(docs)
    control_plane.kubectl("apply", "-n", ns, "--dry-run=server", "--validate=strict", "-f", "-", input=text)
    control_plane.kubectl("create", "-n", ns, "--validate=strict", "-f", "-", input=text)
    for doc in docs:
        got = control_plane.get_json("-n", ns, doc["kind"].lower(), doc["metadata"]["name"])
        assert got["spec"]  # stored, defaults applied by the apiserver


def test_every_predefined_config_applies(control_plane):
    ns = _namespace(control_plane, "catalogue")
    manifests = list(catalog.catalog().values())
    assert len(manifests) >= 1000
    batch = {"apiVersion": "v1", "kind": "List", "items": manifests}
    control_plane.kubectl("apply", "-n", ns, "--dry-run=server", "--validate=strict", "-f", "-",
                          input=json.dumps(batch), timeout=900)
    control_plane.kubectl("create", "-n", ns, "--validate=strict", "-f", "-", input=json.dumps(batch), timeout=900)
    listed = control_plane.get_json("-n", ns, "finetunejobs")
    assert len(listed["items"]) == len(manifests)


def _server_errors(plane, doc: dict) -> tuple[int, str]:
    proc = plane.kubectl("create", "-n", "invalid", "--dry-run=server", "--validate=strict", "-f", "-",
                         input=json.dumps(doc), check=False)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("case_id,base,patch,paths,is_rule", SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_the_apiserver_rejects_invalid_manifests(control_plane, case_id, base, patch, paths, is_rule):
    _namespace(control_plane, "invalid")
    doc = _doc(base, patch)
    rc, err = _server_errors(control_plane, doc)
    assert rc != 0, f"{case_id}: the apiserver accepted it"
    if is_rule:  # a CEL rule names one field, its fieldPath: one of those `kubetune validate` names
        with pytest.raises(ManifestError) as python:
            parse_manifest(doc)
        named = {p for path, _ in python.value.errors for p in path.split(", ")}
        assert any(f"{path}:" in err for path in named), f"{case_id}: none of {named} named in: {err}"
    else:  # schema errors name every bad field
        assert all(path in err for path in paths), f"{case_id}: {paths} not named in: {err}"


def test_thirty_or_more_rejections_name_their_field():
    assert len(SERVER_CASES) >= 30


def test_wrong_kind_or_version_is_refused_and_unknown_base_config_left_to_the_operator(control_plane):
    _namespace(control_plane, "invalid")
    for case_id in ("wrong-kind", "wrong-api-version"):
        case = next(c for c in CASES if c[0] == case_id)
        rc, err = _server_errors(control_plane, _doc(case[1], case[2]))
        assert rc != 0 and "no matches for kind" in err, err
    case = next(c for c in CASES if c[0] == "unknown-base-config")
    assert _server_errors(control_plane, _doc(case[1], case[2]))[0] == 0


def test_explain_shows_the_models_descriptions(control_plane):
    from kubetune.api.finetune import FineTuneJobSpec, MethodSpec

    out = " ".join(control_plane.kubectl("explain", "finetunejob.spec.method").stdout.split())
    assert "FIELD: method <Object>" in out
    assert " ".join(FineTuneJobSpec.model_fields["method"].description.split())[:60] in out
    described = [f for f, info in MethodSpec.model_fields.items() if info.description]
    assert described and all(" ".join(MethodSpec.model_fields[f].description.split())[:40] in out for f in described)
    lora = control_plane.kubectl("explain", "ftj.spec.method.lora.r").stdout
    assert "<integer>" in lora


def test_status_subresource_printer_columns_and_short_names(control_plane):
    ns = _namespace(control_plane, "status")
    doc = copy.deepcopy(_doc("ftj", {}))
    doc["metadata"]["name"] = "columns"
    control_plane.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(doc))
    # The main resource ignores status; only the subresource writes it (what the operator relies on).
    control_plane.kubectl("patch", "-n", ns, "ftj", "columns", "--type=merge", "-p",
                          json.dumps({"status": {"phase": "Running"}}))
    assert "status" not in control_plane.get_json("-n", ns, "ftj", "columns") or \
        control_plane.get_json("-n", ns, "ftj", "columns")["status"].get("phase") != "Running"
    control_plane.kubectl("patch", "-n", ns, "ftj", "columns", "--subresource=status", "--type=merge", "-p",
                          json.dumps({"status": {"phase": "Running", "progress": {"step": 5, "totalSteps": 20, "stepDisplay": "5/20", "loss": 1.25}}}))
    assert control_plane.get_json("-n", ns, "finetunejob", "columns")["status"]["phase"] == "Running"
    table = control_plane.kubectl("get", "-n", ns, "ftj").stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "PHASE", "STEP", "LOSS"]
    assert table[1].split()[:4] == ["columns", "Running", "5/20", "1.25"]
    for short in ("cvj", "chat"):
        assert control_plane.kubectl("get", "-n", ns, short).returncode == 0


def _job(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
                     "template": {"spec": {
                         "restartPolicy": "Never",
                         "containers": [{"name": "main", "image": "kubetune/runtime:test",
                                         "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}


def test_lifecycle_harness_runs_an_indexed_job_and_collects_garbage(cluster):
    ns = _namespace(cluster, "lifecycle")
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(_job("two")))

    def complete() -> bool:
        status = cluster.get_json("-n", ns, "job", "two").get("status", {})
        return any(c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions", []))

    cluster.wait_for(complete, "Job two Complete", 90)
    pods = cluster.get_json("-n", ns, "pods", "-l", "job-name=two")["items"]
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    assert all(p["spec"]["nodeName"] == "gpu-node-0" and p["status"]["phase"] == "Succeeded" for p in pods)
    cluster.kubectl("delete", "-n", ns, "job", "two", "--cascade=background")
    cluster.wait_for(lambda: not cluster.get_json("-n", ns, "pods", "-l", "job-name=two")["items"],
                     "the garbage collector to delete Job two's Pods", 90)
