"""ChatEndpoint: an OpenAI-compatible chat server for a base model, a merged model or adapters."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .base import (API_VERSION, DNS_LABEL, DNS_SUBDOMAIN, Condition, KubeModel, ObjectMeta, Rule, StorageSpec,
                   Uri)
from .pods import PodResources
from .enums import DType, PromptTemplate, SystemTemplate


class ServedModel(KubeModel):
    """The model weights to serve."""

    uri: Uri
    """Where the model lives (a merged model, or the base when serving adapters)."""
    trust_remote_code: bool = False
    """Run the model repository's own code when loading it."""
    dtype: DType = DType.AUTO
    """Weight dtype."""


class AdapterRef(KubeModel):
    """A LoRA adapter served next to the base model, selected by its name in the request's `model` field."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("fineTuneJobRef", "uri"), "set exactly one of fineTuneJobRef and uri",
             "has(self.fineTuneJobRef) != has(self.uri)", lambda ref, uri: (ref is None) != (uri is None)),
    )

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
    """Model name clients ask for."""
    fine_tune_job_ref: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)] | None = None
    """A FineTuneJob whose exported adapter is served; the endpoint rolls when a newer one is exported."""
    uri: Uri | None = None
    """An adapter directory."""


class GenerationSpec(KubeModel):
    """Default sampling settings (a request may override them)."""

    max_new_tokens: int = Field(default=2048, ge=1, le=1048576)
    """Longest answer."""
    temperature: float = Field(default=0.1, ge=0, le=2)
    """Sampling temperature; 0 is greedy."""
    top_k: int = Field(default=40, ge=0)
    """Sample from the k most likely tokens; 0 disables."""
    top_p: float = Field(default=0.75, gt=0, le=1)
    """Nucleus sampling mass."""
    repetition_penalty: float = Field(default=1.0, gt=0)
    """Penalty for repeated tokens; 1 disables."""
    stop_words: list[str] = Field(default_factory=list, max_length=16)
    """Extra stop strings, added to the template's."""


class AutoscalingSpec(KubeModel):
    """Horizontal autoscaling on in-flight requests per replica."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("minReplicas", "maxReplicas"), "minReplicas must not exceed maxReplicas",
             "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
             lambda lo, hi: lo <= hi),
    )

    min_replicas: int = Field(default=1, ge=1)
    """Fewest replicas."""
    max_replicas: int = Field(default=4, ge=1)
    """Most replicas."""
    target_inflight_requests: int = Field(default=8, ge=1)
    """Requests in flight per replica the autoscaler aims for."""


class AuthSpec(KubeModel):
    """API-key authentication."""

    api_key_secret_ref: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]
    """Secret whose `api-keys` entry lists accepted keys, one per line."""


class ChatEndpointSpec(KubeModel):
    """What to serve, how to prompt it, and how many replicas."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("system", "systemTemplate"), "set at most one of system and systemTemplate",
             "!(has(self.system) && has(self.systemTemplate))", lambda s, t: s is None or t is None),
        Rule(("adapters",), "adapter names must be unique",
             "!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
             lambda adapters: len({a.name if hasattr(a, "name") else a.get("name") for a in adapters}) == len(adapters)),
    )

    model: ServedModel
    """The weights to serve."""
    adapters: list[AdapterRef] = Field(default_factory=list, max_length=16)
    """LoRA adapters served over the base model."""
    engine: Literal["builtin", "vllm"] = "builtin"
    """`builtin` runs `kubetune serve`; `vllm` runs vLLM's OpenAI server with LoRA."""
    prompt_template: PromptTemplate = PromptTemplate.AUTO
    """Chat template; `auto` uses the tokenizer's chat_template."""
    system: str | None = None
    """System prompt added when a request has none."""
    system_template: SystemTemplate | None = None
    """A predefined system prompt."""
    bits: Literal[4, 8] | None = None
    """Load the weights quantized to 4 or 8 bits (bitsandbytes)."""
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    """Default sampling settings."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Replicas when autoscaling is off (the scale subresource sets this)."""
    autoscaling: AutoscalingSpec | None = None
    """Scale on in-flight requests instead of a fixed replica count."""
    auth: AuthSpec | None = None
    """Require an API key."""
    resources: PodResources = Field(default_factory=PodResources)
    """Pod size and placement."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Credentials and endpoint for s3:// and hf:// URIs."""


class ChatPhase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    FAILED = "Failed"


class ChatEndpointStatus(KubeModel):
    """Observed state."""

    phase: ChatPhase | None = None
    """Pending, Progressing, Ready or Failed."""
    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Progressing."""
    url: str | None = None
    """In-cluster base URL of the OpenAI-compatible API."""
    replicas: int | None = None
    """Replicas that exist (scale subresource)."""
    ready_replicas: int | None = None
    """Replicas passing their readiness probe."""
    ready: str | None = None
    """`readyReplicas/replicas`, for `kubectl get`."""
    selector: str | None = None
    """Label selector of the pods (scale subresource, HPA)."""
    served_model: str | None = None
    """Model names the endpoint answers to: its own name (the base model), then every adapter's."""
    message: str | None = None
    """Why the endpoint is in its phase, in one line."""


class ChatEndpoint(KubeModel):
    """An OpenAI-compatible chat endpoint: a Deployment and Service running `kubetune serve` or vLLM."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("spec.adapters", "metadata.name"), "an adapter cannot take the endpoint's name: the base model is "
             "served under it", "!has(self.spec.adapters) || self.spec.adapters.all(a, a.name != self.metadata.name)",
             lambda adapters, name: all((a.name if hasattr(a, "name") else a.get("name")) != name
                                        for a in adapters or ())),
    )

    api_version: Literal["kubetune.io/v1alpha1"] = API_VERSION
    """`kubetune.io/v1alpha1`."""
    kind: Literal["ChatEndpoint"] = "ChatEndpoint"
    """`ChatEndpoint`."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: ChatEndpointSpec
    """Desired state."""
    status: ChatEndpointStatus | None = None
    """Observed state."""


def serve_arguments(spec: ChatEndpointSpec, adapters: dict[str, str], served_name: str | None) -> list[str]:
    """`kubetune serve`'s arguments for an endpoint (the builtin engine), without where it listens or its keys: the
    operator's pods run them, and `kubetune serve ENDPOINT.yaml` parses the very same list here. The base model is
    served as `served_name`, every adapter (name → where it is) beside it."""
    g = spec.generation
    argv = [spec.model.uri, "--prompt-template", spec.prompt_template.value, "--max-new-tokens", str(g.max_new_tokens),
            "--temperature", str(g.temperature), "--top-k", str(g.top_k), "--top-p", str(g.top_p),
            "--repetition-penalty", str(g.repetition_penalty), "--torch-dtype", spec.model.dtype.value]
    argv += ["--served-model-name", served_name] if served_name else []
    argv += [arg for name, uri in adapters.items() for arg in ("--adapter", f"{name}={uri}")]
    argv += ["--system", spec.system] if spec.system else []
    argv += ["--system-template", spec.system_template.value] if spec.system_template else []
    argv += ["--bits", str(spec.bits)] if spec.bits else []
    argv += ["--stop-words", *g.stop_words] if g.stop_words else []
    argv += ["--trust-remote-code"] if spec.model.trust_remote_code else []
    return argv
