"""ConvertJob: turn a checkpoint into a Hugging Face model or adapter, merge an adapter, or split shards."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, TYPE_CHECKING

from pydantic import Field

from .base import (API_VERSION, DNS_SUBDOMAIN, Condition, KubeModel, ObjectMeta, PriorityClassName, QueueName,
                   Rule, StorageSpec, Uri)
from .pods import PodResources

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from .finetune import FineTuneJobSpec


class ConvertOperation(StrEnum):
    PTH_TO_HF = "pth_to_hf"
    MERGE = "merge"
    SPLIT = "split"


class ConvertSource(KubeModel):
    """What to convert: the latest checkpoint of a FineTuneJob, or a checkpoint/model at a URI."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("fineTuneJobRef", "checkpointUri"), "set exactly one of fineTuneJobRef and checkpointUri",
             "has(self.fineTuneJobRef) != has(self.checkpointUri)", lambda ref, uri: (ref is None) != (uri is None)),
    )

    fine_tune_job_ref: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)] | None = None
    """Name of a FineTuneJob in the same namespace; its latest complete checkpoint (or export) is used."""
    checkpoint_uri: Uri | None = None
    """A checkpoint directory (pth_to_hf), an adapter (merge) or a model (split)."""


class BaseModelRef(KubeModel):
    """The model an adapter is merged into."""

    uri: Uri
    """Where the base model lives."""
    trust_remote_code: bool = False
    """Run the model repository's own code when loading it."""


class OutputSpec(KubeModel):
    """Where the result goes."""

    uri: Uri
    """Destination directory (`s3://`, `pvc://`, `file://`)."""


class ConvertJobSpec(KubeModel):
    """One conversion, run as a single-pod Job."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("baseModel", "operation"), "baseModel is only used by operation merge",
             "!has(self.baseModel) || self.operation == 'merge'", lambda base, op: base is None or op == "merge"),
        Rule(("isClip", "operation"), "isClip is only valid with operation merge",
             "!has(self.isClip) || !self.isClip || self.operation == 'merge'", lambda clip, op: not clip or op == "merge"),
        Rule(("fp32", "operation"), "fp32 is only valid with operation pth_to_hf",
             "!has(self.fp32) || !self.fp32 || self.operation == 'pth_to_hf'",
             lambda fp32, op: not fp32 or op == "pth_to_hf"),
        Rule(("saveFormat", "operation"), "saveFormat is only valid with operation pth_to_hf",
             "!has(self.saveFormat) || self.saveFormat == 'kubetune' || self.operation == 'pth_to_hf'",
             lambda fmt, op: fmt == "kubetune" or op == "pth_to_hf"),
    )

    operation: ConvertOperation
    """`pth_to_hf` (checkpoint → HF adapter or model), `merge` (adapter + base → model) or `split` (one tensor per shard)."""
    source: ConvertSource
    """What to convert."""
    base_model: BaseModelRef | None = None
    """Base model for merge; defaults to the referenced FineTuneJob's model."""
    output: OutputSpec
    """Where the result goes."""
    max_shard_size: Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")] = "2GB"
    """Largest output shard, e.g. `2GB` or `500MB`."""
    fp32: bool = False
    """Keep fp32 weights (pth_to_hf writes fp16 otherwise)."""
    safe_serialization: bool = True
    """Write safetensors (otherwise PyTorch .bin)."""
    save_format: Literal["kubetune", "xtuner", "huggingface"] = "kubetune"
    """LLaVA checkpoints (pth_to_hf): kubetune's layout (`llm_adapter/`, `visual_encoder_adapter/`, `projector/`;
    `xtuner` is the same) or one transformers `LlavaForConditionalGeneration` with the adapters merged."""
    is_clip: bool = False
    """The adapter belongs to a CLIP vision encoder (LLaVA)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the merge arithmetic runs."""
    queue_name: QueueName | None = None
    """Kueue LocalQueue (`kueue.x-k8s.io/queue-name`): the Job is created suspended and runs when Kueue admits it.
    A FineTuneJob's export ConvertJobs take its queue."""
    workload_priority_class: PriorityClassName | None = None
    """Kueue WorkloadPriorityClass (`kueue.x-k8s.io/priority-class`)."""
    resources: PodResources = Field(default_factory=PodResources)
    """Pod size and placement."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Credentials and endpoint for s3:// and hf:// URIs."""


class ConvertPhase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"  # waiting for Kueue to admit it
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConvertJobStatus(KubeModel):
    """Observed state."""

    phase: ConvertPhase | None = None
    """Pending, Queued, Running, Succeeded or Failed."""
    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """Running, Succeeded, Failed."""
    output_uri: str | None = None
    """Where the result was written."""
    start_time: datetime | None = None
    """When the pod started."""
    completion_time: datetime | None = None
    """When it finished."""
    message: str | None = None
    """Why the job is in its phase, in one line."""


class ConvertJob(KubeModel):
    """A checkpoint conversion, adapter merge or shard split."""

    api_version: Literal["kubetune.io/v1alpha1"] = API_VERSION
    """`kubetune.io/v1alpha1`."""
    kind: Literal["ConvertJob"] = "ConvertJob"
    """`ConvertJob`."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: ConvertJobSpec
    """Desired state."""
    status: ConvertJobStatus | None = None
    """Observed state."""


def export_specs(job_name: str, spec: FineTuneJobSpec) -> dict[str, dict[str, Any]]:
    """The ConvertJob specs a FineTuneJob's `export` asks for, keyed `adapter` and `merged`, in the order they run:
    the operator creates them as the job's children, `kubetune train` runs them itself. Empty when nothing is asked
    or `checkpoints.uri` is unset (no place outlives a pod to write them to). The adapter's source is the job's
    latest checkpoint, by reference (`fineTuneJobRef`); a local run resolves it to the final checkpoint."""
    if not (spec.export.adapter or spec.export.merge) or not spec.checkpoints.uri:
        return {}
    root = spec.checkpoints.uri.rstrip("/") + "/export"
    storage = spec.storage.to_dict()
    resources = inherited_resources(spec.resources, spec.export.resources)
    queue = {k: v for k, v in (("queueName", spec.run_policy.queue_name),
                                ("workloadPriorityClass", spec.run_policy.workload_priority_class)) if v}
    out = {"adapter": {"operation": "pth_to_hf", "source": {"fineTuneJobRef": job_name},
                       "output": {"uri": f"{root}/hf"}, "storage": storage, "resources": resources} | queue}
    if spec.export.merge and spec.method.scheme != "full":
        base = {"uri": spec.model.uri} | ({"trustRemoteCode": True} if spec.model.trust_remote_code else {})
        out["merged"] = {"operation": "merge", "source": {"checkpointUri": f"{root}/hf"}, "baseModel": base,
                         "output": {"uri": f"{root}/merged"}, "storage": storage,
                         "resources": resources} | queue
    return out


INHERITED = ("image", "image_pull_policy", "service_account_name", "node_selector", "tolerations", "affinity",
             "priority_class_name", "memory", "cache_volume", "env", "volumes", "volume_mounts")


def inherited_resources(job: Any, export: PodResources) -> dict[str, Any]:
    """The export pods' settings: `export.resources`, where a field is at its default the training pods' own (a
    value equal to the default counts as unset: the apiserver stamps schema defaults into the stored object)."""
    merged = export.model_copy(update={
        name: getattr(job, name) for name in INHERITED
        if getattr(export, name) == PodResources.model_fields[name].get_default(call_default_factory=True)})
    return merged.model_dump(mode="json", by_alias=True, exclude_defaults=True)
