"""ChatEndpoint → a Deployment running `kubetune serve` (or vLLM's OpenAI server), a Service, and when asked an
HPA on in-flight requests and a PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from kubetune.api.chat import serve_arguments

from .. import labels as label_keys
from ..settings import Settings
from .common import Manifest, metadata, pod_spec, pvc_volumes, resources, storage_env, template_metadata, volume_claims

KEY_DIR = "/etc/kubetune/keys"


def serve_command(spec: Any, adapters: dict[str, str], served_name: str, port: int) -> list[str]:
    argv = ["kubetune", "serve", *serve_arguments(spec, adapters, served_name), "--host", "0.0.0.0",
            "--port", str(port)]
    return argv + (["--api-key-file", f"{KEY_DIR}/api-keys"] if spec.auth else [])


def vllm_command(spec: Any, model_uri: str, adapters: dict[str, str], port: int) -> list[str]:
    argv = ["vllm", "serve", model_uri, "--host", "0.0.0.0", "--port", str(port)]
    if adapters:
        argv += ["--enable-lora", "--lora-modules", *(f"{k}={v}" for k, v in adapters.items())]
    return argv


def children(parent: Manifest, spec: Any, adapters: dict[str, str], settings: Settings) -> list[Manifest]:
    shared = spec.replicas > 1 or spec.autoscaling is not None  # replicas land on several nodes
    out = [*volume_claims(parent, spec.resources, shared), deployment(parent, spec, adapters, settings),
           service(parent, settings)]
    if spec.autoscaling:
        out.append(hpa(parent, spec))
    if (spec.autoscaling and spec.autoscaling.min_replicas > 1) or spec.replicas > 1:
        out.append(pdb(parent))
    return out


def deployment(parent: Manifest, spec: Any, adapters: dict[str, str], settings: Settings) -> Manifest:
    name = parent["metadata"]["name"]
    port = settings.chat_port
    if spec.engine == "vllm":
        command = vllm_command(spec, spec.model.uri, adapters, port)
    else:
        command = serve_command(spec, adapters, name, port)
    volumes, mounts = pvc_volumes([spec.model.uri, *adapters.values()])
    if spec.auth:
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.auth.api_key_secret_ref}})
        mounts.append({"name": "api-keys", "mountPath": KEY_DIR, "readOnly": True})
    probe = {"httpGet": {"path": "/health", "port": "http"}}
    container = {
        "name": "server", "command": command, "env": storage_env(spec.storage, settings),
        "ports": [{"name": "http", "containerPort": port}],
        "resources": resources(spec.resources, spec.resources.gpus), "volumeMounts": mounts,
        # Loading a model can take many minutes: the startup probe allows 30 min before liveness takes over.
        "startupProbe": probe | {"periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": probe | {"periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": probe | {"periodSeconds": 20, "failureThreshold": 3, "timeoutSeconds": 5},
    }
    pod = pod_spec(parent, spec.resources, settings, container, volumes, None)
    # Draining in-flight answers needs longer than Kubernetes' default 30 s grace period.
    pod["terminationGracePeriodSeconds"] = 60
    meta = metadata(parent, name, "server")
    selector = label_keys.selector("ChatEndpoint", name, "server")
    deploy_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "template": {"metadata": template_metadata(parent, meta["labels"]), "spec": pod},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
    }
    if not spec.autoscaling:  # with an HPA, the HPA owns replicas
        deploy_spec["replicas"] = spec.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": deploy_spec}


def service(parent: Manifest, settings: Settings) -> Manifest:
    name = parent["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata(parent, name, "server"),
            "spec": {"selector": label_keys.selector("ChatEndpoint", name, "server"),
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def hpa(parent: Manifest, spec: Any) -> Manifest:
    name, a = parent["metadata"]["name"], spec.autoscaling
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(parent, name, "server"),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": a.min_replicas, "maxReplicas": a.max_replicas,
                     # Requests in flight per pod (running + waiting), served by a Prometheus adapter.
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": "num_requests_running"},
                         "target": {"type": "AverageValue", "averageValue": str(a.target_inflight_requests)}}}]}}


def pdb(parent: Manifest) -> Manifest:
    name = parent["metadata"]["name"]
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata(parent, name, "server"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": label_keys.selector("ChatEndpoint", name, "server")}}}
