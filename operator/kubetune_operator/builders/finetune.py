"""FineTuneJob → the children of one attempt: ConfigMap (the resolved spec), ServiceAccount + Role + RoleBinding
(its pods may patch only this job's status), a headless Service for the rendezvous, and an Indexed Job whose pods
run `kubetune train` as one gang."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubetune.api import API_VERSION, GROUP

from .. import labels as label_keys
from ..settings import Settings
from ..failures import pod_failure_policy
from .common import (CONFIG_DIR, WORK_DIR, Manifest, child_name, kueue_labels, metadata, pod_spec, pvc_volumes,
                     resources, storage_env, template_metadata, volume_claims)

ATTEMPT_LABEL = label_keys.ATTEMPT
# Rank 0 serves kubetune_train_* here (the chart's PodMonitor scrapes the port named "metrics").
METRICS_PORT = 9100
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: 10x faster when 500 jobs arrive at once


def names(name: str) -> dict[str, str]:
    return {"config": child_name(name, "config", 253), "account": child_name(name, "runner", 253),
            "service": child_name(name, "workers")}


def job_name(name: str, attempt: int) -> str:
    # The attempt is in the name: a restarted gang never races the old Job's pods for hostnames.
    return child_name(name, f"a{attempt}")


def children(parent: Manifest, spec: Any, attempt: int, settings: Settings) -> list[Manifest]:
    """Everything one attempt needs, in apply order (the Job last, once what it mounts exists)."""
    n = names(parent["metadata"]["name"])
    policy = [network_policy(parent, n, settings)] if settings.network_policy else []
    return [*volume_claims(parent, spec.resources, spec.resources.nodes > 1), config_map(parent, spec, n),
            service_account(parent, n), role(parent, n), role_binding(parent, spec, n), service(parent, n),
            *policy, job(parent, spec, attempt, settings, n)]


def config_map(parent: Manifest, spec: Any, n: dict[str, str]) -> Manifest:
    resolved = {"apiVersion": API_VERSION, "kind": "FineTuneJob",
                "metadata": {"name": parent["metadata"]["name"], "namespace": parent["metadata"]["namespace"]},
                "spec": spec.to_dict()}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(parent, n["config"], "config"),
            "data": {"job.yaml": yaml.dump(resolved, Dumper=_DUMPER, sort_keys=False)}}


def service_account(parent: Manifest, n: dict[str, str]) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(parent, n["account"], "runner")}


def role(parent: Manifest, n: dict[str, str]) -> Manifest:
    name = parent["metadata"]["name"]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": metadata(parent, n["account"], "runner"),
            # Rank 0 only PATCHes its progress (train/report.py); the operator holds this permission itself, so it
            # may grant it without the `escalate` verb.
            "rules": [{"apiGroups": [GROUP], "resources": ["finetunejobs/status"], "resourceNames": [name],
                       "verbs": ["patch"]}]}


def role_binding(parent: Manifest, spec: Any, n: dict[str, str]) -> Manifest:
    ns = parent["metadata"]["namespace"]
    subjects = [{"kind": "ServiceAccount", "name": n["account"], "namespace": ns}]
    if spec.resources.service_account_name:  # pods run as the user's account (IRSA): it reports progress then
        subjects.append({"kind": "ServiceAccount", "name": spec.resources.service_account_name, "namespace": ns})
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": metadata(parent, n["account"], "runner"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": n["account"]},
            "subjects": subjects}


def service(parent: Manifest, n: dict[str, str]) -> Manifest:
    meta = metadata(parent, n["service"], "workers")
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,  # rank 0 resolves before it is Ready
                     "selector": label_keys.selector("FineTuneJob", parent["metadata"]["name"], "trainer")}}


def network_policy(parent: Manifest, n: dict[str, str], settings: Settings) -> Manifest:
    """The gang's pods take connections from each other only (torchrun's rendezvous, NCCL's sockets on ports it
    picks), and on the metrics port from the monitoring namespace's pods. Egress stays open: S3, the hub, the
    apiserver (progress) are the cluster's to restrict."""
    gang = {"podSelector": {"matchLabels": label_keys.selector("FineTuneJob", parent["metadata"]["name"], "trainer")}}
    metrics_from: dict[str, Any] = {"namespaceSelector": {}}
    if settings.metrics_namespace:
        metrics_from = {"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": settings.metrics_namespace}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(parent, n["service"], "workers"),
            "spec": gang | {"policyTypes": ["Ingress"], "ingress": [
                {"from": [copy.deepcopy(gang)]},
                {"from": [metrics_from], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]}]}}


def job(parent: Manifest, spec: Any, attempt: int, settings: Settings, n: dict[str, str]) -> Manifest:
    name = parent["metadata"]["name"]
    jname = job_name(name, attempt)
    res, policy = spec.resources, spec.run_policy
    nodes, gpus = res.nodes, res.gpus_per_node
    extra = {ATTEMPT_LABEL: str(attempt)} | kueue_labels(parent, policy.queue_name, policy.workload_priority_class)
    env = [{"name": "NNODES", "value": str(nodes)}, {"name": "NPROC_PER_NODE", "value": str(max(gpus, 1))},
           {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
               "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
           {"name": "ADDR", "value": f"{jname}-0.{n['service']}"},
           {"name": "PORT", "value": str(settings.rendezvous_port)},
           {"name": "KUBETUNE_STATUS_TARGET", "value": f"{parent['metadata']['namespace']}/{name}"},
           {"name": "KUBETUNE_ATTEMPT", "value": str(attempt)},
           {"name": "KUBETUNE_METRICS_PORT", "value": str(METRICS_PORT)}] + storage_env(spec.storage, settings)
    vision = spec.model.vision  # LLaVA: the encoder, a pretrain-stage projector and the images are read too
    volumes, mounts = pvc_volumes([spec.model.uri, spec.dataset.uri, spec.dataset.image_folder]
                                  + [c.uri for c in spec.dataset.concat]
                                  + ([vision.encoder, vision.projector] if vision else []),
                                  writable=[spec.checkpoints.uri])  # checkpoints are written (and resumed) there
    container = {
        "name": "trainer",
        # --no-export: the job's export ConvertJobs convert once, after the whole gang succeeded.
        "command": ["kubetune", "train", f"{CONFIG_DIR}/job.yaml", "--work-dir", f"{WORK_DIR}/run",
                    "--resume", "auto", "--no-export"],
        "env": env,
        "ports": [{"name": "rendezvous", "containerPort": settings.rendezvous_port},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "resources": resources(res, gpus),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}] + mounts,
        # The runtime writes its one-line error there; a crash without one leaves its log's tail instead. Either
        # is what the failure condition quotes (failures.py).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = pod_spec(parent, res, settings, container,
                   [{"name": "config", "configMap": {"name": n["config"]}}] + volumes, n["account"])
    if res.cache_volume is not None:
        # Every pod waits for the cache before torchrun starts; the first downloads (the volume's lock), so one
        # download serves the gang, its restarts and later jobs on the same claim. An init container, not a
        # download Job: it runs as the pod (its service account, secrets, node and network), and Kueue admits
        # one workload.
        main = pod["containers"][0]
        pod["initContainers"] = [copy.deepcopy({k: v for k, v in main.items()
                                                if k not in ("name", "command", "ports", "resources")})
                                 | {"name": "fetch", "command": ["kubetune", "fetch", f"{CONFIG_DIR}/job.yaml"]}]
    pod |= {"restartPolicy": "Never", "subdomain": n["service"],
            "terminationGracePeriodSeconds": res.termination_grace_period_seconds}
    template_meta = template_metadata(parent, metadata(parent, jname, "trainer", extra)["labels"])
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed", "completions": nodes, "parallelism": nodes,
        # A gang: one failed pod fails the Job at once; the operator restarts the whole gang from the checkpoint.
        "backoffLimit": 0,
        "podFailurePolicy": pod_failure_policy(),
        "template": {"metadata": template_meta, "spec": pod},
    }
    if policy.active_deadline_seconds:  # a restarted gang gets what the earlier attempts left (status logic)
        job_spec["activeDeadlineSeconds"] = (parent.get("status") or {}).get("attemptDeadlineSeconds") \
            or policy.active_deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(parent, jname, "trainer", extra),
            "spec": job_spec}
