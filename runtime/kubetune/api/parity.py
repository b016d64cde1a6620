"""What a run on this machine does with every field of a FineTuneJob, ConvertJob and ChatEndpoint, next to what a
cluster does (`kubetune train JOB.yaml`, `kubetune convert CONVERTJOB.yaml`, `kubetune serve ENDPOINT.yaml`).

Each field has one verdict: honoured the same way, honoured through a local equivalent, cluster only (said once at
start when set: "ignored here: resources.nodes=2 (cluster only)"), or refused with the reason. The table renders
docs/local-vs-cluster.md; tests/test_parity.py walks every field of the models and fails on one without an entry.
"""

from __future__ import annotations

from typing import Any, Iterator

from pydantic import BaseModel

from .base import field_name, list_submodel, submodel

HONOURED = "honoured"
EQUIVALENT = "local equivalent"
CLUSTER = "cluster only"
REFUSED = "refused"

Entry = tuple[str, str]


def _same(verdict: str, note: str, prefix: str, *names: str) -> dict[str, Entry]:
    return {f"{prefix}.{name}": (verdict, note) for name in names}


_TRAINS = "the same training engine the pods run (their command is `kubetune train` on this spec)"
_POD = ("image", "imagePullPolicy", "cpu", "memory", "shmSize", "nodeSelector", "tolerations", "affinity",
        "priorityClassName", "serviceAccountName", "volumes", "volumeMounts")


_FABRIC = ("gpuResourceName", "extraResources", "capabilities", "hostNetwork")
_VOLUME = ("claimName", "create", "storageClassName", "accessMode", "size")


def _pod(prefix: str) -> dict[str, Entry]:
    return {**_same(CLUSTER, "pod placement and size: this machine's processes run where you start them", prefix,
                    *_POD),
            **_same(CLUSTER, "the pod's devices, capabilities and network: this machine's are used as they are",
                    prefix, *_FABRIC),
            **_same(EQUIVALENT, "the work dir is --work-dir (./work_dirs/<name>) on this machine's disk", prefix,
                    *(f"workVolume.{f}" for f in _VOLUME)),
            **_same(EQUIVALENT, "downloads go to $HF_HOME and $KUBETUNE_CACHE here (`kubetune fetch` fills them "
                    "once, under the same lock the pods take)", prefix, *(f"cacheVolume.{f}" for f in _VOLUME)),
            f"{prefix}.env": (CLUSTER, "extra container environment: set the variables in your shell here")}


def _metadata(name_note: str) -> dict[str, Entry]:
    return {"metadata.name": (HONOURED, name_note),
            **_same(CLUSTER, "Kubernetes object metadata", "metadata", "namespace", "labels", "annotations")}


def _storage() -> dict[str, Entry]:
    return {"spec.storage.secretRef": (EQUIVALENT, "a cluster Secret a laptop cannot read (said once at start): "
                                                   "credentials come from the environment, ~/.aws or "
                                                   "KUBETUNE_S3_SECRET_DIR"),
            **_same(HONOURED, "used for s3:// here as in the pods, over AWS_ENDPOINT_URL and AWS_REGION",
                    "spec.storage", "endpoint", "region", "pathStyle")}


FINETUNE: dict[str, Entry] = {
    **_metadata("names the run: ./work_dirs/<name> unless --work-dir, and the export ConvertJobs' names"),
    "spec.baseConfig": (HONOURED, "the predefined config is filled in before validation, in both places"),
    **_same(HONOURED, _TRAINS, "spec.model", "uri", "trustRemoteCode", "dtype", "eosToken", "attnImplementation",
            "routerAuxLossCoef", "vision.encoder", "vision.selectLayer", "vision.projectorDepth", "vision.projector"),
    **_same(HONOURED, _TRAINS, "spec.method", "type", "parameters", "lora.r", "lora.alpha", "lora.dropout",
            "lora.targetModules", "lora.bias", "quantization.bits", "quantization.type", "quantization.doubleQuant",
            "quantization.computeDtype", "dpo.beta", "dpo.lossType", "dpo.labelSmoothing", "orpo.beta",
            "reward.lossType", "reward.penalty", "reward.penaltyWeight", "reward.rewardToken", "vision.stage",
            "vision.encoderLora.r", "vision.encoderLora.alpha", "vision.encoderLora.dropout",
            "vision.encoderLora.targetModules", "vision.encoderLora.bias"),
    **_same(HONOURED, _TRAINS + "; local paths are relative to the config file", "spec.dataset", "uri",
            "imageFolder", "concat[].uri"),
    **_same(HONOURED, _TRAINS, "spec.dataset", "format", "fileType", "split", "system", "systemTemplate",
            "maxSamples", "promptTemplate", "maxLength", "maxResponseLength", "packToMaxLength", "maxPackedLength",
            "shuffleBeforePack", "varlenAttention", "numProc", "concat[].format", "concat[].fileType",
            "concat[].split", "concat[].system", "concat[].systemTemplate", "concat[].maxSamples",
            "padImageToSquare", "groupByModalityLength"),
    **_same(HONOURED, _TRAINS, "spec.training", "batchSize", "accumulativeCounts", "stepUnit", "maxEpochs",
            "maxSteps", "optimizer.type", "optimizer.lr", "optimizer.betas", "optimizer.weightDecay", "optimizer.eps",
            "maxNorm", "warmupRatio", "warmupStartFactor", "lrSchedule", "minLrRatio", "precision", "gradientCheckpointing", "lossKernel", "deepspeed",
            "seed", "deterministic", "shuffle", "dataloaderNumWorkers", "logEverySteps"),
    "spec.training.sequenceParallelSize": (HONOURED, "over the processes started here (NPROC_PER_NODE or "
                                                     "torchrun), as over the gang's GPUs in a cluster"),
    **_same(HONOURED, _TRAINS, "spec.checkpoints", "everySteps", "byEpoch", "keep",
            "saveOptimizer"),
    "spec.checkpoints.uri": (HONOURED, "checkpoints are copied there as the pods copy them (s3://; pvc://CLAIM/path "
                                       "is $KUBETUNE_PVC_ROOT/CLAIM/path here, /mnt/pvc by default); --resume auto "
                                       "resumes from it"),
    **_same(HONOURED, _TRAINS, "spec.evaluation", "everySteps", "inputs", "maxNewTokens", "system", "systemTemplate",
            "stopWords", "greedy"),
    **_pod("spec.resources"),
    **{k: (CLUSTER, "the export ConvertJobs' pods: here the export runs in this process after training")
       for k in _pod("spec.export.resources")},
    "spec.export.resources.gpus": (CLUSTER, "the export ConvertJobs' pods: here the export runs in this process "
                                            "after training"),
    "spec.resources.nodes": (CLUSTER, "pods in the gang: NNODES/NODE_RANK (or torchrun) start processes here"),
    "spec.resources.gpusPerNode": (CLUSTER, "GPUs per pod: NPROC_PER_NODE (or torchrun) starts one process per GPU "
                                            "here"),
    "spec.resources.terminationGracePeriodSeconds": (CLUSTER, "the pod's time after SIGTERM; here SIGTERM (or kill) "
                                                              "stops the run after its step, with a checkpoint, too"),
    **_storage(),
    "spec.runPolicy.suspend": (CLUSTER, "a run here starts when you start it"),
    "spec.runPolicy.maxRestarts": (CLUSTER, "rerun with --resume auto to continue from the newest checkpoint"),
    "spec.runPolicy.activeDeadlineSeconds": (CLUSTER, "the Job's deadline: stop a run here yourself"),
    "spec.runPolicy.ttlSecondsAfterFinished": (CLUSTER, "deletes the Kubernetes objects; nothing to delete here"),
    "spec.runPolicy.maxDisruptions": (CLUSTER, "preemptions and evictions happen to pods; a run stopped here by "
                                               "SIGTERM continues with --resume auto"),
    "spec.runPolicy.queueName": (CLUSTER, "Kueue admits cluster Jobs only"),
    "spec.runPolicy.workloadPriorityClass": (CLUSTER, "Kueue's priority among cluster Jobs"),
    **_same(HONOURED, "after training, the ConvertJobs the operator would create run here: <checkpoints.uri>/export/"
                      "hf and /export/merged, the same layout (skipped, and said, without checkpoints.uri, as the "
                      "cluster's ExportSkipped event; --no-export skips it)", "spec.export", "adapter", "merge"),
}

_CONVERTS = "`kubetune convert CONVERTJOB.yaml` runs it as the pod does"

CONVERT: dict[str, Entry] = {
    **_metadata("not used by the conversion here or in a cluster (it names the pod's Job)"),
    **_same(HONOURED, _CONVERTS, "spec", "operation", "output.uri", "baseModel.uri", "maxShardSize", "fp32",
            "safeSerialization", "saveFormat", "isClip", "device"),
    "spec.source.checkpointUri": (HONOURED, _CONVERTS + "; pth_to_hf also needs --config FINETUNEJOB.yaml, the "
                                            "training config a fineTuneJobRef supplies in a cluster"),
    "spec.source.fineTuneJobRef": (REFUSED, "names a FineTuneJob in a cluster: set source.checkpointUri (its iter_N "
                                            "directory) and --config instead"),
    "spec.baseModel.trustRemoteCode": (HONOURED, "no effect here or in a cluster: a merge reads tensors and never "
                                                 "runs the model's code"),
    **_pod("spec.resources"),
    "spec.resources.gpus": (CLUSTER, "the pod's GPU limit: device auto uses a GPU here when one is visible"),
    "spec.queueName": (CLUSTER, "Kueue admits cluster Jobs only"),
    "spec.workloadPriorityClass": (CLUSTER, "Kueue's priority among cluster Jobs"),
    **_storage(),
}

_SERVES = "`kubetune serve ENDPOINT.yaml` passes it as the pods' command does (kubetune.api.chat.serve_arguments)"

CHAT: dict[str, Entry] = {
    **_metadata("the base model's served name, as in a cluster"),
    **_same(HONOURED, _SERVES, "spec", "model.uri", "model.trustRemoteCode", "model.dtype", "promptTemplate",
            "system", "systemTemplate", "bits", "generation.maxNewTokens", "generation.temperature",
            "generation.topK", "generation.topP", "generation.repetitionPenalty", "generation.stopWords"),
    **_same(HONOURED, _SERVES + "; every adapter is served beside the base under its name, as in a cluster",
            "spec", "adapters[].name", "adapters[].uri"),
    "spec.adapters[].fineTuneJobRef": (REFUSED, "names a FineTuneJob in a cluster: set the adapter's uri (the job's "
                                                "<checkpoints.uri>/export/hf)"),
    "spec.engine": (REFUSED, "vllm runs in the cluster's vLLM image; builtin is honoured"),
    **_same(CLUSTER, "vLLM's settings: engine vllm runs in a cluster only", "spec.vllm", "image", "maxModelLen",
            "gpuMemoryUtilization", "maxLoras", "maxLoraRank", "extraArgs"),
    "spec.auth.apiKeySecretRef": (EQUIVALENT, "a cluster Secret: refused unless the keys are given here "
                                              "(--api-key-file FILE or KUBETUNE_API_KEYS), never served open"),
    "spec.replicas": (CLUSTER, "one server process here"),
    **_same(CLUSTER, "the HorizontalPodAutoscaler: one server process here", "spec.autoscaling", "minReplicas",
            "maxReplicas", "targetInflightRequests"),
    **_pod("spec.resources"),
    "spec.resources.gpus": (CLUSTER, "the pod's GPU limit: a visible GPU is used here"),
    **_storage(),
}

TABLES: dict[str, dict[str, Entry]] = {"FineTuneJob": FINETUNE, "ConvertJob": CONVERT, "ChatEndpoint": CHAT}


def fields(kind: type[BaseModel]) -> Iterator[str]:
    """Every settable field of a kind: metadata and spec, dotted camelCase, `[]` for the items of a list."""
    for top in ("metadata", "spec"):
        yield from _walk(kind.model_fields[top].annotation, top)


def _walk(model: Any, prefix: str) -> Iterator[str]:
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        items = list_submodel(info.annotation)
        inner = submodel(info.annotation) if items is None else None
        if items is not None:
            yield from _walk(items, path + "[]")
        elif inner is not None:
            yield from _walk(inner, path)
        else:
            yield path


def cluster_only_settings(obj: Any) -> list[tuple[str, Any]]:
    """The cluster-only fields an object sets to something other than their default, with the value set."""
    table = TABLES[type(obj).__name__]
    found = []
    for path, (verdict, _) in table.items():
        if verdict != CLUSTER or "[]" in path:
            continue
        set_, value = _value(obj, path)
        if set_:
            found.append((path, value))
    return found


def _value(obj: Any, path: str) -> tuple[bool, Any]:
    """Whether the field at `path` differs from its default, and its value as YAML spells it."""
    for key in path.split("."):
        if obj is None:
            return False, None
        model: type[BaseModel] = type(obj)
        name = field_name(model, key)
        info, obj = model.model_fields[name], getattr(obj, name)
    if obj == info.get_default(call_default_factory=True):
        return False, None
    value = obj.model_dump(mode="json", by_alias=True) if isinstance(obj, BaseModel) else obj
    return True, value


def render() -> str:
    out = [INTRO]
    for kind, table in TABLES.items():
        out += [f"## {kind}", "", "| Field | Here | How |", "|---|---|---|"]
        out += [f"| `{path}` | {verdict} | {note.replace('|', '/')} |" for path, (verdict, note) in table.items()]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


INTRO = """# One YAML, two places: what a run here does with each field

Generated by `kubetune crds --parity docs/local-vs-cluster.md` from `kubetune.api.parity`; do not edit by hand.
`tests/test_parity.py` fails when a field of the API has no row here, and runs one manifest both ways (locally and
through the operator's rendered pods against the same S3 server) to compare checkpoints, exports and weights.

- **honoured**: the same behaviour as in a cluster.
- **local equivalent**: the cluster's mechanism does not exist here; the row says what takes its place.
- **cluster only**: about pods, queues or Kubernetes objects; when set, a run here says so once at start
  (`ignored here: spec.resources.nodes=2 (cluster only)`) and goes on.
- **refused**: a run here stops with this reason before doing anything.

The commands: `kubetune train FINETUNEJOB.yaml`, `kubetune convert CONVERTJOB.yaml [--config FINETUNEJOB.yaml]`,
`kubetune serve CHATENDPOINT.yaml [--host H --port P --api-key-file F]`.
"""
