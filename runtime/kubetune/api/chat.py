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


VLLM_IMAGE = "vllm/vllm-openai:v0.34.0"
"""The vLLM image `engine: vllm` runs when neither `vllm.image` nor the chart's `vllm.image` says otherwise; its
arguments are checked against this version's own parser (tests/test_vllm_args.py)."""


class VllmSpec(KubeModel):
    """vLLM's own settings (`engine: vllm`)."""

    image: str | None = None
    """vLLM's OpenAI server image (default: the chart's `vllm.image`, else `vllm/vllm-openai:v0.34.0`)."""
    max_model_len: int | None = Field(default=None, ge=1)
    """Longest context (prompt + answer) in tokens; default: the model's."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """Share of each GPU's memory vLLM takes for weights and KV cache; default: vLLM's (0.9)."""
    max_loras: int | None = Field(default=None, ge=1)
    """Adapters one batch may mix; default: every adapter of the endpoint."""
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256, 320, 512] = 64
    """Largest adapter rank vLLM reserves room for (kubetune's and XTuner's LoRA default r is 64)."""
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=64)
    """More `vllm serve` arguments, passed as they are after kubetune's."""


class ChatEndpointSpec(KubeModel):
    """What to serve, how to prompt it, and how many replicas."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("vllm", "engine"), "vllm settings need engine: vllm", "!has(self.vllm) || self.engine == 'vllm'",
             lambda vllm, engine: vllm is None or engine == "vllm"),
        # vLLM renders prompts with the tokenizer's chat template and has no server-side system prompt or stop words:
        # refused rather than silently dropped.
        Rule(("promptTemplate", "engine"), "engine vllm renders the tokenizer's chat template: promptTemplate must "
             "be auto", "self.engine != 'vllm' || !has(self.promptTemplate) || self.promptTemplate == 'auto'",
             lambda template, engine: engine != "vllm" or template == PromptTemplate.AUTO),
        Rule(("system", "engine"), "engine vllm has no default system prompt: send it in the request",
             "self.engine != 'vllm' || !has(self.system)", lambda system, engine: engine != "vllm" or system is None),
        Rule(("systemTemplate", "engine"), "engine vllm has no default system prompt: send it in the request",
             "self.engine != 'vllm' || !has(self.systemTemplate)",
             lambda system, engine: engine != "vllm" or system is None),
        Rule(("bits", "engine"), "engine vllm quantizes with bitsandbytes in 4 bits only",
             "self.engine != 'vllm' || !has(self.bits) || self.bits == 4",
             lambda bits, engine: engine != "vllm" or bits in (None, 4)),
        Rule(("generation.stopWords", "engine"), "engine vllm takes stop words per request only",
             "self.engine != 'vllm' || !has(self.generation) || !has(self.generation.stopWords) || "
             "size(self.generation.stopWords) == 0",
             lambda stops, engine: engine != "vllm" or not stops),
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
    """`builtin` runs `kubetune serve`; `vllm` runs vLLM's OpenAI server (adapters as LoRA modules, `generation` as
    its generation-config override, tensor parallel over `resources.gpus`) behind kubetune's key-checking gateway."""
    vllm: VllmSpec | None = None
    """vLLM's own settings (`engine: vllm` only)."""
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


VLLM_DTYPES = {DType.AUTO: "auto", DType.BF16: "bfloat16", DType.FP16: "float16", DType.FP32: "float32"}


def vllm_arguments(spec: ChatEndpointSpec, served_name: str, models_dir: str, host: str, port: int) -> list[str]:
    """`vllm serve`'s arguments for an endpoint: the model and adapters from the local layout `kubetune fetch --into
    models_dir` writes, every spec field vLLM can honour (the others are refused by the spec's rules)."""
    import json

    g, v = spec.generation, spec.vllm or VllmSpec()
    argv = ["serve", f"{models_dir}/model", "--served-model-name", served_name, "--host", host, "--port", str(port),
            "--dtype", VLLM_DTYPES[spec.model.dtype]]
    argv += ["--tensor-parallel-size", str(spec.resources.gpus)] if spec.resources.gpus > 1 else []
    argv += ["--max-model-len", str(v.max_model_len)] if v.max_model_len else []
    argv += ["--gpu-memory-utilization", str(v.gpu_memory_utilization)] if v.gpu_memory_utilization else []
    argv += ["--quantization", "bitsandbytes"] if spec.bits else []
    argv += ["--trust-remote-code"] if spec.model.trust_remote_code else []
    if spec.adapters:
        argv += ["--enable-lora", "--max-loras", str(v.max_loras or len(spec.adapters)), "--max-lora-rank",
                 str(v.max_lora_rank), "--lora-modules"]
        argv += [json.dumps({"name": a.name, "path": f"{models_dir}/adapters/{a.name}", "base_model_name": served_name})
                 for a in spec.adapters]
    # `vllm`: the spec's sampling defaults alone, not merged with the model repository's generation_config.json.
    defaults = {"temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
                "repetition_penalty": g.repetition_penalty, "max_new_tokens": g.max_new_tokens}
    argv += ["--generation-config", "vllm", "--override-generation-config", json.dumps(defaults)]
    return argv + list(v.extra_args)
