"""What every child shares: names, labels, the owner reference, the hardened pod, storage credentials."""

from __future__ import annotations

import hashlib
from typing import Any

from kubetune.api import API_VERSION

from .. import labels as label_keys
from ..settings import Settings

Manifest = dict[str, Any]
WORK_DIR = "/work"
CONFIG_DIR = "/etc/kubetune"


def child_name(parent: str, suffix: str, limit: int = 63) -> str:
    """`parent-suffix`, shortened with a hash when it would pass `limit` (DNS labels: 63)."""
    name = f"{parent}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{parent[:limit - len(suffix) - 10]}-{digest}-{suffix}"


def labels(kind: str, name: str, component: str) -> dict[str, str]:
    return label_keys.of(kind, name, component)


def owner_reference(parent: Manifest) -> dict[str, Any]:
    meta = parent["metadata"]
    return {"apiVersion": API_VERSION, "kind": parent["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def metadata(parent: Manifest, name: str, component: str, extra_labels: dict[str, str] | None = None) -> dict:
    meta = parent["metadata"]
    return {"name": name, "namespace": meta["namespace"],
            "labels": labels(parent["kind"], meta["name"], component) | (extra_labels or {}),
            "ownerReferences": [owner_reference(parent)]}


KUEUE_PREFIX = "kueue.x-k8s.io/"
QUEUE_LABEL, PRIORITY_LABEL = KUEUE_PREFIX + "queue-name", KUEUE_PREFIX + "priority-class"


def kueue_labels(parent: Manifest, queue: str | None, priority: str | None) -> dict[str, str]:
    """What Kueue reads from a Job: the parent's own `kueue.x-k8s.io/*` labels (as Kueue's docs put them on a
    workload), then the spec's queue and WorkloadPriorityClass, which win."""
    own = {k: v for k, v in (parent["metadata"].get("labels") or {}).items() if k.startswith(KUEUE_PREFIX)}
    return own | {k: v for k, v in ((QUEUE_LABEL, queue), (PRIORITY_LABEL, priority)) if v}


def created_suspended(job: Manifest) -> dict[str, Any] | None:
    """What a queued Job is created with and never applied again: `spec.suspend: true`. Kueue admits the Job by
    unsuspending it and preempts it by suspending it; after creation the field is Kueue's, and an operator that
    applied it (on a restart, an upgrade, a spec edit) would suspend every admitted gang it touched."""
    return {"spec": {"suspend": True}} if QUEUE_LABEL in job["metadata"]["labels"] else None


def container_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security() -> dict[str, Any]:
    # The runtime image's user; fsGroup makes emptyDirs and mounted PVCs writable for it.
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}}


def storage_env(storage: Any, settings: Settings) -> list[dict[str, Any]]:
    """S3/HF credentials from the secret (optional keys), endpoint and addressing; none = the pod's identity. Fields
    the spec leaves empty take the cluster's defaults (the chart's `storage` values)."""
    env: list[dict[str, Any]] = []
    secret_ref = storage.secret_ref or settings.storage_secret
    if secret_ref:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret_ref, "key": key,
                                                                    "optional": True}}})
    if storage.endpoint or settings.storage_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": storage.endpoint or settings.storage_endpoint})
    if storage.region or settings.storage_region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region or settings.storage_region})
    if storage.path_style or settings.storage_path_style:
        env.append({"name": "KUBETUNE_S3_ADDRESSING_STYLE", "value": "path"})
    return env


def pvc_volumes(uris: list[str | None]) -> tuple[list[dict], list[dict]]:
    """`pvc://CLAIM/path` sources mounted read-only at /mnt/pvc/CLAIM, where the runtime looks for them."""
    claims = sorted({u[len("pvc://"):].split("/", 1)[0] for u in uris if u and u.startswith("pvc://")})
    volumes = [{"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": c, "readOnly": True}}
               for i, c in enumerate(claims)]
    mounts = [{"name": f"pvc-{i}", "mountPath": f"/mnt/pvc/{c}", "readOnly": True} for i, c in enumerate(claims)]
    return volumes, mounts


def resources(pod: Any, gpus: int) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    for key, value in (("cpu", pod.cpu), ("memory", pod.memory)):
        if value is not None:
            limits[key] = requests[key] = str(value)
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def pod_spec(pod: Any, settings: Settings, container: dict[str, Any], volumes: list[dict],
             service_account: str | None) -> dict[str, Any]:
    """A hardened pod around one container: writable emptyDirs for the work dir, caches and /tmp, memory /dev/shm."""
    container = dict(container)
    container.setdefault("image", pod.image or settings.image)
    if pod.image_pull_policy or settings.image_pull_policy:
        container["imagePullPolicy"] = pod.image_pull_policy or settings.image_pull_policy
    container["securityContext"] = container_security()
    container["env"] = container.get("env", []) + [{"name": "HOME", "value": WORK_DIR},
                                                   {"name": "KUBETUNE_CACHE", "value": f"{WORK_DIR}/.cache"}] \
        + list(pod.env)
    container["volumeMounts"] = container.get("volumeMounts", []) + [
        {"name": "work", "mountPath": WORK_DIR}, {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"}] + list(pod.volume_mounts)
    spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security(),
        "volumes": [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(pod.shm_size)}}]
        + volumes + list(pod.volumes),
    }
    if service_account or pod.service_account_name:
        spec["serviceAccountName"] = pod.service_account_name or service_account
    for key, value in (("nodeSelector", pod.node_selector), ("tolerations", pod.tolerations),
                       ("affinity", pod.affinity), ("priorityClassName", pod.priority_class_name)):
        if value:
            spec[key] = value
    return spec
