"""ChatEndpoint → a ConfigMap (the resolved endpoint), a Deployment whose pods fetch the model and adapters first
(an init container) and then run `kubetune serve` from the endpoint, or vLLM's OpenAI server (behind kubetune's
key-checking gateway when the endpoint asks for keys), a Service, and when asked an HPA on in-flight requests and a
PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

import copy
import hashlib

import yaml

from kubetune.api import API_VERSION
from kubetune.api.chat import VLLM_IMAGE, AdapterRef, vllm_arguments

from .. import labels as label_keys
from ..settings import Settings
from .common import (CONFIG_DIR, WORK_DIR, Manifest, child_name, metadata, pod_spec, pvc_volumes, resources,
                     storage_env, template_metadata, volume_claims)

KEY_DIR = "/etc/kubetune/keys"
MODELS_DIR = f"{WORK_DIR}/models"  # `kubetune fetch --into` lays the model and adapters out here
UPSTREAM_PORT = 8001  # vLLM on the pod's loopback, behind the gateway, when keys are asked for
CONFIG_HASH = "kubetune.io/config-hash"
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def children(parent: Manifest, spec: Any, adapters: dict[str, str], settings: Settings) -> list[Manifest]:
    """`adapters`: every adapter's name → its URI, references to FineTuneJobs already resolved."""
    shared = spec.replicas > 1 or spec.autoscaling is not None  # replicas land on several nodes
    # Constructed, not validated: `render` names a reference it cannot resolve with a readable placeholder.
    resolved = spec.model_copy(update={"adapters": [AdapterRef.model_construct(name=n, uri=u)
                                                    for n, u in adapters.items()]})
    config = config_map(parent, resolved)
    out = [*volume_claims(parent, spec.resources, shared), config, deployment(parent, resolved, config, settings),
           service(parent, settings)]
    if spec.autoscaling:
        out.append(hpa(parent, spec))
    if (spec.autoscaling and spec.autoscaling.min_replicas > 1) or spec.replicas > 1:
        out.append(pdb(parent))
    return out


def config_map(parent: Manifest, spec: Any) -> Manifest:
    """The resolved endpoint, as `kubetune fetch` reads it (and `kubetune serve` after it, with local paths)."""
    meta = parent["metadata"]
    resolved = {"apiVersion": API_VERSION, "kind": "ChatEndpoint",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "spec": spec.to_dict()}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(parent, config_name(meta["name"]), "config"),
            "data": {"endpoint.yaml": yaml.dump(resolved, Dumper=_DUMPER, sort_keys=False)}}


def config_name(name: str) -> str:
    # Not `<name>-config`: a FineTuneJob of the same name in the namespace owns that one.
    return child_name(name, "endpoint", 253)


def deployment(parent: Manifest, spec: Any, config: Manifest, settings: Settings) -> Manifest:
    name = parent["metadata"]["name"]
    port = settings.chat_port
    gateway = spec.engine == "vllm" and spec.auth is not None  # vLLM on loopback, the gateway on the Service's port
    volumes, mounts = pvc_volumes([spec.model.uri, *(a.uri for a in spec.adapters)])
    keys = [{"name": "api-keys", "mountPath": KEY_DIR, "readOnly": True}] if spec.auth else []
    if spec.auth:
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.auth.api_key_secret_ref}})
    volumes.append({"name": "config", "configMap": {"name": config["metadata"]["name"]}})
    server: dict[str, Any] = {
        "name": "server", "command": server_command(spec, name, port),
        "resources": resources(spec.resources, spec.resources.gpus),
        "volumeMounts": mounts + ([] if spec.engine == "vllm" else keys)}
    if not gateway:
        server["ports"] = [{"name": "http", "containerPort": port}]
    if spec.engine == "vllm":
        server["image"] = (spec.vllm and spec.vllm.image) or settings.vllm_image or VLLM_IMAGE
    pod = pod_spec(parent, spec.resources, settings, server, volumes, None)
    main = pod["containers"][0]
    pod["initContainers"] = [fetch_container(main, spec, settings)]
    if gateway:
        pod["containers"].append(gateway_container(main, keys, port, spec.resources.image or settings.image))
    _probe(pod["containers"][-1])  # the container serving the Service's port
    # Draining in-flight answers needs longer than Kubernetes' default 30 s grace period.
    pod["terminationGracePeriodSeconds"] = 60
    meta = metadata(parent, name, "server")
    template = template_metadata(parent, meta["labels"])
    # The pods read the spec from the ConfigMap: a change must roll them, as a changed command would.
    digest = hashlib.sha256(config["data"]["endpoint.yaml"].encode()).hexdigest()[:16]
    template["annotations"] = template.get("annotations", {}) | {CONFIG_HASH: digest}
    deploy_spec: dict[str, Any] = {
        "selector": {"matchLabels": label_keys.selector("ChatEndpoint", name, "server")},
        "template": {"metadata": template, "spec": pod},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
    }
    if not spec.autoscaling:  # with an HPA, the HPA owns replicas
        deploy_spec["replicas"] = spec.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": deploy_spec}


def server_command(spec: Any, name: str, port: int) -> list[str]:
    """What the server container runs, from the layout the fetch step wrote: never a remote URI, never a credential."""
    if spec.engine == "vllm":
        host, own_port = ("127.0.0.1", UPSTREAM_PORT) if spec.auth else ("0.0.0.0", port)
        return ["vllm", *vllm_arguments(spec, name, MODELS_DIR, host, own_port)]
    argv = ["kubetune", "serve", f"{MODELS_DIR}/endpoint.yaml", "--host", "0.0.0.0", "--port", str(port)]
    return argv + (["--api-key-file", f"{KEY_DIR}/api-keys"] if spec.auth else [])


def fetch_container(main: dict[str, Any], spec: Any, settings: Settings) -> dict[str, Any]:
    """The model and every adapter into the cache (the cache volume, else the work dir) and laid out under
    MODELS_DIR, with kubetune's storage layer (its retries, its credentials: only this container holds them). It
    runs kubetune's image (`resources.image` when set) whichever engine serves."""
    env = copy.deepcopy(main["env"]) + storage_env(spec.storage, settings)
    mounts = [copy.deepcopy(m) for m in main["volumeMounts"] if m["name"] != "api-keys"]
    init = {"name": "fetch", "image": spec.resources.image or settings.image,
            "command": ["kubetune", "fetch", f"{CONFIG_DIR}/endpoint.yaml", "--into", MODELS_DIR],
            "env": env, "volumeMounts": mounts + [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
            "securityContext": copy.deepcopy(main["securityContext"]),
            "terminationMessagePolicy": "FallbackToLogsOnError"}
    if "imagePullPolicy" in main:
        init["imagePullPolicy"] = main["imagePullPolicy"]
    return init


def gateway_container(main: dict[str, Any], keys: list[dict], port: int, image: str) -> dict[str, Any]:
    container = {"name": "gateway", "image": image,
                 "command": ["kubetune", "gateway", "--upstream", f"http://127.0.0.1:{UPSTREAM_PORT}",
                             "--host", "0.0.0.0", "--port", str(port), "--api-key-file", f"{KEY_DIR}/api-keys"],
                 "env": [{"name": "HOME", "value": WORK_DIR}],
                 "ports": [{"name": "http", "containerPort": port}],
                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                 "volumeMounts": keys + [{"name": "tmp", "mountPath": "/tmp"}],
                 "securityContext": copy.deepcopy(main["securityContext"])}
    if "imagePullPolicy" in main:
        container["imagePullPolicy"] = main["imagePullPolicy"]
    return container


def _probe(container: dict[str, Any]) -> None:
    probe = {"httpGet": {"path": "/health", "port": "http"}}
    # Loading a model can take many minutes: the startup probe allows 30 min before liveness takes over.
    container["startupProbe"] = probe | {"periodSeconds": 10, "failureThreshold": 180}
    container["readinessProbe"] = probe | {"periodSeconds": 5, "failureThreshold": 2}
    container["livenessProbe"] = probe | {"periodSeconds": 20, "failureThreshold": 3, "timeoutSeconds": 5}


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
                     # Requests running per pod, each engine's own gauge (kubetune:… or vllm:num_requests_running)
                     # as the Prometheus adapter names it (docs/monitoring.md has its rule).
                     "metrics": [{"type": "Pods", "pods": {
                         "metric": {"name": f"{'vllm' if spec.engine == 'vllm' else 'kubetune'}_num_requests_running"},
                         "target": {"type": "AverageValue", "averageValue": str(a.target_inflight_requests)}}}]}}


def pdb(parent: Manifest) -> Manifest:
    name = parent["metadata"]["name"]
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata(parent, name, "server"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": label_keys.selector("ChatEndpoint", name, "server")}}}
