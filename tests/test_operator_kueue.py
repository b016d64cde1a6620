"""The operator beside a real Kueue (v0.17.0, built from its Go module; tests/controlplane/kueue.py): queued jobs are
admitted by Kueue and the operator never takes `spec.suspend` back (not on its restart, not on a spec edit);
a higher-priority job preempts a lower one, which waits as Preempted without using a restart and runs again in the
same Job when re-admitted; ConvertJobs queue too. The operator runs under the chart's RBAC as rendered for a
cluster that serves Kueue's API."""

from __future__ import annotations

import json

import pytest

from . import podrun
from .controlplane.cluster import OPERATOR_USER
from .controlplane.kueue import LOCAL_QUEUE, start_kueue
from .test_operator import FTJ, Operator, install_chart_rbac

NS = "queued"


@pytest.fixture(scope="module")
def kueue(cluster):
    cluster.kubectl("create", "namespace", NS, check=False)
    running = start_kueue(cluster, NS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def operator(cluster, kueue, tmp_path_factory):
    work = tmp_path_factory.mktemp("operator-kueue")
    kubeconfig = install_chart_rbac(cluster, work, NS, "--api-versions", "kueue.x-k8s.io/v1beta2")
    op = Operator(cluster, work / "operator.log", kubeconfig, NS)
    yield op
    op.stop()
    assert "Traceback" not in op.log.read_text(), op.log.read_text()[-4000:]


def _create(cluster, name: str, priority: str = "low", **spec) -> None:
    doc = json.loads(json.dumps(FTJ))
    doc["metadata"] = {"name": name, "namespace": NS}
    doc["spec"]["runPolicy"] = {"queueName": LOCAL_QUEUE, "workloadPriorityClass": priority}
    doc["spec"].update(spec)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


def _status(cluster, name: str, kind: str = "ftj") -> dict:
    return cluster.get_json("-n", NS, kind, name).get("status") or {}


def _wait_phase(cluster, name: str, phases: tuple[str, ...], timeout: float = 90, kind: str = "ftj") -> dict:
    cluster.wait_for(lambda: _status(cluster, name, kind).get("phase") in phases, f"{kind} {name} in {phases}",
                     timeout)
    return _status(cluster, name, kind)


def _pods(cluster, job: str) -> dict[str, dict]:
    return {p["metadata"]["uid"]: p for p in cluster.get_json("-n", NS, "pods", "-l", f"job-name={job}")["items"]}


def _suspend_owners(job: dict) -> dict[str, str]:
    """Which field manager owns the Job's spec.suspend, by operation."""
    return {m["manager"]: m["operation"] for m in job["metadata"].get("managedFields", [])
            if "f:suspend" in (m.get("fieldsV1") or {}).get("f:spec", {})}


def test_a_queued_job_is_admitted_and_the_operator_never_takes_suspend_back(cluster, kueue, operator, tmp_path):
    _create(cluster, "queued")
    status = _wait_phase(cluster, "queued", ("Running",))
    assert status["restarts"] == 0
    job = cluster.get_json("-n", NS, "job", "queued-a0")
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == LOCAL_QUEUE and labels["kueue.x-k8s.io/priority-class"] == "low"
    assert job["spec"]["suspend"] is False
    # Admitted by Kueue: its flavor's node labels are in the pod template, and spec.suspend is Kueue's now.
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    owners = _suspend_owners(job)
    assert "kubetune-operator" not in owners or owners["kubetune-operator"] != "Apply", owners
    before = _pods(cluster, "queued-a0")
    assert len(before) == 2

    # An operator restart (resume handlers re-apply every child) and a spec edit that may change while running.
    operator.stop()
    operator.start()
    cluster.kubectl("patch", "-n", NS, "ftj", "queued", "--type=merge", "-p",
                    '{"spec":{"training":{"optimizer":{"lr":0.0005}}}}')
    cluster.wait_for(lambda: _status(cluster, "queued").get("observedGeneration") == 2,
                     "the operator to handle the edit", 60)
    after = cluster.get_json("-n", NS, "job", "queued-a0")
    assert after["metadata"]["uid"] == job["metadata"]["uid"] and after["spec"]["suspend"] is False
    pods = _pods(cluster, "queued-a0")
    assert pods.keys() == before.keys(), "a running pod was replaced"
    assert not any(p["metadata"].get("deletionTimestamp") for p in pods.values())
    assert _status(cluster, "queued")["phase"] == "Running"
    assert "kubetune-operator" not in _suspend_owners(after) or \
        _suspend_owners(after)["kubetune-operator"] != "Apply"
    cluster.kubectl("delete", "-n", NS, "ftj", "queued")


def test_a_higher_priority_job_preempts_a_lower_one_which_resumes_without_a_restart(cluster, kueue, operator):
    """The quota is 2 GPUs; each job asks for 2. The low-priority one runs; the high-priority one arrives and Kueue
    suspends the low one's Job; the high one runs and completes; the low one is admitted again, same Job."""
    _create(cluster, "low-priority", "low")
    _wait_phase(cluster, "low-priority", ("Running",))
    job_uid = cluster.get_json("-n", NS, "job", "low-priority-a0")["metadata"]["uid"]
    _create(cluster, "high-priority", "high")

    status = _wait_phase(cluster, "low-priority", ("Preempted",))
    preempted = next(c for c in status["conditions"] if c["type"] == "Preempted")
    assert preempted["status"] == "True" and preempted["reason"] == "Preempted", preempted
    assert "prioritization" in preempted["message"] or "accommodate" in preempted["message"], preempted
    assert (status["restarts"], status["disruptions"]) == (0, 0)
    table = cluster.kubectl("get", "-n", NS, "ftj", "low-priority").stdout
    assert "Preempted" in table
    described = cluster.kubectl("describe", "-n", NS, "ftj", "low-priority").stdout
    assert "preempted by Kueue" in described

    assert _wait_phase(cluster, "high-priority", ("Succeeded",), timeout=120)["restarts"] == 0
    status = _wait_phase(cluster, "low-priority", ("Running",), timeout=120)
    assert (status["restarts"], status["disruptions"]) == (0, 0)
    assert cluster.get_json("-n", NS, "job", "low-priority-a0")["metadata"]["uid"] == job_uid
    readmitted = next(c for c in status["conditions"] if c["type"] == "Preempted")
    assert (readmitted["status"], readmitted["reason"]) == ("False", "Readmitted")
    for name in ("low-priority", "high-priority"):
        cluster.kubectl("delete", "-n", NS, "ftj", name)


def test_a_queued_convertjob_waits_for_admission(cluster, kueue, operator):
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ConvertJob", "metadata": {"name": "merge", "namespace": NS},
           "spec": {"operation": "merge", "source": {"checkpointUri": "s3://ckpt/run/export/hf"},
                    "baseModel": {"uri": "hf://org/model"}, "output": {"uri": "s3://ckpt/run/merged"},
                    "queueName": LOCAL_QUEUE, "workloadPriorityClass": "high"}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    assert _wait_phase(cluster, "merge", ("Succeeded", "Failed"), kind="cvj")["phase"] == "Succeeded"
    job = cluster.get_json("-n", NS, "job", "merge-convert")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == LOCAL_QUEUE
    workloads = cluster.get_json("-n", NS, "workloads", "-l", f"kueue.x-k8s.io/job-uid={job['metadata']['uid']}")
    assert [(w["spec"]["priorityClassRef"]["name"], w["spec"]["priority"]) for w in workloads["items"]] == \
        [("high", 1000)]


def test_the_operator_read_kueue_workloads_under_the_charts_rules(cluster, operator):
    used = set()
    for line in cluster.audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if event["user"]["username"] == OPERATOR_USER and ref.get("apiGroup") == "kueue.x-k8s.io":
            used.add((ref["resource"], event["verb"], event.get("responseStatus", {}).get("code")))
    assert used == {("workloads", "list", 200)}, used


def _tree(root: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class Gang:
    """The rendered trainer pods of one Job run as a kubelet would run them: each pod's command and environment
    (Secret keys resolved) as a local process in its own session, 2 pods x 1 rank on CPU (gloo), a fresh work dir
    per pod (an emptyDir), the S3 checkpoints shared. `stop` does what the kubelet does to a deleted pod: SIGTERM to
    the container's PID 1 (the re-launching parent), then the exit code."""

    def __init__(self, cluster, job_name: str, tmp, config, secret: dict, port: int, label: str, extra: dict):
        container = cluster.get_json("-n", NS, "job", job_name)["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][:2] == ["kubetune", "train"] and "--resume" in container["command"]
        self.procs = [podrun.start(container, secret, {"/etc/kubetune/job.yaml": config,
                                                       "/work/run": tmp / f"work-{label}{rank}"},
                                   {**extra, "NODE_RANK": str(rank), "ADDR": "127.0.0.1", "PORT": str(port),
                                    "HOME": str(tmp / f"home-{label}{rank}"), "KUBETUNE_CACHE": str(tmp / f"cache{rank}")})
                      for rank in range(2)]
        self.work0 = tmp / f"work-{label}0"

    def steps(self) -> int:
        found = list(self.work0.glob("*/vis_data/scalars.json"))
        return len(found[0].read_text().splitlines()) if found else 0

    def pause(self) -> None:
        """Freeze every process of the pods (torchrun's workers run in sessions of their own)."""
        import os
        import signal

        self.frozen = [pid for p in self.procs for pid in _tree(p.pid)]
        for pid in self.frozen:
            os.kill(pid, signal.SIGSTOP)

    def stop(self) -> list[int]:
        import os
        import signal

        for pid in getattr(self, "frozen", []):
            os.kill(pid, signal.SIGCONT)
        for p in self.procs:
            p.send_signal(signal.SIGTERM)  # PID 1 only, as the kubelet does
        return self.wait()

    def wait(self) -> list[int]:
        self.outputs = [p.communicate(timeout=600)[0] for p in self.procs]
        return [p.returncode for p in self.procs]


def test_a_preempted_training_loses_nothing_and_ends_with_the_weights_of_an_uninterrupted_run(
        cluster, kueue, operator, tiny_dir, tmp_path):
    """The low-priority job's rendered pods really train (2 ranks, checkpoints to the test S3 server). A
    high-priority job arrives; Kueue suspends the low one's Job and its pods are deleted; as a kubelet would, the
    harness sends each pod's process SIGTERM: every rank finishes the same step, the checkpoint of it is published,
    and each pod exits 75. The high-priority job runs and completes; Kueue admits the low one's same Job again; its
    new pods (empty work dirs) resume from that checkpoint and finish. The adapter equals that of the same training
    never interrupted, and no restart was used."""
    import socket
    import time

    import boto3
    import torch
    from safetensors.torch import load
    from kubetune.errors import ExitCode

    from .s3server import ACCESS, SECRET, start_versitygw

    gateway, endpoint = start_versitygw(tmp_path / "s3")
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                          region_name="us-east-1")
        s3.create_bucket(Bucket="preempt")
        cluster.kubectl("create", "secret", "generic", "s3-preempt", "-n", NS,
                        f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS}", f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}")
        spec = {**podrun.tiny_lora_spec(tiny_dir, tmp_path, 48, maxSteps=40, seed=5),
                "checkpoints": {"everySteps": 1000, "keep": 2, "uri": "s3://preempt/run/"},
                "storage": {"secretRef": "s3-preempt", "endpoint": endpoint, "region": "us-east-1",
                            "pathStyle": True},
                "resources": {"nodes": 2, "gpusPerNode": 1}, "export": {"adapter": False}}
        _create(cluster, "preempted-run", "low", **spec)
        _wait_phase(cluster, "preempted-run", ("Running",))
        (tmp_path / "etc").mkdir()
        config = tmp_path / "etc" / "job.yaml"
        config.write_text(cluster.get_json("-n", NS, "configmap", "preempted-run-config")["data"]["job.yaml"])
        secret = cluster.get_json("-n", NS, "secret", "s3-preempt")["data"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]

        token = cluster.kubectl("create", "token", "preempted-run-runner", "-n", NS).stdout.strip()
        report = {"KUBETUNE_STATUS_API": cluster.url, "KUBETUNE_STATUS_TOKEN": token, "KUBETUNE_STATUS_INSECURE": "1"}
        first = Gang(cluster, "preempted-run-a0", tmp_path, config, secret, port, "a", report)
        deadline = time.monotonic() + 300
        while first.steps() < 3 and time.monotonic() < deadline and all(p.poll() is None for p in first.procs):
            time.sleep(0.05)
        first.pause()  # hold the run mid-way while Kueue decides (a real scheduler takes its time too)
        paused_at = first.steps()
        _create(cluster, "urgent", "high")
        _wait_phase(cluster, "preempted-run", ("Preempted",))
        cluster.wait_for(lambda: not cluster.get_json("-n", NS, "pods", "-l", "job-name=preempted-run-a0")["items"],
                         "the preempted Job's pods to be deleted", 60)
        codes = first.stop()
        assert codes == [ExitCode.PREEMPTED, ExitCode.PREEMPTED], "\n".join(o[-2500:] for o in first.outputs)
        stopped_at = {int(line.split("stopped by SIGTERM at step ")[1].split("/")[0])
                      for o in first.outputs for line in o.splitlines() if "stopped by SIGTERM at step" in line}
        assert len(stopped_at) == 1, first.outputs  # every rank stopped after the same step
        step = stopped_at.pop()
        assert paused_at <= step < 40
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="preempt", Prefix="run/").get("Contents", [])]
        assert f"run/iter_{step}/manifest.json" in keys  # complete and published before the pods exited

        assert _wait_phase(cluster, "urgent", ("Succeeded",), timeout=120)["phase"] == "Succeeded"
        _wait_phase(cluster, "preempted-run", ("Running",), timeout=120)
        second = Gang(cluster, "preempted-run-a0", tmp_path, config, secret, port, "b", report)
        assert second.wait() == [0, 0], "\n".join(o[-2500:] for o in second.outputs)
        assert "resumed from" in second.outputs[0] and f"at step {step}" in second.outputs[0]
        status = _status(cluster, "preempted-run")
        assert (status["restarts"], status["disruptions"]) == (0, 0)

        # The same training, never interrupted: the same two pods' commands (2 nodes x 1 rank: the reduction order
        # is part of the result), their own prefix in the bucket.
        straight_config = tmp_path / "etc" / "straight.yaml"
        straight_config.write_text(config.read_text().replace("s3://preempt/run/", "s3://preempt/straight/"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        straight = Gang(cluster, "preempted-run-a0", tmp_path, straight_config, secret, port, "s",
                        {"KUBETUNE_STATUS_TARGET": ""})
        assert straight.wait() == [0, 0], "\n".join(o[-2500:] for o in straight.outputs)
        read = lambda key: load(s3.get_object(Bucket="preempt", Key=key)["Body"].read())  # noqa: E731
        resumed = read("run/iter_40/model/adapter_model.safetensors")
        uninterrupted = read("straight/iter_40/model/adapter_model.safetensors")
        assert resumed.keys() == uninterrupted.keys()
        differ = [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])]
        assert differ == [], differ
        print(f"preemption figures: paused at step {paused_at}, stopped after step {step}, resumed at step {step}, "
              f"{len(resumed)} adapter tensors equal to the uninterrupted run's")
    finally:
        gateway.kill()
        gateway.wait()
        for name in ("preempted-run", "urgent"):
            cluster.kubectl("delete", "-n", NS, "ftj", name, "--wait=false", check=False)
