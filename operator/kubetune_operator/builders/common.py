"""What every child shares: names, labels, the owner reference, the hardened pod, storage credentials."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from kubetune.api import API_VERSION, GROUP

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
            "labels": copied(meta.get("labels"), (KUEUE_PREFIX,)) | labels(parent["kind"], meta["name"], component) | (extra_labels or {}),
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


def container_security(add: Sequence[Any] = ()) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"drop": ["ALL"]} | ({"add": [str(c) for c in add]} if add else {})
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": capabilities, "seccompProfile": {"type": "RuntimeDefault"}}


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


def pvc_volumes(uris: list[str | None], writable: Sequence[str | None] = ()) -> tuple[list[dict], list[dict]]:
    """`pvc://CLAIM/path` sources mounted at /mnt/pvc/CLAIM, where the runtime looks for them: read-only, except the
    claims of `writable` URIs (where checkpoints are written)."""
    def claim(uri: str | None) -> str | None:
        return uri[len("pvc://"):].split("/", 1)[0] if uri and uri.startswith("pvc://") else None

    rw = {c for c in map(claim, writable) if c}
    claims = sorted({c for c in map(claim, [*uris, *writable]) if c})
    volumes = [{"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": c} | ({} if c in rw else {"readOnly": True})}
               for i, c in enumerate(claims)]
    mounts = [{"name": f"pvc-{i}", "mountPath": f"/mnt/pvc/{c}"} | ({} if c in rw else {"readOnly": True})
              for i, c in enumerate(claims)]
    return volumes, mounts


# Requests of a GPU pod that sets no cpu/memory: enough that it is Burstable (never evicted first as BestEffort)
# and small enough for any GPU node (an 8-GPU node has well over 32 cores and 256Gi).
CPU_PER_GPU, MEMORY_PER_GPU_GI = 4, 32
TMP_GI = 16  # /tmp's sizeLimit: compile caches and tokenizer scratch, never checkpoints
TMP_SIZE = f"{TMP_GI}Gi"
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "": 1}


def mebibytes(quantity: str) -> int:
    """A byte quantity (`100Gi`, `500G`, `1e9`, `1024`) in MiB, rounded up."""
    number = quantity.rstrip("KMGTPEik")
    try:
        return -(-int(float(number) * _SUFFIX[quantity[len(number):]]) // 2**20)
    except (KeyError, ValueError):  # `500m` bytes and the like: the schema admits them, no disk needs them
        return 0


def ephemeral_storage(pod: Any) -> str | None:
    """What the kubelet may use on the node's disk when the work dir is a sized emptyDir: it and /tmp. The scheduler
    places the pod where that much is free. Unsized, nothing is requested: Kueue admits a workload only when its
    ClusterQueue covers every resource it requests, and most cover cpu, memory and GPUs only."""
    if not pod.work_volume.size or _is_claim(pod.work_volume):
        return None
    total = TMP_GI * 1024 + mebibytes(str(pod.work_volume.size))
    return f"{total // 1024}Gi" if total % 1024 == 0 else f"{total}Mi"  # as the apiserver writes it back


def resources(pod: Any, gpus: int) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    for key, value in (("cpu", pod.cpu), ("memory", pod.memory)):
        if value is not None:
            limits[key] = requests[key] = str(value)
    if gpus:
        limits[pod.gpu_resource_name] = str(gpus)
        requests.setdefault("cpu", str(CPU_PER_GPU * gpus))
        requests.setdefault("memory", f"{MEMORY_PER_GPU_GI * gpus}Gi")
    limits |= {k: str(v) for k, v in pod.extra_resources.items()}
    disk = ephemeral_storage(pod)
    if disk:
        requests["ephemeral-storage"] = disk
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _is_claim(volume: Any) -> bool:
    return bool(volume.claim_name or volume.create)


def claim_name(parent: Manifest, volume: Any, which: str) -> str:
    return volume.claim_name or child_name(parent["metadata"]["name"], which, 253)


def volume_claims(parent: Manifest, pod: Any, shared: bool) -> list[Manifest]:
    """The PersistentVolumeClaims `create` asks for: one per resource (not per attempt), so a restarted gang finds
    its checkpoints and downloads again; owned by the resource, deleted with it."""
    out = []
    for which, volume in (("work", pod.work_volume), ("cache", pod.cache_volume)):
        if volume is None or not volume.create:
            continue
        mode = volume.access_mode or ("ReadWriteMany" if shared else "ReadWriteOnce")
        spec: dict[str, Any] = {"accessModes": [mode], "resources": {"requests": {"storage": str(volume.size or
                                                                                             "100Gi")}}}
        if volume.storage_class_name:
            spec["storageClassName"] = volume.storage_class_name
        out.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": metadata(parent, claim_name(parent, volume, which), which), "spec": spec})
    return out


def _volume(parent: Manifest, volume: Any, which: str) -> dict[str, Any]:
    if _is_claim(volume):
        return {"name": which, "persistentVolumeClaim": {"claimName": claim_name(parent, volume, which)}}
    return {"name": which, "emptyDir": {"sizeLimit": str(volume.size)} if volume.size else {}}


CACHE_DIR = "/cache"


def cache_env(pod: Any) -> list[dict[str, Any]]:
    """Where downloads go: the cache volume when there is one (hf:// into HF_HOME, s3:// and datasets into
    KUBETUNE_CACHE), else under the work dir."""
    if pod.cache_volume is None:
        return [{"name": "KUBETUNE_CACHE", "value": f"{WORK_DIR}/.cache"}]
    return [{"name": "KUBETUNE_CACHE", "value": f"{CACHE_DIR}/kubetune"},
            {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
            {"name": "KUBETUNE_CACHE_VOLUME", "value": CACHE_DIR}]


def pod_spec(parent: Manifest, pod: Any, settings: Settings, container: dict[str, Any], volumes: list[dict],
             service_account: str | None) -> dict[str, Any]:
    """A hardened pod around one container: the work volume, writable emptyDirs for /tmp, memory /dev/shm, the
    cache volume when asked; the parent's labels and annotations go on the pod template (`template_metadata`)."""
    container = dict(container)
    container.setdefault("image", pod.image or settings.image)
    if pod.image_pull_policy or settings.image_pull_policy:
        container["imagePullPolicy"] = pod.image_pull_policy or settings.image_pull_policy
    container["securityContext"] = container_security(pod.capabilities)
    container["env"] = container.get("env", []) + [{"name": "HOME", "value": WORK_DIR}] + cache_env(pod) \
        + list(pod.env)
    mounts = [{"name": "work", "mountPath": WORK_DIR}, {"name": "tmp", "mountPath": "/tmp"},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    own = [_volume(parent, pod.work_volume, "work"), {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
           {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(pod.shm_size)}}]
    if pod.cache_volume is not None:
        mounts.append({"name": "cache", "mountPath": CACHE_DIR})
        own.append(_volume(parent, pod.cache_volume, "cache"))
    container["volumeMounts"] = container.get("volumeMounts", []) + mounts + list(pod.volume_mounts)
    spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security(),
        "volumes": own + volumes + list(pod.volumes),
    }
    if service_account or pod.service_account_name:
        spec["serviceAccountName"] = pod.service_account_name or service_account
    for key, value in (("nodeSelector", pod.node_selector), ("tolerations", pod.tolerations),
                       ("affinity", pod.affinity), ("priorityClassName", pod.priority_class_name)):
        if value:
            spec[key] = value
    if pod.host_network:  # the node's interfaces (RDMA); names still resolve through the cluster's DNS
        spec |= {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}
    return spec


# Ours, or set by kubectl, Argo CD, Helm or kopf on the parent: about the parent itself, never copied to its children
# (Argo CD's tracking label on a child would make Argo prune it as an object missing from git).
NOT_COPIED = (f"{GROUP}/", "kubectl.kubernetes.io/", "argocd.argoproj.io/", "kopf.zalando.org/", "meta.helm.sh/",
              "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/name",
              "app.kubernetes.io/component")


def copied(values: dict[str, str] | None, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {k: v for k, v in (values or {}).items() if not k.startswith(NOT_COPIED + skip)}


def template_metadata(parent: Manifest, labels: dict[str, str]) -> dict[str, Any]:
    """A pod template's metadata: the child's labels, and the parent's annotations (Kueue topology requests, Istio
    opt-out, cost tags) as pods read them."""
    out: dict[str, Any] = {"labels": dict(labels)}
    annotations = copied(parent["metadata"].get("annotations"))
    if annotations:
        out["annotations"] = annotations
    return out
