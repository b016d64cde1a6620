"""One manifest, run twice against the same S3 server: by the operator on the test control plane (its rendered pods'
commands and environment run as a kubelet would run them: the trainer, then the export ConvertJobs the operator
creates after success) and by `kubetune train` on this machine with nothing but the manifest (credentials in
~/.aws, no AWS_* variables). Every object each run leaves in the bucket (checkpoints, their manifests, the exported
adapter and merged model) is byte for byte the same."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .test_operator import NS, _create, _status, _wait_phase, operator  # noqa: F401 (the operator fixture)
from .test_train import alpaca_rows

BUCKET = "parity"


def _manifest(tiny_dir: Path, data: Path, endpoint: str) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "parity",
                                                                                      "namespace": NS},
            "spec": {"model": {"uri": str(tiny_dir)},
                     "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}},
                     "dataset": {"uri": str(data), "format": "alpaca", "promptTemplate": "default", "maxLength": 64,
                                 "packToMaxLength": False},
                     "training": {"maxSteps": 4, "batchSize": 1, "accumulativeCounts": 1, "precision": "fp32",
                                  "gradientCheckpointing": False, "logEverySteps": 1, "seed": 11},
                     "checkpoints": {"everySteps": 2, "keep": 2, "uri": f"s3://{BUCKET}/run/"},
                     "storage": {"secretRef": "s3-parity", "endpoint": endpoint, "region": "us-east-1",
                                 "pathStyle": True},
                     "resources": {"nodes": 1, "gpusPerNode": 0},
                     "export": {"adapter": True, "merge": True}}}


class Kubelet:
    """Runs a Job's pod the way a node would: its command and environment (Secret keys resolved, the mounted
    ConfigMap and work dir at local paths), then reports the pod's exit so the Job controller and the operator
    see it."""

    def __init__(self, cluster, tmp: Path, secret: str):
        self.cluster, self.tmp = cluster, tmp
        self.secret = cluster.get_json("-n", NS, "secret", secret)["data"]

    def run(self, job_name: str, extra_env: dict[str, str], config: Path | None = None) -> str:
        job = self.cluster.get_json("-n", NS, "job", job_name)
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {}
        for e in container["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if "value" in e:
                env[e["name"]] = e["value"]
            elif ref and ref["key"] in self.secret:
                env[e["name"]] = base64.b64decode(self.secret[ref["key"]]).decode()
        argv = [a.replace("/etc/kubetune/job.yaml", str(config)).replace("/work/run", str(self.tmp / job_name))
                for a in container["command"]]
        assert argv[0] == "kubetune", argv
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBETUNE_S3"))}
        out = subprocess.run([sys.executable, "-m", "kubetune", *argv[1:]], env={**clean, **env, **extra_env},
                             cwd=self.tmp, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{job_name}: {out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        self._exited(job_name, container)
        return out.stdout + out.stderr

    def _exited(self, job_name: str, container: dict) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for pod in self.cluster.get_json("-n", NS, "pods", "-l", f"job-name={job_name}")["items"]:
            self.cluster.kubectl(
                "patch", "-n", NS, "pod", pod["metadata"]["name"], "--subresource=status", "--type=merge", "-p",
                json.dumps({"status": {"phase": "Succeeded", "containerStatuses": [{
                    "name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                    "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                                "startedAt": now, "finishedAt": now}}}]}}))


def _snapshot(s3) -> dict[str, bytes]:
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def test_the_same_manifest_locally_and_through_the_operator_gives_the_same_objects(
        cluster, operator, tiny_dir, tmp_path):  # noqa: F811 (the fixture imported above)
    import boto3

    from .s3server import ACCESS, SECRET, start_versitygw

    gateway, endpoint = start_versitygw(tmp_path / "s3")
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                          region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        cluster.kubectl("create", "secret", "generic", "s3-parity", "-n", NS,
                        f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS}", f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}")
        data = tmp_path / "data.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in alpaca_rows(12)) + "\n")
        doc = _manifest(tiny_dir, data, endpoint)

        in_cluster = _through_the_operator(cluster, tmp_path / "cluster", doc)
        assert sorted(k for k in in_cluster if k.endswith("manifest.json")) == [
            "run/export/hf/manifest.json", "run/export/merged/manifest.json", "run/iter_2/manifest.json",
            "run/iter_4/manifest.json"]
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in in_cluster]})
        assert _snapshot(s3) == {}

        local = _locally(tmp_path / "local", doc)
        assert local.keys() == in_cluster.keys()
        differ = sorted(k for k in local if local[k] != in_cluster[k])
        assert differ == [], f"objects that differ between the two runs: {differ}"
        assert any(k.startswith("run/export/merged/") and k.endswith(".safetensors") for k in local)
    finally:
        gateway.kill()
        gateway.wait()


def _through_the_operator(cluster, work: Path, doc: dict) -> dict[str, bytes]:
    work.mkdir()
    _create(cluster, "parity", doc)
    _wait_phase(cluster, "ftj", "parity", ("Running",))
    config = work / "job.yaml"
    config.write_text(cluster.get_json("-n", NS, "configmap", "parity-config")["data"]["job.yaml"])
    kubelet = Kubelet(cluster, work, "s3-parity")
    token = cluster.kubectl("create", "token", "parity-runner", "-n", NS).stdout.strip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = kubelet.run("parity-a0", {"NODE_RANK": "0", "ADDR": "127.0.0.1", "PORT": str(port),
                                    "HOME": str(work / "home"), "KUBETUNE_CACHE": str(work / "cache"),
                                    "KUBETUNE_STATUS_API": cluster.url, "KUBETUNE_STATUS_TOKEN": token,
                                    "KUBETUNE_STATUS_INSECURE": "1"}, config)
    assert "exported:" not in log  # the pods leave the export to the ConvertJobs
    status = _wait_phase(cluster, "ftj", "parity", ("Succeeded", "Failed"))
    assert status["phase"] == "Succeeded" and status["latestCheckpoint"]["uri"] == f"s3://{BUCKET}/run/iter_4"
    pod_env = {"HOME": str(work / "home"), "KUBETUNE_CACHE": str(work / "cache")}
    for which in ("adapter", "merged"):
        job_name = f"parity-export-{which}-convert"
        cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "job", job_name, check=False).returncode == 0,
                         f"the operator to create {job_name}", 60)
        kubelet.run(job_name, pod_env, config)
        cluster.wait_for(lambda: (_status(cluster, "ftj", "parity").get("artifacts") or {}).get(which),
                         f"the FineTuneJob to show its {which} export", 60)
    assert _status(cluster, "ftj", "parity")["artifacts"] == {"adapter": f"s3://{BUCKET}/run/export/hf",
                                                              "merged": f"s3://{BUCKET}/run/export/merged"}
    return _bucket(doc)


def _locally(work: Path, doc: dict) -> dict[str, bytes]:
    from .s3server import ACCESS, SECRET

    (work / "home" / ".aws").mkdir(parents=True)
    (work / "home" / ".aws" / "credentials").write_text(f"[default]\naws_access_key_id = {ACCESS}\n"
                                                        f"aws_secret_access_key = {SECRET}\n")
    manifest = work / "parity.yaml"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBETUNE_S3", "KUBERNETES_"))}
    env |= {"HOME": str(work / "home"), "KUBETUNE_CACHE": str(work / "cache")}
    out = subprocess.run([sys.executable, "-m", "kubetune", "train", str(manifest), "--work-dir", str(work / "run")],
                         env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"exported: adapter s3://{BUCKET}/run/export/hf, merged s3://{BUCKET}/run/export/merged" in out.stdout
    assert "ignored here: metadata.namespace=ops (cluster only)" in out.stderr
    return _bucket(doc)


def _bucket(doc: dict) -> dict[str, bytes]:
    import boto3

    from .s3server import ACCESS, SECRET

    s3 = boto3.client("s3", endpoint_url=doc["spec"]["storage"]["endpoint"], aws_access_key_id=ACCESS,
                      aws_secret_access_key=SECRET, region_name="us-east-1")
    return _snapshot(s3)
