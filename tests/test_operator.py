"""The operator against the real control plane (apiserver + etcd + controller-manager + scheduler + kwok): it runs as
`python -m kubetune_operator`, exactly as in its Deployment, under the Helm chart's ServiceAccount and RBAC (nothing
more), and pods "run" through kwok (tests/controlplane/stages.yaml picks success, failure or running-forever by the
FineTuneJob's name). The last test compares the chart's rules with the requests the apiserver audited."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import ssl

from pathlib import Path

import pytest
import yaml

from .controlplane.cluster import BIN, OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, OPERATOR_USER, ROOT as REPO

NS = "ops"
FTJ = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
       "spec": {"model": {"uri": "hf://org/model"}, "dataset": {"uri": "s3://data/train.jsonl"},
                "checkpoints": {"uri": "s3://ckpt/run/"}, "storage": {"secretRef": "s3-credentials"},
                "resources": {"nodes": 2, "gpusPerNode": 1}, "export": {"adapter": False}}}


class Operator:
    def __init__(self, cluster, log, kubeconfig, namespace: str = NS, env: dict[str, str] | None = None):
        self.cluster, self.log, self.kubeconfig, self.namespace = cluster, log, kubeconfig, namespace
        self.env = env or {}  # chart settings beyond the defaults (KUBETUNE_NETWORK_POLICY...)
        self.start()

    def start(self) -> None:
        from .controlplane.cluster import _free_port

        self.metrics_port, self.health_port = _free_port(), _free_port()
        self.handle = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune_operator"], stdout=self.handle, stderr=subprocess.STDOUT,
            # One namespace: the session's control plane also holds the 2480 catalogue jobs of test_controlplane.
            env={**self.cluster.env(), "KUBECONFIG": str(self.kubeconfig), "KUBETUNE_NAMESPACE": self.namespace,
                 "PYTHONUNBUFFERED": "1",
                 "KUBETUNE_OPERATOR_METRICS_PORT": str(self.metrics_port),
                 "KUBETUNE_OPERATOR_HEALTH": f"http://127.0.0.1:{self.health_port}/healthz", **self.env})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.handle.close()


def install_chart_rbac(cluster, work: Path, namespace: str = NS, *helm_args: str) -> Path:
    """The chart's ServiceAccount and RBAC for a single-namespace install watching `namespace`; a kubeconfig with its
    token."""
    rendered = subprocess.run(
        [str(BIN / "helm"), "template", OPERATOR_ACCOUNT, str(REPO / "charts" / "kubetune"), "-n", OPERATOR_NAMESPACE,
         "--set", f"operator.watchNamespace={namespace}", "--show-only", "templates/serviceaccount.yaml",
         "--show-only", "templates/rbac.yaml", *helm_args], capture_output=True, text=True, check=True).stdout
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input=rendered)
    token = cluster.kubectl("create", "token", OPERATOR_ACCOUNT, "-n", OPERATOR_NAMESPACE,
                            "--duration=6h").stdout.strip()
    return cluster.kubeconfig_for(token, work / "operator-kubeconfig")


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    cluster.kubectl("create", "namespace", NS, check=False)
    work = tmp_path_factory.mktemp("operator")
    op = Operator(cluster, work / "operator.log", install_chart_rbac(cluster, work))
    yield op
    op.stop()
    assert "Traceback" not in op.log.read_text(), op.log.read_text()[-4000:]


def _create(cluster, name: str, doc: dict | None = None, **spec) -> None:
    doc = json.loads(json.dumps(doc or FTJ))
    doc["metadata"] = {"name": name, "namespace": NS}
    for key, value in spec.items():
        doc["spec"][key] = value
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


def _status(cluster, kind: str, name: str) -> dict:
    return cluster.get_json("-n", NS, kind, name).get("status") or {}


def _wait_phase(cluster, kind: str, name: str, phases: tuple[str, ...], timeout: float = 60) -> dict:
    cluster.wait_for(lambda: _status(cluster, kind, name).get("phase") in phases, f"{kind} {name} in {phases}",
                     timeout)
    return _status(cluster, kind, name)


def _events(cluster, name: str) -> list[str]:
    items = cluster.get_json("-n", NS, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in items]


def test_finetunejob_runs_to_succeeded_with_its_children(cluster, operator):
    _create(cluster, "happy")
    status = _wait_phase(cluster, "ftj", "happy", ("Succeeded", "Failed"))
    assert status["phase"] == "Succeeded" and status["restarts"] == 0 and status["completionTime"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Created"] == "True" and conditions["Succeeded"] == "True"
    assert status["observedGeneration"] == 1
    job = cluster.get_json("-n", NS, "job", "happy-a0")
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == \
        ("Indexed", 2, 2, 0)
    pod = spec["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ADDR"] == "happy-a0-0.happy-workers" and env["NNODES"] == "2" and env["NPROC_PER_NODE"] == "1"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"
    for kind, name in (("service", "happy-workers"), ("configmap", "happy-config"), ("role", "happy-runner"),
                       ("rolebinding", "happy-runner"), ("serviceaccount", "happy-runner")):
        child = cluster.get_json("-n", NS, kind, name)
        assert child["metadata"]["labels"]["kubetune.io/finetunejob"] == "happy", kind
    assert cluster.get_json("-n", NS, "service", "happy-workers")["spec"]["clusterIP"] == "None"
    assert {"Running", "Succeeded"} <= set(_events(cluster, "happy"))
    table = cluster.kubectl("get", "-n", NS, "ftj", "happy").stdout
    assert "Succeeded" in table


def test_a_failed_pod_restarts_the_whole_gang_then_fails_after_max_restarts(cluster, operator):
    _create(cluster, "fails-once", runPolicy={"maxRestarts": 2})
    status = _wait_phase(cluster, "ftj", "fails-once", ("Succeeded", "Failed"))
    assert status["phase"] == "Succeeded" and status["restarts"] == 1
    assert cluster.kubectl("get", "-n", NS, "job", "fails-once-a0", check=False).returncode != 0  # old gang deleted
    _create(cluster, "always-fails", runPolicy={"maxRestarts": 2})
    status = _wait_phase(cluster, "ftj", "always-fails", ("Succeeded", "Failed"), timeout=90)
    assert status["phase"] == "Failed" and status["restarts"] == 2
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "always-fails-a2" in failed["message"] and "always-fails-a2-" in failed["message"]  # names the pod
    assert "Restarting" in _events(cluster, "always-fails")


def test_failures_are_handled_by_cause(cluster, operator):
    """docs/operator.md "Failures and restarts": an eviction restarts the gang without using maxRestarts; a user
    error (exit 2) and an OOM kill fail at once with the pod's own words; evictions past maxDisruptions fail."""
    _create(cluster, "evicted-once", runPolicy={"maxRestarts": 0})
    _create(cluster, "bad-data", runPolicy={"maxRestarts": 3})
    _create(cluster, "oom-killed", runPolicy={"maxRestarts": 3})
    _create(cluster, "evicted-always", runPolicy={"maxRestarts": 3, "maxDisruptions": 2})

    status = _wait_phase(cluster, "ftj", "evicted-once", ("Succeeded", "Failed"))
    assert (status["phase"], status["restarts"], status["disruptions"]) == ("Succeeded", 0, 1), status
    assert status["lastFailure"]["cause"] == "Disruption" and "EvictionByEvictionAPI" in status["lastFailure"]["message"]
    assert cluster.get_json("-n", NS, "job", "evicted-once-a1")["spec"]["template"]["metadata"]["labels"][
        "kubetune.io/attempt"] == "1"

    status = _wait_phase(cluster, "ftj", "bad-data", ("Succeeded", "Failed"))
    assert (status["phase"], status["restarts"]) == ("Failed", 0), status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "UserError" and "row 17: not valid JSON" in failed["message"]
    assert status["lastFailure"]["exitCode"] == 2 and status["lastFailure"]["pod"].startswith("bad-data-a0-")

    status = _wait_phase(cluster, "ftj", "oom-killed", ("Succeeded", "Failed"))
    assert (status["phase"], status["restarts"], status["lastFailure"]["cause"]) == ("Failed", 0, "OutOfMemory")
    assert "OOMKilled" in status["message"] and "resources.memory" in status["message"]

    status = _wait_phase(cluster, "ftj", "evicted-always", ("Succeeded", "Failed"), timeout=90)
    assert (status["phase"], status["restarts"], status["disruptions"]) == ("Failed", 0, 2), status
    assert "maxDisruptions (2)" in status["message"] and "DeletionByTaintManager" in status["message"]
    for name in ("evicted-once", "bad-data", "oom-killed", "evicted-always"):
        cluster.kubectl("delete", "-n", NS, "ftj", name, "--wait=false")


def test_a_job_the_apiserver_refuses_fails_with_its_words(cluster, operator):
    _create(cluster, "bad-toleration", resources={"nodes": 1, "gpusPerNode": 1,
                                                  "tolerations": [{"key": "gpu", "operator": "Sometimes"}]})
    status = _wait_phase(cluster, "ftj", "bad-toleration", ("Failed",))
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Rejected"
    assert 'tolerations[0].operator: Unsupported value: "Sometimes"' in failed["message"], failed["message"]
    assert "Rejected" in _events(cluster, "bad-toleration")
    cluster.kubectl("delete", "-n", NS, "ftj", "bad-toleration")


def test_suspend_deletes_the_pods_and_resume_recreates_them(cluster, operator):
    _create(cluster, "suspends")
    _wait_phase(cluster, "ftj", "suspends", ("Running",))
    suspend = '{"spec":{"runPolicy":{"suspend":%s}}}'
    cluster.kubectl("patch", "-n", NS, "ftj", "suspends", "--type=merge", "-p", suspend % "true")
    status = _wait_phase(cluster, "ftj", "suspends", ("Suspended",))
    assert any(c["type"] == "Suspended" and c["status"] == "True" for c in status["conditions"])
    cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "job", "suspends-a0", check=False).returncode != 0,
                     "the suspended job's Job to go", 30)
    cluster.kubectl("patch", "-n", NS, "ftj", "suspends", "--type=merge", "-p", suspend % "false")
    _wait_phase(cluster, "ftj", "suspends", ("Running",))


def test_ttl_deletes_a_finished_job(cluster, operator):
    _create(cluster, "ttl", runPolicy={"ttlSecondsAfterFinished": 1})
    cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "ftj", "ttl", check=False).returncode != 0,
                     "the FineTuneJob to be deleted after its TTL", 120)


def test_ttl_waits_for_the_exports(cluster, operator):
    """The export ConvertJobs are the job's children: the TTL deletes the job only once they are done."""
    _create(cluster, "ttl-export", runPolicy={"ttlSecondsAfterFinished": 0}, export={"adapter": True})
    _wait_phase(cluster, "ftj", "ttl-export", ("Succeeded",))
    token = cluster.kubectl("create", "token", "ttl-export-runner", "-n", NS).stdout.strip()
    assert _patch_status_as(cluster, token, "ttl-export", {"latestCheckpoint": {"step": 2,
                                                                               "uri": "s3://ckpt/run/iter_2"}}) == 200
    _wait_phase(cluster, "cvj", "ttl-export-export-adapter", ("Running",))  # its pod never finishes
    time.sleep(12)  # the TTL timer (every 5 s) has looked at least twice
    assert cluster.kubectl("get", "-n", NS, "ftj", "ttl-export", check=False).returncode == 0
    cluster.kubectl("patch", "-n", NS, "cvj", "ttl-export-export-adapter", "--subresource=status", "--type=merge",
                    "-p", '{"status":{"phase":"Succeeded"}}')
    cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "ftj", "ttl-export", check=False).returncode != 0,
                     "the FineTuneJob to be deleted once its export is done", 60)


def test_a_run_past_its_deadline_fails_without_restarting(cluster, operator):
    _create(cluster, "deadline", runPolicy={"maxRestarts": 2, "activeDeadlineSeconds": 3})  # its pods never finish
    status = _wait_phase(cluster, "ftj", "deadline", ("Succeeded", "Failed"), timeout=90)
    assert status["phase"] == "Failed" and status["restarts"] == 0
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds (3 s)" in failed["message"]


def test_delete_garbage_collects_the_children(cluster, operator):
    _create(cluster, "holds")
    _wait_phase(cluster, "ftj", "holds", ("Running",))
    cluster.kubectl("delete", "-n", NS, "ftj", "holds")
    cluster.wait_for(lambda: not cluster.get_json("-n", NS, "pods,jobs,services,configmaps,roles",
                                                  "-l", "kubetune.io/finetunejob=holds")["items"],
                     "children of a deleted FineTuneJob to be collected", 90)


def test_operator_restart_converges_without_duplicates(cluster, operator):
    operator.stop(signal.SIGKILL)  # killed mid-work, like an evicted pod
    _create(cluster, "survivor")
    time.sleep(1)
    operator.start()
    _wait_phase(cluster, "ftj", "survivor", ("Running",))
    jobs = cluster.get_json("-n", NS, "jobs", "-l", "kubetune.io/finetunejob=survivor")["items"]
    assert [j["metadata"]["name"] for j in jobs] == ["survivor-a0"]
    operator.stop()
    operator.start()  # a second restart re-applies the same children and keeps the status
    time.sleep(5)
    assert len(cluster.get_json("-n", NS, "jobs", "-l", "kubetune.io/finetunejob=survivor")["items"]) == 1
    assert _status(cluster, "ftj", "survivor")["phase"] == "Running"


def _patch_status_as(cluster, token: str, name: str, status: dict | None = None) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    url = f"{cluster.url}/apis/kubetune.io/v1alpha1/namespaces/{NS}/finetunejobs/{name}/status"
    body = json.dumps({"status": status or {"progress": {"step": 7, "totalSteps": 20, "stepDisplay": "7/20",
                                                         "loss": 0.5}}})
    request = urllib.request.Request(url, data=body.encode(), method="PATCH", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_rank0_may_patch_its_own_status_only(cluster, operator):
    _create(cluster, "rbac")
    _wait_phase(cluster, "ftj", "rbac", ("Running",))
    token = cluster.kubectl("create", "token", "rbac-runner", "-n", NS).stdout.strip()
    assert _patch_status_as(cluster, token, "rbac") == 200
    assert _status(cluster, "ftj", "rbac")["progress"]["stepDisplay"] == "7/20"
    assert "7/20" in cluster.kubectl("get", "-n", NS, "ftj", "rbac").stdout
    assert _patch_status_as(cluster, token, "happy") == 403


def test_invalid_spec_fails_with_a_condition(cluster, operator):
    doc = json.loads(json.dumps(FTJ))
    doc["spec"]["baseConfig"] = "no_such_config_e3"  # the apiserver cannot know the catalogue: the operator does
    _create(cluster, "unknown-base", doc)
    status = _wait_phase(cluster, "ftj", "unknown-base", ("Failed",))
    assert "baseConfig" in status["message"]
    assert next(c for c in status["conditions"] if c["type"] == "Failed")["reason"] == "InvalidSpec"


def test_children_names_that_are_taken_are_never_overwritten_or_adopted(cluster, operator):
    """Issue 26 H6: a FineTuneJob named so that its children match an existing ConfigMap, Role and RoleBinding made
    the operator's forced apply rewrite all three, and deleting the job garbage-collected them."""
    theirs = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "squat-config", "namespace": NS},
         "data": {"app.yaml": "mine"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "squat-runner", "namespace": NS},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "squat-runner", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "squat-runner"},
         "subjects": [{"kind": "User", "name": "alice"}]},
    ]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": theirs}))
    before = {d["kind"]: cluster.get_json("-n", NS, d["kind"].lower(), d["metadata"]["name"]) for d in theirs}
    _create(cluster, "squat")
    status = _wait_phase(cluster, "ftj", "squat", ("Failed",))
    condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "NotOwned" and "is not owned by this resource" in condition["message"]
    assert "NotOwned" in _events(cluster, "squat")
    assert not cluster.get_json("-n", NS, "jobs", "-l", "kubetune.io/finetunejob=squat")["items"]
    cluster.kubectl("delete", "-n", NS, "ftj", "squat")
    time.sleep(5)  # what the garbage collector would have taken by now
    for doc in theirs:
        now = cluster.get_json("-n", NS, doc["kind"].lower(), doc["metadata"]["name"])
        assert "ownerReferences" not in now["metadata"], now["metadata"]
        for field in ("data", "rules", "subjects", "roleRef"):
            assert now.get(field) == before[doc["kind"]].get(field)
    cluster.kubectl("delete", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": theirs}))


def test_pods_refused_by_pod_security_are_reported(cluster, operator):
    """Issue 26 M9: a job whose pods Pod Security refuses stayed "Initializing" with no reason."""
    cluster.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=baseline", "--overwrite")
    try:
        _create(cluster, "refused", resources={"nodes": 1, "gpusPerNode": 1,
                                               "volumes": [{"name": "host", "hostPath": {"path": "/var/log"}}],
                                               "volumeMounts": [{"name": "host", "mountPath": "/host"}]})

        def refused() -> dict | None:
            return next((c for c in _status(cluster, "ftj", "refused").get("conditions", [])
                         if c["type"] == "PodsCreated"), None)

        cluster.wait_for(lambda: refused() is not None, "the refusal to be reported", 90)
        condition = refused()
        assert condition["status"] == "False" and condition["reason"] == "FailedCreate"
        assert "violates PodSecurity" in condition["message"] and "hostPath" in condition["message"]
        assert _status(cluster, "ftj", "refused")["phase"] in ("Pending", "Initializing")
        assert "PodsRefused" in _events(cluster, "refused")
    finally:
        cluster.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce-")
        cluster.kubectl("delete", "-n", NS, "ftj", "refused", "--ignore-not-found", check=False)


def test_a_spec_too_large_to_store_fails_with_a_reason(cluster, operator):
    """Issue 26 M9: a 1.1 MB spec was accepted by the apiserver, then the operator retried forever with no phase
    or event (kopf's annotation and the spec ConfigMap cannot hold it)."""
    doc = json.loads(json.dumps(FTJ))
    doc["metadata"] = {"name": "huge", "namespace": NS}
    doc["spec"]["dataset"]["system"] = "x" * (1100 << 10)
    cluster.kubectl("create", "-f", "-", input=json.dumps(doc))  # apply would store it again in an annotation
    status = _wait_phase(cluster, "ftj", "huge", ("Failed",), timeout=60)
    condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "SpecTooLarge" and "at most 128 KiB" in condition["message"]
    assert "SpecTooLarge" in _events(cluster, "huge")
    assert not cluster.get_json("-n", NS, "configmaps,jobs", "-l", "kubetune.io/finetunejob=huge")["items"]
    cluster.kubectl("delete", "-n", NS, "ftj", "huge")


def test_convertjob_runs_to_succeeded(cluster, operator):
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ConvertJob",
           "spec": {"operation": "merge", "source": {"checkpointUri": "s3://ckpt/run/export/hf"},
                    "baseModel": {"uri": "hf://org/model"}, "output": {"uri": "s3://models/merged/"}}}
    _create(cluster, "merge-it", doc)
    status = _wait_phase(cluster, "cvj", "merge-it", ("Succeeded", "Failed"))
    assert status["phase"] == "Succeeded" and status["outputUri"] == "s3://models/merged/"
    job = cluster.get_json("-n", NS, "job", "merge-it-convert")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == ["kubetune", "convert", "merge"]


def test_chatendpoint_becomes_ready(cluster, operator):
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint",
           "spec": {"model": {"uri": "s3://models/merged/"}, "promptTemplate": "internlm2_chat", "replicas": 2,
                    "autoscaling": {"minReplicas": 2, "maxReplicas": 4}, "auth": {"apiKeySecretRef": "chat-keys"}}}
    _create(cluster, "chat", doc)
    status = _wait_phase(cluster, "chat", "chat", ("Ready", "Failed"), timeout=90)
    assert status["phase"] == "Ready" and status["url"] == f"http://chat.{NS}.svc/v1"
    deployment = cluster.get_json("-n", NS, "deployment", "chat")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["kubetune", "serve"] and "--api-key-file" in container["command"]
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)
    assert cluster.get_json("-n", NS, "hpa", "chat")["spec"]["maxReplicas"] == 4
    assert cluster.get_json("-n", NS, "pdb", "chat")["spec"]["maxUnavailable"] == 1
    # The scale subresource names the pods, so an HPA or KEDA on the ChatEndpoint itself can count them.
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/kubetune.io/v1alpha1/namespaces/{NS}/chatendpoints/chat/scale").stdout)
    assert scale["status"]["selector"] == "app.kubernetes.io/component=server,kubetune.io/chatendpoint=chat"
    pods = cluster.get_json("-n", NS, "pods", "-l", scale["status"]["selector"])["items"]
    assert len(pods) == cluster.get_json("-n", NS, "deployment", "chat")["status"]["replicas"] >= 1


def test_end_to_end_the_rendered_pods_really_train(cluster, operator, tiny_dir, tmp_path):
    """The Job the operator rendered, run for real: its command and environment (the storage Secret resolved as a
    kubelet would) for 2 ranks as local processes (CPU, gloo, the tiny model), checkpoints synced to the test S3
    server, progress reported into the FineTuneJob with the job's own ServiceAccount token; then the pods' exit (what
    a kubelet would report) makes the FineTuneJob Succeeded."""
    import base64
    import os
    import socket

    import boto3

    from .s3server import ACCESS, SECRET, start_versitygw
    from .test_train import alpaca_rows

    gateway, endpoint = start_versitygw(tmp_path / "s3")
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                      region_name="us-east-1")
    s3.create_bucket(Bucket="e2e-ckpt")
    cluster.kubectl("create", "secret", "generic", "s3-e2e", "-n", NS, f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS}",
                    f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}")

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in alpaca_rows(16)) + "\n")
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "spec": {
        "model": {"uri": str(tiny_dir)},
        "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}},
        "dataset": {"uri": str(data), "format": "alpaca", "promptTemplate": "default", "maxLength": 64,
                    "packToMaxLength": False},
        "training": {"maxSteps": 6, "batchSize": 1, "accumulativeCounts": 1, "precision": "fp32",
                     "gradientCheckpointing": False, "logEverySteps": 1},
        "checkpoints": {"everySteps": 3, "keep": 2, "uri": "s3://e2e-ckpt/run/"},
        "storage": {"secretRef": "s3-e2e", "endpoint": endpoint, "region": "us-east-1", "pathStyle": True},
        "resources": {"nodes": 2, "gpusPerNode": 0}}}
    _create(cluster, "e2e", doc)
    _wait_phase(cluster, "ftj", "e2e", ("Running",))
    job = cluster.get_json("-n", NS, "job", "e2e-a0")
    container = job["spec"]["template"]["spec"]["containers"][0]
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "job.yaml"
    config.write_text(cluster.get_json("-n", NS, "configmap", "e2e-config")["data"]["job.yaml"])
    token = cluster.kubectl("create", "token", "e2e-runner", "-n", NS).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = cluster.get_json("-n", NS, "secret", "s3-e2e")["data"]
    resolved = {}
    for e in container["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if "value" in e:
            resolved[e["name"]] = e["value"]
        elif ref and ref["key"] in secret:  # optional keys the Secret lacks stay unset, as in a pod
            resolved[e["name"]] = base64.b64decode(secret[ref["key"]]).decode()
    assert resolved["AWS_ACCESS_KEY_ID"] == ACCESS and "AWS_SESSION_TOKEN" not in resolved
    procs = []
    for rank in range(2):
        env = dict(resolved)
        env |= {"NODE_RANK": str(rank), "ADDR": "127.0.0.1", "PORT": str(port),
                "HOME": str(tmp_path / f"home{rank}"), "KUBETUNE_CACHE": str(tmp_path / f"cache{rank}"),
                "KUBETUNE_STATUS_API": cluster.url, "KUBETUNE_STATUS_TOKEN": token, "KUBETUNE_STATUS_INSECURE": "1"}
        argv = [a.replace("/etc/kubetune/job.yaml", str(config)).replace("/work/run", str(tmp_path / f"work{rank}"))
                for a in container["command"]]
        assert argv[:2] == ["kubetune", "train"]
        procs.append(subprocess.Popen([sys.executable, "-m", "kubetune", *argv[1:]], env={**os.environ, **env},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], \
            "\n".join(f"rank {i}: {o[-2500:]}" for i, o in enumerate(outputs))
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="e2e-ckpt", Prefix="run/").get("Contents", [])]
    finally:
        gateway.kill()
        gateway.wait()
    assert any(k.startswith("run/iter_6/") for k in keys) and any(k.startswith("run/iter_3/") for k in keys), \
        outputs[0][-3000:]
    status = _status(cluster, "ftj", "e2e")
    assert status["progress"]["step"] == 6 and status["progress"]["stepDisplay"] == "6/6"
    assert status["latestCheckpoint"] == {**status["latestCheckpoint"], "step": 6, "uri": "s3://e2e-ckpt/run/iter_6"}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for pod in cluster.get_json("-n", NS, "pods", "-l", "job-name=e2e-a0")["items"]:
        cluster.kubectl("patch", "-n", NS, "pod", pod["metadata"]["name"], "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": {"phase": "Succeeded", "containerStatuses": [{
                            "name": "trainer", "image": container["image"], "imageID": "", "ready": False,
                            "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                                        "startedAt": now, "finishedAt": now}}}]}}))
    status = _wait_phase(cluster, "ftj", "e2e", ("Succeeded", "Failed"))
    assert status["phase"] == "Succeeded" and status["progress"]["step"] == 6


def test_export_after_success_and_endpoints_follow_the_adapter(cluster, operator):
    _create(cluster, "exports", export={"adapter": True, "merge": True})
    _wait_phase(cluster, "ftj", "exports", ("Succeeded",))
    # pth_to_hf needs the job's checkpoint: report one as rank 0 would.
    token = cluster.kubectl("create", "token", "exports-runner", "-n", NS).stdout.strip()
    assert _patch_status_as(cluster, token, "exports", {"latestCheckpoint": {"step": 20,
                                                                            "uri": "s3://ckpt/run/iter_20"}}) == 200
    cluster.wait_for(lambda: (_status(cluster, "ftj", "exports").get("artifacts") or {}).get("merged"),
                     "both export ConvertJobs to finish", 90)
    artifacts = _status(cluster, "ftj", "exports")["artifacts"]
    assert artifacts == {"adapter": "s3://ckpt/run/export/hf", "merged": "s3://ckpt/run/export/merged"}
    assert cluster.get_json("-n", NS, "cvj", "exports-export-adapter")["metadata"]["ownerReferences"][0]["name"] == \
        "exports"
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint",
           "spec": {"model": {"uri": "hf://org/model"}, "adapters": [{"name": "emo", "fineTuneJobRef": "exports"}]}}
    _create(cluster, "follows", doc)
    _wait_phase(cluster, "chat", "follows", ("Ready",), timeout=90)
    # The pods serve the mounted endpoint, its adapter reference resolved to the job's export.
    endpoint = yaml.safe_load(cluster.get_json("-n", NS, "configmap", "follows-endpoint")["data"]["endpoint.yaml"])
    assert endpoint["spec"]["adapters"] == [{"name": "emo", "uri": "s3://ckpt/run/export/hf"}]
    pod = cluster.get_json("-n", NS, "deployment", "follows")["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][:3] == ["kubetune", "serve", "/work/models/endpoint.yaml"]
    assert pod["initContainers"][0]["command"][:3] == ["kubetune", "fetch", "/etc/kubetune/endpoint.yaml"]
    assert _status(cluster, "chat", "follows")["servedModel"] == "follows,emo"


def test_a_spec_change_to_a_running_job_is_surfaced(cluster, operator):
    _create(cluster, "changes")
    _wait_phase(cluster, "ftj", "changes", ("Running",))
    cluster.kubectl("patch", "-n", NS, "ftj", "changes", "--type=merge", "-p",
                    '{"spec":{"training":{"optimizer":{"lr":0.001}},"resources":{"memory":"64Gi"}}}')

    def surfaced() -> bool:
        conditions = _status(cluster, "ftj", "changes").get("conditions", [])
        return any(c["type"] == "SpecApplied" and c["status"] == "False" for c in conditions)

    cluster.wait_for(surfaced, "a SpecApplied=False condition", 60)
    status = _status(cluster, "ftj", "changes")
    assert status["phase"] == "Running" and status["observedGeneration"] == 2
    applied = next(c for c in status["conditions"] if c["type"] == "SpecApplied")
    assert "the apiserver said:" in applied["message"] and "field is immutable" in applied["message"]
    # What can never change is refused up front, by the CRD's transition rules.
    refused = cluster.kubectl("patch", "-n", NS, "ftj", "changes", "--type=merge", "-p",
                              '{"spec":{"model":{"uri":"hf://org/other"}}}', check=False)
    assert refused.returncode != 0 and "spec.model cannot change" in refused.stderr
    cluster.kubectl("delete", "-n", NS, "ftj", "changes")


def test_operator_metrics_and_health(cluster, operator):
    from prometheus_client.parser import text_string_to_metric_families

    _create(cluster, "metered")
    _wait_phase(cluster, "ftj", "metered", ("Succeeded",))
    cluster.wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz",
                                                    timeout=5).status == 200, "the operator's /healthz", 30)
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    phases = {s.labels["phase"]: s.value for s in families["kubetune_finetunejobs"].samples}
    assert phases.get("Succeeded", 0) >= 1
    results = {(s.labels["kind"], s.labels["result"]) for s in families["kubetune_reconcile"].samples
               if s.name == "kubetune_reconcile_total" and s.value > 0}
    assert ("FineTuneJob", "ok") in results
    for name in ("kubetune_reconcile_duration_seconds", "kubetune_job_restarts", "kubetune_job_queue_seconds",
                 "kubetune_job_duration_seconds"):
        assert name in families


def test_an_endpoint_rolls_to_a_newer_exported_adapter(cluster, operator):
    _create(cluster, "exports2", export={"adapter": False})
    _wait_phase(cluster, "ftj", "exports2", ("Succeeded",))
    cluster.kubectl("patch", "-n", NS, "ftj", "exports2", "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"artifacts": {"adapter": "s3://ckpt/v1/hf"}}}))
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint",
           "spec": {"model": {"uri": "hf://org/model"}, "adapters": [{"name": "emo", "fineTuneJobRef": "exports2"}]}}
    _create(cluster, "rolls", doc)
    _wait_phase(cluster, "chat", "rolls", ("Ready",), timeout=90)

    def adapter() -> str:
        config = cluster.get_json("-n", NS, "configmap", "rolls-endpoint")["data"]["endpoint.yaml"]
        return yaml.safe_load(config)["spec"]["adapters"][0]["uri"]

    def config_hash() -> str:
        template = cluster.get_json("-n", NS, "deployment", "rolls")["spec"]["template"]
        return template["metadata"]["annotations"]["kubetune.io/config-hash"]

    assert adapter() == "s3://ckpt/v1/hf"
    before = config_hash()
    cluster.kubectl("patch", "-n", NS, "ftj", "exports2", "--subresource=status", "--type=merge", "-p",
                    json.dumps({"status": {"artifacts": {"adapter": "s3://ckpt/v2/hf"}}}))
    cluster.wait_for(lambda: adapter() == "s3://ckpt/v2/hf", "the mounted endpoint to name the new adapter", 60)
    # The pod template changes with the ConfigMap: the Deployment rolls its pods onto the new adapter.
    cluster.wait_for(lambda: config_hash() != before, "the Deployment to roll to the new adapter", 60)
    assert "AdapterUpdated" in _events(cluster, "rolls")


def test_a_work_claim_per_job_and_a_deployment_an_older_operator_left(cluster, operator):
    """`workVolume.create` makes one claim per job, owned by it. A ChatEndpoint whose Deployment an older operator
    made (pods selected by app.kubernetes.io/instance, an immutable selector) gets it replaced, not a failing
    apply."""
    _create(cluster, "claimed", resources={"nodes": 2, "gpusPerNode": 1, "workVolume": {"create": True, "size": "10Gi"}})
    cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "pvc", "claimed-work", check=False).returncode == 0,
                     "the job's work claim", 60)
    claim = cluster.get_json("-n", NS, "pvc", "claimed-work")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # 2 nodes share it
    assert claim["metadata"]["ownerReferences"][0]["name"] == "claimed"

    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint",
           "spec": {"model": {"uri": "s3://models/merged/"}, "replicas": 1}}
    _create(cluster, "legacy", doc)
    cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "deployment", "legacy", check=False).returncode == 0,
                     "the endpoint's Deployment", 60)
    operator.stop()
    current = cluster.get_json("-n", NS, "deployment", "legacy")
    old_labels = {"app.kubernetes.io/instance": "legacy", "app.kubernetes.io/component": "server"}
    template = current["spec"]["template"]
    template["metadata"]["labels"] = old_labels
    cluster.kubectl("delete", "-n", NS, "deployment", "legacy", "--wait=true")
    cluster.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "legacy", "namespace": NS, "labels": old_labels,
                     "ownerReferences": current["metadata"]["ownerReferences"]},
        "spec": {"replicas": 1, "selector": {"matchLabels": old_labels}, "template": template}}))
    old_uid = cluster.get_json("-n", NS, "deployment", "legacy")["metadata"]["uid"]
    operator.start()
    cluster.kubectl("patch", "-n", NS, "chat", "legacy", "--type=merge", "-p", '{"spec": {"replicas": 2}}')

    def replaced() -> bool:  # one read: between an existence check and a second read the operator may replace it
        read = cluster.kubectl("get", "-n", NS, "deployment", "legacy", "-o", "json", check=False)
        got = json.loads(read.stdout) if read.returncode == 0 else None
        return bool(got) and got["metadata"]["uid"] != old_uid and got["spec"]["replicas"] == 2
    cluster.wait_for(replaced, "the old Deployment replaced", 90)
    selector = cluster.get_json("-n", NS, "deployment", "legacy")["spec"]["selector"]["matchLabels"]
    assert selector == {"kubetune.io/chatendpoint": "legacy", "app.kubernetes.io/component": "server"}
    for kind, name in (("ftj", "claimed"), ("chat", "legacy")):
        cluster.kubectl("delete", "-n", NS, kind, name, "--wait=false")


def _granted_rules() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the chart grants the operator, for the single-namespace install the fixture uses."""
    rendered = subprocess.run(
        [str(BIN / "helm"), "template", OPERATOR_ACCOUNT, str(REPO / "charts" / "kubetune"), "-n", OPERATOR_NAMESPACE,
         "--set", f"operator.watchNamespace={NS}", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True).stdout
    granted = set()
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] == "ClusterRole":
            for rule in doc["rules"]:
                granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return granted


def test_the_chart_rbac_is_exactly_what_the_operator_uses(cluster, operator):
    """Runs last: every request the operator made (the whole module, under the chart's account) was allowed, and
    every permission the chart grants was used by some request."""
    used, denied = set(), []
    for line in cluster.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef")
        if event["user"]["username"] != OPERATOR_USER or not ref:
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = (ref.get("apiGroup", ""), resource, event["verb"])
        code = event.get("responseStatus", {}).get("code")
        if code == 403:
            denied.append(key)
        used.add(key)
        if event["verb"] == "patch" and code == 201:  # server-side apply created it: authorized as `create` too
            used.add((key[0], key[1], "create"))
    assert not denied, f"the chart's RBAC lacks: {sorted(set(denied))}"
    unused = _granted_rules() - used
    assert not unused, f"the chart grants permissions the operator never used: {sorted(unused)}"
