"""The operator's pure builders and status logic, without a cluster: table tests of what matters and golden
manifests for whole objects (KUBETUNE_REGEN_GOLDEN=1 rewrites them; review the diff)."""

from __future__ import annotations

import json

import os
from pathlib import Path

import pytest
import yaml

from kubetune.api import parse_manifest
from kubetune_operator import status as st
from kubetune_operator.builders import chat, convert, finetune
from kubetune_operator.settings import Settings

GOLDEN = Path(__file__).parent / "golden" / "operator"
SETTINGS = Settings(image="ghcr.io/kubetune/kubetune-runtime:test")


def _parent(kind: str, name: str, spec: dict) -> tuple[dict, object]:
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "generation": 1}, "spec": spec}
    return body, parse_manifest({**body, "metadata": {"name": name}}, kind=kind).spec


BASE = {"model": {"uri": "hf://internlm/internlm2-chat-1_8b"}, "dataset": {"uri": "s3://data/emo.json"},
        "checkpoints": {"uri": "s3://ckpt/emo/"}, "storage": {"secretRef": "s3-credentials",
                                                             "endpoint": "http://minio:9000", "pathStyle": True}}
FINETUNE_CASES = {
    "single-node": {},
    "multi-node": {"resources": {"nodes": 4, "gpusPerNode": 8, "memory": "512Gi", "nodeSelector": {"pool": "h100"},
                                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                 "priorityClassName": "training"}},
    "qlora-zero2": {"method": {"type": "qlora"}, "training": {"deepspeed": "zero2"},
                    "resources": {"nodes": 1, "gpusPerNode": 2}},
    "kueue": {"runPolicy": {"queueName": "team-a", "activeDeadlineSeconds": 86400},
              "resources": {"gpusPerNode": 1}},
    "pvc-source": {"model": {"uri": "pvc://models/internlm2"}, "dataset": {"uri": "pvc://datasets/emo.json"},
                   "resources": {"serviceAccountName": "s3-irsa"}},
    # What a platform engineer sets on an RDMA GPU cluster (docs/install.md, "GPU cluster checklist").
    "gpu-cluster": {"checkpoints": {"uri": "pvc://checkpoints/emo"},
                    "resources": {"nodes": 2, "gpusPerNode": 8, "gpuResourceName": "nvidia.com/gpu",
                                  "extraResources": {"rdma/ib": 1}, "capabilities": ["IPC_LOCK"],
                                  "hostNetwork": True, "shmSize": "64Gi",
                                  "workVolume": {"create": True, "storageClassName": "cephfs", "size": "2Ti"},
                                  "cacheVolume": {"claimName": "model-cache"},
                                  "env": [{"name": "NCCL_IB_HCA", "value": "mlx5"}]}},
}


def _check_golden(name: str, manifests: list[dict]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump_all(manifests, sort_keys=False)
    if os.environ.get("KUBETUNE_REGEN_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden {path}; run with KUBETUNE_REGEN_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from {path}"


@pytest.mark.parametrize("case", FINETUNE_CASES)
def test_finetune_children_golden(case):
    body, spec = _parent("FineTuneJob", case, {**BASE, **FINETUNE_CASES[case]})
    _check_golden(f"finetune-{case}", finetune.children(body, spec, 0, SETTINGS))


def test_finetune_gang_job():
    body, spec = _parent("FineTuneJob", "emo", {**BASE, **FINETUNE_CASES["multi-node"]})
    kinds = [m["kind"] for m in finetune.children(body, spec, 3, SETTINGS)]
    assert kinds == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Service", "Job"]
    job = finetune.children(body, spec, 3, SETTINGS)[-1]
    assert job["metadata"]["name"] == "emo-a3" and job["metadata"]["labels"]["kubetune.io/attempt"] == "3"
    s = job["spec"]
    assert (s["completions"], s["parallelism"], s["backoffLimit"], s["completionMode"]) == (4, 4, 0, "Indexed")
    assert s["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    pod = s["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["NNODES"]["value"] == "4" and env["NPROC_PER_NODE"]["value"] == "8"
    assert env["ADDR"]["value"] == "emo-a3-0.emo-workers" and pod["subdomain"] == "emo-workers"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert c["command"] == ["kubetune", "train", "/etc/kubetune/job.yaml", "--work-dir", "/work/run", "--resume",
                            "auto", "--no-export"]
    assert c["resources"]["limits"] == {"memory": "512Gi", "nvidia.com/gpu": "8"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert pod["nodeSelector"] == {"pool": "h100"} and pod["priorityClassName"] == "training"
    role = finetune.children(body, spec, 0, SETTINGS)[2]
    assert role["rules"] == [{"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"],
                              "resourceNames": ["emo"], "verbs": ["patch"]}]
    assert all(m["metadata"]["ownerReferences"][0]["uid"] == "uid-emo" for m in finetune.children(body, spec, 0,
                                                                                                 SETTINGS))


def test_kueue_labels_the_job_which_is_created_suspended_and_never_applied_so_and_pvcs_are_mounted():
    from kubetune_operator.builders.common import created_suspended

    body, spec = _parent("FineTuneJob", "q", {**BASE, **FINETUNE_CASES["kueue"]})
    body["metadata"]["labels"] = {"kueue.x-k8s.io/priority-class": "from-label", "team": "nlp"}
    job = finetune.children(body, spec, 0, SETTINGS)[-1]
    # spec.suspend is Kueue's once the Job exists: only the create carries it, the applied manifest never does.
    assert "suspend" not in job["spec"] and created_suspended(job) == {"spec": {"suspend": True}}
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a" and labels["kueue.x-k8s.io/priority-class"] == "from-label"
    assert labels["team"] == "nlp"  # the parent's own labels are copied (cost labels, Istio opt-out)
    spec.run_policy.workload_priority_class = "urgent"  # the spec's field wins over the label
    assert finetune.children(body, spec, 0, SETTINGS)[-1]["metadata"]["labels"][
        "kueue.x-k8s.io/priority-class"] == "urgent"
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    body, spec = _parent("FineTuneJob", "u", BASE)
    assert created_suspended(finetune.children(body, spec, 0, SETTINGS)[-1]) is None
    body, spec = _parent("FineTuneJob", "p", {**BASE, **FINETUNE_CASES["pvc-source"]})
    children = finetune.children(body, spec, 0, SETTINGS)
    pod = children[-1]["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models", "datasets"} and pod["serviceAccountName"] == "s3-irsa"
    assert {s["name"] for s in children[3]["subjects"]} == {"p-runner", "s3-irsa"}


def test_llava_catalogue_job_needs_no_special_case_but_its_sources_are_mounted():
    from kubetune.api import catalog

    manifest = catalog.get("llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune")
    # XTuner's config reads ./data and ./work_dirs; in a cluster the copy points them at claims.
    manifest["spec"]["dataset"].update(uri="pvc://llava-data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json",
                                       imageFolder="pvc://llava-data/llava_images")
    manifest["spec"]["model"]["vision"]["projector"] = "pvc://llava-work/pretrain/iter_2181"
    body, spec = _parent("FineTuneJob", "llava", manifest["spec"])
    children = finetune.children(body, spec, 0, SETTINGS)
    job = children[-1]
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["completions"] == 1 and pod["containers"][0]["command"][:2] == ["kubetune", "train"]
    # The data and images on one claim, the stage-1 projector on another.
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"llava-data", "llava-work"}
    resolved = yaml.safe_load(next(c for c in children if c["kind"] == "ConfigMap")["data"]["job.yaml"])
    assert resolved["spec"]["model"]["vision"]["encoder"] == "hf://openai/clip-vit-large-patch14-336"
    assert resolved["spec"]["method"]["vision"]["encoderLora"]["r"] == 64


def test_long_names_stay_dns_labels():
    name = "a" * 60
    body, spec = _parent("FineTuneJob", name, BASE)
    for m in finetune.children(body, spec, 12, SETTINGS):
        if m["kind"] in ("Job", "Service"):
            assert len(m["metadata"]["name"]) <= 63


def test_convert_and_chat_golden():
    body, spec = _parent("ConvertJob", "merge", {"operation": "merge", "source": {"checkpointUri": "s3://c/hf"},
                                                 "output": {"uri": "s3://m/merged"}, "maxShardSize": "5GB"})
    cvj = convert.job(body, spec, "s3://c/hf", "hf://org/base", None, SETTINGS)
    assert cvj["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "kubetune", "convert", "merge", "hf://org/base", "s3://c/hf", "s3://m/merged", "--device", "auto",
        "--max-shard-size", "5GB", "--safe-serialization"]
    body, spec = _parent("ChatEndpoint", "emo-chat", {
        "model": {"uri": "s3://models/base"}, "adapters": [{"name": "emo", "uri": "s3://a/emo"}],
        "promptTemplate": "internlm2_chat", "generation": {"stopWords": ["<eoa>"]},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetInflightRequests": 4},
        "auth": {"apiKeySecretRef": "keys"}, "resources": {"gpus": 1}})
    manifests = chat.children(body, spec, {"emo": "s3://a/emo"}, SETTINGS)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                                              "PodDisruptionBudget"]
    assert "replicas" not in manifests[1]["spec"]  # the HPA owns it
    _check_golden("convert-merge", [cvj])
    _check_golden("chat-hpa", manifests)
    body, spec = _parent("ConvertJob", "llava-hf", {"operation": "pth_to_hf", "source": {"checkpointUri": "s3://c/i"},
                                                    "output": {"uri": "s3://m/llava-hf"},
                                                    "saveFormat": "huggingface"})
    argv = convert.command(spec, "s3://c/i", None, "/etc/kubetune/job.yaml")
    assert argv[:6] == ["kubetune", "convert", "pth_to_hf", "/etc/kubetune/job.yaml", "s3://c/i", "s3://m/llava-hf"]
    assert argv[argv.index("--save-format") + 1] == "huggingface"


def _chat(name: str, spec: dict, adapters: dict[str, str]) -> list[dict]:
    body, parsed = _parent("ChatEndpoint", name, spec)
    return chat.children(body, parsed, adapters, SETTINGS)


def test_builtin_endpoint_with_three_adapters_golden():
    """One server for the base and three adapters (one a FineTuneJob's export, resolved by the operator): the pods
    fetch them first, then serve the mounted endpoint with local paths only; the server holds no credentials."""
    from kubetune.api import parse_manifest

    manifests = _chat("three", {"model": {"uri": "hf://org/base"}, "adapters": [
        {"name": "sql", "uri": "s3://a/sql"}, {"name": "emo", "fineTuneJobRef": "emo-job"},
        {"name": "law", "uri": "pvc://models/law"}], "storage": {"secretRef": "s3-creds"},
        "auth": {"apiKeySecretRef": "keys"}}, {"sql": "s3://a/sql", "emo": "s3://ckpt/emo/export/hf",
                                               "law": "pvc://models/law"})
    _check_golden("chat-adapters", manifests)
    config, deployment = manifests[0], manifests[1]
    endpoint = parse_manifest(yaml.safe_load(config["data"]["endpoint.yaml"]), kind="ChatEndpoint")
    assert [(a.name, a.uri, a.fine_tune_job_ref) for a in endpoint.spec.adapters] == [
        ("sql", "s3://a/sql", None), ("emo", "s3://ckpt/emo/export/hf", None), ("law", "pvc://models/law", None)]
    pod = deployment["spec"]["template"]["spec"]
    fetch, server = pod["initContainers"][0], pod["containers"][0]
    assert fetch["command"] == ["kubetune", "fetch", "/etc/kubetune/endpoint.yaml", "--into", "/work/models"]
    assert server["command"] == ["kubetune", "serve", "/work/models/endpoint.yaml", "--host", "0.0.0.0", "--port",
                                 "8000", "--api-key-file", "/etc/kubetune/keys/api-keys"]
    assert any(e["name"] == "AWS_ACCESS_KEY_ID" for e in fetch["env"])
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in server["env"])  # credentials stay in the fetch
    assert {m["mountPath"] for m in server["volumeMounts"]} >= {"/mnt/pvc/models", "/work"}
    assert "kubetune.io/config-hash" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_vllm_endpoint_golden():
    """vLLM from the local layout with tensor parallel, adapters, the spec's sampling defaults and extra args, on
    loopback behind the gateway that checks the keys on every route."""
    manifests = _chat("vl", {"engine": "vllm", "model": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct", "dtype": "bf16"},
                             "adapters": [{"name": "sql", "uri": "s3://a/sql"}, {"name": "emo", "uri": "s3://a/emo"}],
                             "generation": {"temperature": 0.7, "maxNewTokens": 512}, "bits": 4,
                             "vllm": {"maxModelLen": 8192, "gpuMemoryUtilization": 0.85, "maxLoraRank": 16,
                                      "extraArgs": ["--enable-prefix-caching"]},
                             "auth": {"apiKeySecretRef": "keys"}, "resources": {"gpus": 4}},
                     {"sql": "s3://a/sql", "emo": "s3://a/emo"})
    _check_golden("chat-vllm", manifests)
    pod = manifests[1]["spec"]["template"]["spec"]
    server, gateway = pod["containers"]
    assert server["image"] == "vllm/vllm-openai:v0.34.0" and "ports" not in server
    argv = server["command"]
    assert argv[:4] == ["vllm", "serve", "/work/models/model", "--served-model-name"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert json.loads(argv[argv.index("--lora-modules") + 1]) == {"name": "sql", "path": "/work/models/adapters/sql",
                                                                  "base_model_name": "vl"}
    assert json.loads(argv[argv.index("--override-generation-config") + 1])["temperature"] == 0.7
    assert argv[-1] == "--enable-prefix-caching" and not any("key" in a for a in argv)
    assert gateway["command"][:4] == ["kubetune", "gateway", "--upstream", "http://127.0.0.1:8001"]
    assert gateway["ports"] == [{"name": "http", "containerPort": 8000}] and "readinessProbe" in gateway


def test_status_logic():
    _, spec = _parent("FineTuneJob", "s", {**BASE, "runPolicy": {"maxRestarts": 1}})
    job = {"metadata": {"name": "s-a0"}, "status": {"ready": 1, "active": 1, "startTime": "2026-01-01T00:00:00Z"}}
    out = st.finetune(job, {}, spec, 1, "t0")
    assert out.patch["phase"] == "Running" and out.patch["startTime"] == "2026-01-01T00:00:00Z"
    failed = {"metadata": {"name": "s-a0"}, "status": {"conditions": [
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
         "message": "Container trainer for pod team/s-a0-0-xyz failed with exit code 1"}]}}
    out = st.finetune(failed, {"phase": "Running", "restarts": 0}, spec, 1, "t1")
    assert out.restart and out.patch["restarts"] == 1 and out.patch["phase"] == "Restarting"
    out = st.finetune(failed, {"phase": "Restarting", "restarts": 1}, spec, 1, "t2")
    assert not out.restart and out.patch["phase"] == "Failed" and "s-a0-0-xyz" in out.patch["message"]
    conditions = st.set_condition([], "Ready", True, "Ready", "ok", "t0")
    assert st.set_condition(conditions, "Ready", True, "Ready", "still", "t9")[0]["lastTransitionTime"] == "t0"
    assert st.set_condition(conditions, "Ready", False, "Down", "no", "t9")[0]["lastTransitionTime"] == "t9"


def test_active_deadline_spans_every_attempt():
    """A run past runPolicy.activeDeadlineSeconds fails without a restart; a restart gets only what is left."""
    body, spec = _parent("FineTuneJob", "d", {**BASE, "runPolicy": {"maxRestarts": 3, "activeDeadlineSeconds": 600}})

    def failed(reason: str, started: str, ended: str) -> dict:
        return {"metadata": {"name": "d-a0"}, "status": {"startTime": started, "conditions": [
            {"type": "Failed", "status": "True", "reason": reason, "message": "it stopped",
             "lastTransitionTime": ended}]}}

    running = {"phase": "Running", "restarts": 0, "startTime": "2026-01-01T00:00:00Z"}
    out = st.finetune(failed("PodFailurePolicy", "2026-01-01T00:00:00Z", "2026-01-01T00:04:00Z"), running, spec, 1,
                      "2026-01-01T00:04:05Z")
    assert out.restart and out.patch["attemptDeadlineSeconds"] == 360
    job = finetune.children({**body, "status": {**running, **out.patch}}, spec, 1, SETTINGS)[-1]
    assert job["spec"]["activeDeadlineSeconds"] == 360
    assert finetune.children(body, spec, 0, SETTINGS)[-1]["spec"]["activeDeadlineSeconds"] == 600
    # The second attempt waited an hour in Kueue's queue (its Job's startTime is when it was admitted): not counted.
    second = {**running, "restarts": 1, "attemptDeadlineSeconds": 360}
    out = st.finetune(failed("PodFailurePolicy", "2026-01-01T01:00:00Z", "2026-01-01T01:05:00Z"), second, spec, 1,
                      "2026-01-01T01:05:00Z")
    assert out.restart and out.patch["attemptDeadlineSeconds"] == 60
    for reason, ended in (("DeadlineExceeded", "2026-01-01T01:06:00Z"), ("PodFailurePolicy", "2026-01-01T01:06:01Z")):
        out = st.finetune(failed(reason, "2026-01-01T01:00:00Z", ended), second, spec, 1, ended)
        assert not out.restart and out.patch["phase"] == "Failed" and "restarts" not in out.patch
        condition = next(c for c in out.patch["conditions"] if c["type"] == "Failed")
        assert condition["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds (600 s)" in condition["message"]


def test_cluster_storage_defaults_fill_only_what_the_spec_leaves_empty():
    defaults = Settings(storage_secret="cluster-s3", storage_endpoint="http://minio.storage:9000",
                        storage_region="eu-west-1", storage_path_style=True)

    def env(storage: dict) -> dict:
        body, spec = _parent("FineTuneJob", "emo", {**BASE, "storage": storage})
        container = finetune.children(body, spec, 0, defaults)[-1]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") or e["valueFrom"].get("secretKeyRef", {}).get("name") for e in container["env"]}

    bare = env({})
    assert bare["AWS_ACCESS_KEY_ID"] == "cluster-s3" and bare["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert bare["AWS_DEFAULT_REGION"] == "eu-west-1" and bare["KUBETUNE_S3_ADDRESSING_STYLE"] == "path"
    own = env({"secretRef": "team-s3", "endpoint": "https://s3.example.com"})
    assert own["AWS_ACCESS_KEY_ID"] == "team-s3" and own["AWS_ENDPOINT_URL"] == "https://s3.example.com"
    plain = finetune.children(*_parent("FineTuneJob", "emo", {**BASE, "storage": {}}), 0, SETTINGS)[-1]
    names = {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}


def test_a_network_policy_admits_the_gang_and_metrics_only_when_the_chart_asks():
    from dataclasses import replace

    body, spec = _parent("FineTuneJob", "np", {**BASE, **FINETUNE_CASES["multi-node"]})
    assert not [c for c in finetune.children(body, spec, 0, SETTINGS) if c["kind"] == "NetworkPolicy"]
    settings = replace(SETTINGS, network_policy=True, metrics_namespace="monitoring")
    children = finetune.children(body, spec, 0, settings)
    policy = next(c for c in children if c["kind"] == "NetworkPolicy")
    gang = {"matchLabels": {"kubetune.io/finetunejob": "np", "app.kubernetes.io/component": "trainer"}}
    pod_labels = children[-1]["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"] == gang and gang["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["ingress"] == [
        {"from": [{"podSelector": gang}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
         "ports": [{"protocol": "TCP", "port": 9100}]}]


def test_export_convertjobs_keep_the_jobs_identity_unless_export_resources_says_otherwise():
    from kubetune.api.convert import export_specs

    job = {**FINETUNE_CASES["multi-node"]["resources"], "serviceAccountName": "s3-irsa", "image": "reg/kt:1",
           "cacheVolume": {"claimName": "models"}, "cpu": "96"}
    _, spec = _parent("FineTuneJob", "ident", {**BASE, "resources": job})
    adapter = export_specs("ident", spec)["adapter"]["resources"]
    assert {k: adapter[k] for k in ("serviceAccountName", "image", "memory", "nodeSelector", "tolerations",
                                    "priorityClassName", "cacheVolume")} == {
        "serviceAccountName": "s3-irsa", "image": "reg/kt:1", "memory": "512Gi", "nodeSelector": {"pool": "h100"},
        "tolerations": job["tolerations"], "priorityClassName": "training", "cacheVolume": {"claimName": "models"}}
    assert "cpu" not in adapter and "gpus" not in adapter  # a merge needs memory, not the gang's cores and GPUs
    _, spec = _parent("FineTuneJob", "ident", {**BASE, "resources": job,
                                               "export": {"resources": {"memory": "64Gi", "gpus": 1}}})
    adapter = export_specs("ident", spec)["adapter"]["resources"]
    assert (adapter["memory"], adapter["gpus"], adapter["serviceAccountName"]) == ("64Gi", 1, "s3-irsa")


def test_a_deployment_whose_selector_an_older_operator_set_is_replaced():
    import asyncio

    from kubetune_operator.reconcile import replace_if_reselected

    class Kube:
        def __init__(self, current):
            self.current, self.deleted = current, []

        async def get(self, *args):
            return self.current

        async def delete(self, *args):
            self.deleted.append(args)

    body, spec = _parent("ChatEndpoint", "bot", {"model": {"uri": "hf://org/model"}})
    deployment = next(c for c in chat.children(body, spec, {}, SETTINGS) if c["kind"] == "Deployment")
    old = {"metadata": {"ownerReferences": [{"uid": "uid-bot"}]},
           "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": "bot",
                                                 "app.kubernetes.io/component": "server"}}}}
    someone_elses = {**old, "metadata": {"ownerReferences": [{"uid": "uid-other"}]}}
    for current, deleted in ((old, 1), (deployment, 0), (None, 0), (someone_elses, 0)):
        kube = Kube(current)
        asyncio.run(replace_if_reselected(kube, deployment))
        assert len(kube.deleted) == deleted


def test_a_sized_work_emptydir_requests_its_disk_and_tmps():
    from kubetune.api.pods import PodResources
    from kubetune_operator.builders.common import ephemeral_storage

    assert ephemeral_storage(PodResources()) is None  # Kueue: a resource its ClusterQueue may not cover
    assert ephemeral_storage(PodResources(workVolume={"size": "100Gi"})) == "116Gi"
    assert ephemeral_storage(PodResources(workVolume={"size": "500G"})) == f"{16384 + 476838}Mi"
    assert ephemeral_storage(PodResources(workVolume={"create": True, "size": "2Ti"})) is None  # a claim


def test_a_finetunejob_and_a_chatendpoint_of_one_name_do_not_share_children():
    """Seen in CI: an endpoint named like a job met the job's `<name>-config` ConfigMap and failed as NotOwned."""
    job_body, job_spec = _parent("FineTuneJob", "same", BASE)
    endpoint = _chat("same", {"model": {"uri": "hf://org/base"}}, {})
    jobs = {(m["kind"], m["metadata"]["name"]) for m in finetune.children(job_body, job_spec, 0, SETTINGS)}
    endpoints = {(m["kind"], m["metadata"]["name"]) for m in endpoint}
    assert not jobs & endpoints, jobs & endpoints
