"""Where and how a resource's pods run: image, size, placement, volumes and the fabric settings GPU clusters need."""

from __future__ import annotations

import typing
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field

from .base import DNS_SUBDOMAIN, KubeModel, KubeObject, KubeObjectList, Quantity, Rule

EXTENDED_RESOURCE = (r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
ExtendedResource = Annotated[str, Field(pattern=EXTENDED_RESOURCE, max_length=253)]
"""A vendor resource name with its domain: `nvidia.com/gpu`, `amd.com/gpu`, `nvidia.com/mig-1g.10gb`,
`rdma/ib`, `vpc.amazonaws.com/efa`."""
DEFAULT_GPU = "nvidia.com/gpu"


class Capability(StrEnum):
    """Linux capabilities a training pod may add; every other one stays dropped."""

    IPC_LOCK = "IPC_LOCK"  # RDMA (InfiniBand, RoCE, EFA) pins memory for the NIC
    SYS_RESOURCE = "SYS_RESOURCE"  # raises the locked-memory limit RDMA needs above the container default


class VolumeSpec(KubeModel):
    """A pod directory's volume: an emptyDir by default, an existing PersistentVolumeClaim (`claimName`), or a
    claim the operator creates for the resource (`create`), which lives as long as the resource does: across
    whole-gang restarts, deleted with it."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("claimName", "create"), "set claimName (an existing claim) or create, not both",
             "!has(self.claimName) || !has(self.create) || !self.create", lambda claim, create: not (claim and create)),
        Rule(("storageClassName", "create"), "storageClassName and accessMode are for a claim the operator creates "
             "(create: true)", "(!has(self.storageClassName) && !has(self.accessMode)) || "
             "(has(self.create) && self.create)", lambda sc, create: sc is None or create),
        Rule(("accessMode", "create"), "storageClassName and accessMode are for a claim the operator creates "
             "(create: true)", "!has(self.accessMode) || (has(self.create) && self.create)",
             lambda mode, create: mode is None or create),
    )

    claim_name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)] | None = None
    """An existing PersistentVolumeClaim in the resource's namespace. Pods on several nodes share it only when it
    is ReadWriteMany (NFS, CephFS, Lustre, EFS, Filestore)."""
    create: bool = False
    """Create a claim `<name>-<volume>` of `size` for this resource (ReadWriteMany when several pods share it)."""
    storage_class_name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)] | None = None
    """Storage class of the created claim; the cluster's default class when unset."""
    access_mode: typing.Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] | None = None
    """Access mode of the created claim; ReadWriteMany when pods on several nodes share it, else ReadWriteOnce."""
    size: Quantity | None = None
    """Size of the created claim (100Gi when unset); for an emptyDir its `sizeLimit` and, with /tmp's 16Gi, the pod's
    `ephemeral-storage` request (with Kueue, the ClusterQueue must then cover ephemeral-storage). Unset: no limit,
    no request."""


class PodSettings(KubeModel):
    """Where and how the pods run."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("extraResources", "gpuResourceName"), "extraResources cannot name the GPU resource: gpus (or "
             "gpusPerNode) sets it", "!has(self.extraResources) || !has(self.gpuResourceName) || "
             "!(self.gpuResourceName in self.extraResources)",
             lambda extra, gpu: gpu not in (extra or {})),
    )

    image: str | None = None
    """Container image; the operator's default runtime image when unset."""
    image_pull_policy: typing.Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy; Kubernetes' default when unset."""
    cpu: Quantity | None = None
    """CPU request and limit per pod, e.g. `8` or `7500m`. Unset on a GPU pod: a request of 4 per GPU (no limit)."""
    memory: Quantity | None = None
    """Memory request and limit per pod, e.g. `64Gi`. Unset on a GPU pod: a request of 32Gi per GPU (no limit)."""
    shm_size: Quantity = "8Gi"
    """Size of the memory-backed /dev/shm (NCCL and dataloader workers need more than the container default)."""
    gpu_resource_name: ExtendedResource = DEFAULT_GPU
    """The resource the GPU count is requested as: `nvidia.com/gpu`, `amd.com/gpu`, a MIG slice such as
    `nvidia.com/mig-3g.40gb`."""
    extra_resources: dict[ExtendedResource, Quantity] = Field(default_factory=dict, max_length=16)
    """Further extended resources per pod (limits), e.g. `rdma/ib: 1` or `vpc.amazonaws.com/efa: 4`."""
    capabilities: list[Capability] = Field(default_factory=list, max_length=2)
    """Linux capabilities added to the container (all others stay dropped): `IPC_LOCK` and `SYS_RESOURCE`, which
    RDMA needs."""
    host_network: bool = False
    """Run in the node's network namespace (some RDMA and RoCE fabrics need it); DNS stays the cluster's
    (`dnsPolicy: ClusterFirstWithHostNet`). Ports then are the node's: one such pod per node per port."""
    work_volume: VolumeSpec = Field(default_factory=VolumeSpec)
    """The volume at /work: the run's checkpoints, logs and, without `cacheVolume`, downloads. Give a multi-node
    DeepSpeed job one shared claim: every rank's optimizer partition then lands in one checkpoint, which is published
    and resumed whole."""
    cache_volume: VolumeSpec | None = None
    """A volume at /cache for downloaded models and datasets (hf://, s3://), filled once by the first pod (the others
    wait) before training starts and kept across restarts; share one ReadWriteMany claim between jobs and a second
    job of the same model downloads nothing. Unset: downloads go under /work."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must match."""
    tolerations: KubeObjectList = Field(default_factory=list)
    """Pod tolerations (corev1.Toleration), passed through unchanged."""
    affinity: KubeObject | None = None
    """Pod affinity (corev1.Affinity), passed through unchanged."""
    priority_class_name: str | None = None
    """PriorityClass of the pods."""
    service_account_name: str | None = None
    """Service account of the pods, e.g. one bound to an IAM role for S3 (IRSA)."""
    env: KubeObjectList = Field(default_factory=list)
    """Extra environment variables (corev1.EnvVar), e.g. the fabric's `NCCL_SOCKET_IFNAME`, `NCCL_IB_HCA`,
    `NCCL_DEBUG`."""
    volumes: KubeObjectList = Field(default_factory=list)
    """Extra volumes (corev1.Volume); mount them with volumeMounts."""
    volume_mounts: KubeObjectList = Field(default_factory=list)
    """Extra volume mounts (corev1.VolumeMount) for the main container."""


class PodResources(PodSettings):
    """A single pod's placement and size."""

    gpus: int = Field(default=0, ge=0)
    """GPUs of the pod (as `gpuResourceName`); 0 runs on CPU."""


def pod_warnings(spec: Any) -> list[str]:
    """What `kubetune validate` says about a valid spec that a GPU cluster would still treat badly."""
    res = spec.resources
    gpus = getattr(res, "gpus_per_node", getattr(res, "gpus", 0))
    out = []
    if not gpus and res.cpu is None and res.memory is None:
        out.append("spec.resources: no cpu, memory or GPUs: the pods would be BestEffort, the first evicted when a "
                   "node runs short; set resources.cpu and resources.memory")
    nodes = getattr(res, "nodes", 1)
    deepspeed = getattr(getattr(spec, "training", None), "deepspeed", "none")
    if nodes > 1 and str(deepspeed) != "none" and not (res.work_volume.claim_name or res.work_volume.create):
        out.append("spec.resources.workVolume: a multi-node DeepSpeed job on per-pod disks keeps each node's "
                   "optimizer partitions apart, so its checkpoints are never published or resumed after a restart; "
                   "give it a shared ReadWriteMany claim (workVolume.claimName, or create: true)")
    return out
