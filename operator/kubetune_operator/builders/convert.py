"""ConvertJob → one single-pod Job running `kubetune convert ...`."""

from __future__ import annotations

from typing import Any

from ..settings import Settings
from .common import (WORK_DIR, Manifest, child_name, kueue_labels, metadata, pod_spec, pvc_volumes, resources,
                     storage_env, template_metadata, volume_claims)


def job_name(name: str) -> str:
    return child_name(name, "convert")


def command(spec: Any, source_uri: str, base_uri: str | None, config_path: str | None) -> list[str]:
    """The CLI call; `source_uri`/`base_uri` are resolved by the caller (a FineTuneJob ref becomes its checkpoint)."""
    out = spec.output.uri
    op = spec.operation.value
    if op == "pth_to_hf":
        argv = ["kubetune", "convert", "pth_to_hf", config_path or "", source_uri, out]
        argv += ["--fp32"] if spec.fp32 else []
        argv += ["--save-format", spec.save_format] if spec.save_format != "kubetune" else []
    elif op == "merge":
        argv = ["kubetune", "convert", "merge", base_uri or "", source_uri, out, "--device", spec.device]
        argv += ["--is-clip"] if spec.is_clip else []
    else:
        argv = ["kubetune", "convert", "split", source_uri, out]
    if op != "split":
        argv += ["--max-shard-size", spec.max_shard_size]
        argv += ["--safe-serialization"] if spec.safe_serialization else ["--no-safe-serialization"]
    return argv


def job(parent: Manifest, spec: Any, source_uri: str, base_uri: str | None, config_map: str | None,
        settings: Settings) -> Manifest:
    name = parent["metadata"]["name"]
    config_path = "/etc/kubetune/job.yaml" if config_map else None
    volumes, mounts = pvc_volumes([source_uri, base_uri], writable=[spec.output.uri])
    if config_map:  # pth_to_hf needs the training config: the FineTuneJob's own ConfigMap
        volumes.append({"name": "config", "configMap": {"name": config_map}})
        mounts.append({"name": "config", "mountPath": "/etc/kubetune", "readOnly": True})
    container = {"name": "convert", "command": command(spec, source_uri, base_uri, config_path),
                 "env": storage_env(spec.storage, settings), "terminationMessagePolicy": "FallbackToLogsOnError",
                 "resources": resources(spec.resources, spec.resources.gpus),
                 "volumeMounts": mounts, "workingDir": WORK_DIR}
    pod = pod_spec(parent, spec.resources, settings, container, volumes, None) | {"restartPolicy": "Never"}
    meta = metadata(parent, job_name(name), "convert",
                    kueue_labels(parent, spec.queue_name, spec.workload_priority_class))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"backoffLimit": 2, "template": {"metadata": template_metadata(parent, meta["labels"]), "spec": pod}}}


def children(parent: Manifest, spec: Any, source_uri: str, base_uri: str | None, config_map: str | None,
             settings: Settings) -> list[Manifest]:
    """The claims `resources` asks the operator to create, then the Job."""
    return [*volume_claims(parent, spec.resources, False),
            job(parent, spec, source_uri, base_uri, config_map, settings)]
