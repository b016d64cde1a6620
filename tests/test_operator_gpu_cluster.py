"""Pods that fit a real GPU cluster, against the test control plane: every fabric, volume and scheduling setting
reaches pods the apiserver admits (and its bad values are refused naming the field); a 2-node DeepSpeed job on one
shared work volume is killed after a checkpoint and resumes with the weights of an uninterrupted run; a `pvc://`
checkpoint job's export, running as the job's own service account, reads the checkpoint the job reported."""

from __future__ import annotations

import json
import socket

import pytest

from . import podrun
from .test_operator import FTJ, Operator, install_chart_rbac

NS = "gpu-cluster"


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    cluster.kubectl("create", "namespace", NS, check=False)
    work = tmp_path_factory.mktemp("operator-gpu-cluster")
    # As the chart runs it with networkPolicy.enabled: the setting and the RBAC rule it adds.
    kubeconfig = install_chart_rbac(cluster, work, NS, "--set", "networkPolicy.enabled=true")
    op = Operator(cluster, work / "operator.log", kubeconfig, NS,
                  {"KUBETUNE_NETWORK_POLICY": "true", "KUBETUNE_METRICS_NAMESPACE": "monitoring"})
    yield op
    op.stop()
    assert "Traceback" not in op.log.read_text(), op.log.read_text()[-4000:]


def _doc(name: str, spec: dict, **metadata) -> dict:
    doc = json.loads(json.dumps(FTJ))
    doc["metadata"] = {"name": name, "namespace": NS, **metadata}
    doc["spec"].update(spec)
    return doc


def _apply(cluster, doc: dict, check: bool = True):
    return cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=check)


GPU_CLUSTER = {"nodes": 2, "gpusPerNode": 1, "extraResources": {"rdma/ib": 1}, "capabilities": ["IPC_LOCK"],
               "hostNetwork": True, "shmSize": "16Gi",
               "workVolume": {"create": True, "storageClassName": "cephfs", "size": "2Ti"},
               "cacheVolume": {"claimName": "model-cache"}, "env": [{"name": "NCCL_IB_HCA", "value": "mlx5"}]}


def test_every_gpu_cluster_setting_reaches_pods_the_apiserver_admits(cluster, operator):
    _apply(cluster, _doc("fabric", {"resources": GPU_CLUSTER},
                         labels={"cost-center": "nlp", "app.kubernetes.io/instance": "argo-app"},
                         annotations={"kueue.x-k8s.io/podset-preferred-topology": "topology.kubernetes.io/zone",
                                      "sidecar.istio.io/inject": "false"}))
    cluster.wait_for(lambda: len(cluster.get_json("-n", NS, "pods", "-l", "job-name=fabric-a0")["items"]) == 2,
                     "both trainer pods admitted by the apiserver", 60)
    claim = cluster.get_json("-n", NS, "pvc", "fabric-work")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "cephfs"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Ti"
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "FineTuneJob"  # deleted with the job, not per attempt
    for pod in cluster.get_json("-n", NS, "pods", "-l", "job-name=fabric-a0")["items"]:
        spec, meta = pod["spec"], pod["metadata"]
        trainer = spec["containers"][0]
        assert (spec["hostNetwork"], spec["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
        assert trainer["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
        assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "1", "rdma/ib": "1"}
        assert trainer["resources"]["requests"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1",
                                                    "rdma/ib": "1"}
        assert pod["status"]["qosClass"] == "Burstable"  # the apiserver's own verdict: never BestEffort
        assert {"name": "NCCL_IB_HCA", "value": "mlx5"} in trainer["env"]
        assert [c["name"] for c in spec["initContainers"]] == ["fetch"]
        assert spec["initContainers"][0]["command"] == ["kubetune", "fetch", "/etc/kubetune/job.yaml"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["work"]["persistentVolumeClaim"]["claimName"] == "fabric-work"
        assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "model-cache"
        assert meta["labels"]["cost-center"] == "nlp" and "app.kubernetes.io/instance" not in meta["labels"]
        assert meta["annotations"]["kueue.x-k8s.io/podset-preferred-topology"] == "topology.kubernetes.io/zone"
        assert meta["annotations"]["sidecar.istio.io/inject"] == "false"
    policy = cluster.get_json("-n", NS, "networkpolicy", "fabric-workers")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"kubetune.io/finetunejob": "fabric",
                                                    "app.kubernetes.io/component": "trainer"}
    assert policy["ingress"][1]["ports"] == [{"protocol": "TCP", "port": 9100}]
    # No child carries Argo CD's tracking label: Argo would take it for (and prune it as) its own object.
    for kind in ("job", "configmap", "service", "serviceaccount", "pvc", "networkpolicy"):
        for item in cluster.get_json("-n", NS, kind, "-l", "kubetune.io/finetunejob=fabric")["items"]:
            assert "app.kubernetes.io/instance" not in item["metadata"]["labels"], (kind, item["metadata"]["name"])
    cluster.kubectl("delete", "-n", NS, "ftj", "fabric", "--wait=false")


@pytest.mark.parametrize("resources, field", [
    ({"capabilities": ["SYS_ADMIN"]}, "spec.resources.capabilities[0]"),
    ({"extraResources": {"cpu": 2}}, "spec.resources.extraResources"),
    ({"extraResources": {"nvidia.com/gpu": 2}}, "spec.resources.extraResources"),
    ({"gpuResourceName": "gpu"}, "spec.resources.gpuResourceName"),
    ({"workVolume": {"claimName": "shared", "create": True}}, "spec.resources.workVolume.claimName"),
    ({"cacheVolume": {"claimName": "cache", "storageClassName": "fast"}},
     "spec.resources.cacheVolume.storageClassName"),
    ({"workVolume": {"create": True, "accessMode": "ReadWriteSometimes"}}, "spec.resources.workVolume.accessMode"),
])
def test_bad_gpu_cluster_settings_are_refused_naming_the_field(cluster, operator, resources, field):
    out = _apply(cluster, _doc("refused", {"resources": resources}), check=False)
    assert out.returncode != 0 and field in out.stderr, out.stderr


def _pod_status(cluster, pod: dict, exit_code: int) -> None:
    """What the kubelet reports when a container exits: the pod's phase and the container's exit code."""
    now = "2026-12-04T00:00:00Z"
    terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "startedAt": now,
                  "finishedAt": now}
    status = {"phase": "Succeeded" if exit_code == 0 else "Failed",
              "containerStatuses": [{"name": "trainer", "image": "x", "imageID": "", "ready": False,
                                     "restartCount": 0, "state": {"terminated": terminated}}]}
    cluster.kubectl("patch", "pod", "-n", NS, pod["metadata"]["name"], "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pods:
    """One Job's rendered trainer pods run as a kubelet would (tests/podrun.py): 2 pods x 1 rank on CPU (gloo), the
    pod paths mapped to this test's directories: /work to one directory both pods see (the shared work volume), the
    claims under KUBETUNE_PVC_ROOT."""

    def __init__(self, cluster, job: str, tmp, config, work, env: dict):
        pod = cluster.get_json("-n", NS, "job", job)["spec"]["template"]["spec"]
        port = _free_port()
        self.procs = [podrun.start(pod["containers"][0], {}, {"/etc/kubetune/job.yaml": config, "/work/run": work},
                                   {**env, "NODE_RANK": str(rank), "ADDR": "127.0.0.1", "PORT": str(port),
                                    "HOME": str(tmp / f"home{rank}"), "KUBETUNE_CACHE": str(tmp / f"cache{rank}"),
                                    "HF_HOME": str(tmp / f"hf{rank}"),
                                    "KUBETUNE_PVC_ROOT": str(tmp / "pvc"), "OMP_NUM_THREADS": "1"})
                      for rank in range(2)]

    def wait(self) -> list[int]:
        self.outputs = [p.communicate(timeout=900)[0] for p in self.procs]
        return [p.returncode for p in self.procs]


def test_a_deepspeed_gang_on_a_shared_work_volume_resumes_whole_and_its_pvc_checkpoint_is_exported(
        cluster, operator, tiny_dir, tmp_path):
    """2 nodes x 1 rank, ZeRO-2, /work on one shared volume, checkpoints to `pvc://ckpts/shared`. Killed after the
    step-4 checkpoint (both ranks' optimizer partitions in it), a new gang on the same volume resumes at step 4,
    publishes its checkpoints whole to the claim, and ends with the weights of the same gang never interrupted. Then the kubelet reports
    success; the export ConvertJob runs as the job's service account, mounts the claim and converts the very
    checkpoint the job reported."""
    import torch
    from safetensors.torch import load_file

    spec = {**podrun.tiny_lora_spec(tiny_dir, tmp_path, 32, maxSteps=8, seed=3, deepspeed="zero2"),
            "checkpoints": {"everySteps": 4, "keep": 2, "uri": "pvc://ckpts/shared"}, "storage": {},
            "resources": {"nodes": 2, "gpusPerNode": 1, "serviceAccountName": "irsa-runner", "memory": "8Gi",
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                          "workVolume": {"claimName": "shared-work"}, "cacheVolume": {"claimName": "model-cache"}},
            "export": {"adapter": True}}
    _apply(cluster, _doc("shared", spec))
    cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "job", "shared-a0", check=False).returncode == 0,
                     "the gang's Job", 60)
    job = cluster.get_json("-n", NS, "job", "shared-a0")
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["work"] == {"name": "work", "persistentVolumeClaim": {"claimName": "shared-work"}}
    ckpts = next(v for v in volumes.values() if v.get("persistentVolumeClaim", {}).get("claimName") == "ckpts")
    assert "readOnly" not in ckpts["persistentVolumeClaim"]  # checkpoints are written there
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "job.yaml"
    config.write_text(cluster.get_json("-n", NS, "configmap", "shared-config")["data"]["job.yaml"])
    token = cluster.kubectl("create", "token", "shared-runner", "-n", NS).stdout.strip()
    report = {"KUBETUNE_STATUS_API": cluster.url, "KUBETUNE_STATUS_TOKEN": token, "KUBETUNE_STATUS_INSECURE": "1"}

    # The init container every pod runs first: the cache fills (nothing remote here: local model and data) and
    # the first pod says so in the job's status, through the runner's own Role.
    init = job["spec"]["template"]["spec"]["initContainers"][0]
    fetched = podrun.start(init, {}, {"/etc/kubetune/job.yaml": config},
                           {**report, "NODE_RANK": "0", "KUBETUNE_CACHE_VOLUME": str(tmp_path / "cache-volume"),
                            "KUBETUNE_CACHE": str(tmp_path / "cache-volume" / "kubetune"),
                            "HF_HOME": str(tmp_path / "cache-volume" / "huggingface"), "HOME": str(tmp_path)})
    assert fetched.wait(timeout=120) == 0, fetched.stdout.read()
    cache = cluster.get_json("-n", NS, "ftj", "shared")["status"]["cache"]
    assert cache["state"] == "Ready" and cache["downloaded"] is False and cache["uris"] == []

    shared = tmp_path / "shared-volume" / "run"
    killed = Pods(cluster, "shared-a0", tmp_path, config, shared, {**report, "KUBETUNE_STOP_AFTER_STEP": "4"})
    assert all(code != 0 for code in killed.wait())
    # Killed at once, as a node lost: the upload of iter_4 may be cut, but the shared volume holds all of it.
    for rank in (0, 1):  # both nodes' optimizer partitions: a checkpoint that resumes whole
        assert list((shared / "iter_4").glob(f"deepspeed/**/*zero_pp_rank_{rank}_*optim_states.pt")), \
            "\n".join(o[-3000:] for o in killed.outputs)

    resumed = Pods(cluster, "shared-a0", tmp_path, config, shared, report)
    assert resumed.wait() == [0, 0], "\n".join(o[-3000:] for o in resumed.outputs)
    assert "resumed from" in resumed.outputs[0] and "at step 4" in resumed.outputs[0], resumed.outputs[0][-3000:]

    published = tmp_path / "pvc" / "ckpts" / "shared" / "iter_8"
    assert (published / "manifest.json").is_file()
    for rank in (0, 1):  # published whole, where per-node disks would have left it unpublished
        assert list(published.glob(f"deepspeed/**/*zero_pp_rank_{rank}_*optim_states.pt")), rank

    straight_config = tmp_path / "etc" / "straight.yaml"
    straight_config.write_text(config.read_text().replace("pvc://ckpts/shared", "pvc://ckpts/straight"))
    straight_dir = tmp_path / "straight-volume" / "run"
    straight = Pods(cluster, "shared-a0", tmp_path, straight_config, straight_dir, {"KUBETUNE_STATUS_TARGET": ""})
    assert straight.wait() == [0, 0], "\n".join(o[-3000:] for o in straight.outputs)
    after = load_file(str(shared / "iter_8" / "model" / "adapter_model.safetensors"))
    never = load_file(str(straight_dir / "iter_8" / "model" / "adapter_model.safetensors"))
    assert after.keys() == never.keys() and len(after) == 8
    worst = max(float((after[k] - never[k]).abs().max()) for k in after)
    assert worst <= 1e-6, worst
    print(f"shared work volume: killed after step 4, resumed at step 4, largest adapter difference to the "
          f"uninterrupted run {worst:.1e}")

    status = cluster.get_json("-n", NS, "ftj", "shared")["status"]
    assert status["latestCheckpoint"]["uri"] == "pvc://ckpts/shared/iter_8"
    for pod in cluster.get_json("-n", NS, "pods", "-l", "job-name=shared-a0")["items"]:
        _pod_status(cluster, pod, 0)
    cluster.wait_for(lambda: (cluster.get_json("-n", NS, "ftj", "shared").get("status") or {}).get("phase")
                     == "Succeeded", "the job to succeed", 60)
    cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "job", "shared-export-adapter-convert",
                                             check=False).returncode == 0, "the export's Job", 60)
    export = cluster.get_json("-n", NS, "job", "shared-export-adapter-convert")["spec"]["template"]["spec"]
    assert export["serviceAccountName"] == "irsa-runner"  # the job's IAM role reads and writes its storage
    assert export["tolerations"] == spec["resources"]["tolerations"]
    assert export["containers"][0]["resources"]["limits"]["memory"] == "8Gi"
    assert "pvc://ckpts/shared/iter_8" in export["containers"][0]["command"]
    converted = podrun.start(export["containers"][0], {}, {"/etc/kubetune/job.yaml": config},
                             {"HOME": str(tmp_path / "home-export"), "KUBETUNE_CACHE": str(tmp_path / "cache-export"),
                              "KUBETUNE_PVC_ROOT": str(tmp_path / "pvc")})
    output = converted.communicate(timeout=600)[0]
    assert converted.returncode == 0, output[-3000:]
    exported = load_file(str(tmp_path / "pvc" / "ckpts" / "shared" / "export" / "hf" / "adapter_model.safetensors"))
    # pth_to_hf saves in fp16 unless told --fp32 (as XTuner's does): the very checkpoint, cast.
    assert exported.keys() == after.keys()
    assert all(torch.equal(exported[k], after[k].to(exported[k].dtype)) for k in after)
    cluster.kubectl("delete", "-n", NS, "ftj", "shared", "--wait=false")


def test_kubectl_scale_on_a_chatendpoint_reaches_its_deployment(cluster, operator):
    """The scale subresource is what an HPA or KEDA drives (status.selector names the pods): `kubectl scale` sets
    spec.replicas and the operator rolls it into the Deployment."""
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint", "metadata": {"name": "scaled", "namespace": NS},
           "spec": {"model": {"uri": "s3://models/merged/"}, "replicas": 1}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "deployment", "scaled", check=False).returncode == 0,
                     "the endpoint's Deployment", 60)
    cluster.kubectl("scale", "-n", NS, "chatendpoint", "scaled", "--replicas=3")
    cluster.wait_for(lambda: cluster.get_json("-n", NS, "deployment", "scaled")["spec"]["replicas"] == 3,
                     "the Deployment scaled to 3", 60)
    cluster.wait_for(lambda: (cluster.get_json("-n", NS, "chat", "scaled").get("status") or {}).get("selector")
                     == "app.kubernetes.io/component=server,kubetune.io/chatendpoint=scaled", "status.selector", 60)
    cluster.kubectl("delete", "-n", NS, "chat", "scaled", "--wait=false")
