"""Build the model to train: load the base (optionally 4/8-bit), attach LoRA, enable gradient checkpointing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

from kubetune.model.attention import MASK_IGNORES_PACKING
from kubetune.model.dtypes import bitsandbytes_config, torch_dtype
from kubetune.model.families import refuse_non_decoder_at
from kubetune.model.native import native_path
from kubetune.model.tokenizer import ModelLoadError
from kubetune.storage import StorageError, local_path

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJobSpec


@dataclass
class Precision:
    """Resolved precision: the dtype weights are loaded in, and the autocast dtype (None = plain fp32)."""

    load_dtype: Any
    autocast: Any
    scaler: bool

    def handed_to_deepspeed(self) -> "Precision":
        """DeepSpeed casts the model and scales the loss itself (its fp16/bf16 sections): load fp32, no autocast."""
        import torch

        return Precision(torch.float32 if self.load_dtype in (torch.float16, torch.bfloat16) else self.load_dtype,
                         None, False)


def resolve_precision(spec: FineTuneJobSpec, device: Any) -> Precision:
    import torch

    wanted = spec.training.precision.value
    if wanted == "auto":
        if device.type == "cuda":
            wanted = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            wanted = "fp32"  # CPU autocast is slower than fp32 for these sizes and fp16 is not supported there
    if wanted == "fp16" and device.type != "cuda":
        raise ModelLoadError("training.precision fp16 needs a GPU (loss scaling runs on CUDA); use bf16 or fp32 on CPU")
    compute = torch_dtype(wanted)
    method = spec.method.scheme
    # Full fine-tuning keeps fp32 master weights under autocast; adapters train in fp32 over a low-precision base.
    load = torch.float32 if method == "full" else compute
    if spec.model.dtype.value != "auto":
        load = torch_dtype(spec.model.dtype.value)
    return Precision(load, None if wanted == "fp32" else compute, wanted == "fp16")


def build_model(spec: FineTuneJobSpec, device: Any, precision: Precision, seed: int = 0,
                attn_implementation: str | None = None, say: Any = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        path = native_path(local_path(spec.model.uri, repo_type="model"))
    except StorageError as exc:
        raise ModelLoadError(f"model.uri {exc}") from None
    method = spec.method.scheme
    kwargs: dict[str, Any] = {"dtype": precision.load_dtype, "trust_remote_code": spec.model.trust_remote_code}
    attn = attn_implementation or spec.model.attn_implementation
    if attn != "auto":
        kwargs["attn_implementation"] = attn
    if method == "qlora":
        from transformers.integrations import is_deepspeed_zero3_enabled

        zero3 = is_deepspeed_zero3_enabled()
        kwargs["quantization_config"] = _bnb_config(spec, precision, zero3)
        if not zero3:  # ZeRO-3 places (partitions) the weights itself
            kwargs["device_map"] = {"": device}
    refuse_non_decoder_at(path, spec.model.trust_remote_code, f"model.uri {spec.model.uri}")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # transformers raises many types for an unusable folder; the user needs the message
        raise ModelLoadError(f"model.uri {spec.model.uri}: cannot load a causal LM from {path}: "
                             f"{' '.join(str(exc).split())[:400]}") from None
    model.config.use_cache = False
    set_router_aux_loss(model.config, spec.model.router_aux_loss_coef)
    if (spec.dataset.pack_to_max_length and attn in ("eager", "sdpa")
            and model.config.model_type in MASK_IGNORES_PACKING):
        raise ModelLoadError(f"model.attnImplementation {attn}: transformers' {model.config.model_type} lets packed "
                             "samples attend to each other with it; use attnImplementation auto (kubetune's packed "
                             "attention) or dataset.packToMaxLength false")
    gc = spec.training.gradient_checkpointing
    if gc and not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelLoadError(f"training.gradientCheckpointing: {type(model).__name__} (model.uri {spec.model.uri}) "
                             "does not support it; set it to false")
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_training_layout(model)
        packed = [p for p in model.parameters() if type(p).__name__ == "Params4bit"]
        if zero3 and packed and say:
            say(f"QLoRA under ZeRO-3: {len(packed)} 4-bit weights packed in {packed[0].dtype} storage, which "
                "DeepSpeed partitions across the ranks")
        unquantized = unquantized_share(model)
        if unquantized and say:
            say(f"QLoRA: {unquantized:.0%} of the decoder's weights (fused MoE expert tensors) stay in "
                f"{precision.load_dtype}: bitsandbytes quantizes linear layers only")
    elif gc:
        if hasattr(model, "activation_checkpointing_enable"):  # newer transformers renamed it (the old name warns)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if method == "lora":
            model.enable_input_require_grads()
    if method in ("lora", "qlora"):
        from . import lora

        try:
            assert spec.method.lora is not None  # MethodSpec requires it for lora and qlora
            adapter = lora.plan(model, spec.method.lora)
            torch.manual_seed(seed)  # the adapters' initial values are part of a reproducible run
            model = lora.apply(model, adapter, say)
        except ValueError as exc:
            raise ModelLoadError(f"method.lora.targetModules: {exc}") from None
    if method != "qlora":
        model.to(device)
    return model


def set_router_aux_loss(config: Any, coef: float | None) -> None:
    if coef is None:
        return
    if not hasattr(config, "router_aux_loss_coef"):
        raise ModelLoadError(f"model.routerAuxLossCoef: {config.model_type} has no router load-balancing loss (not a "
                             "mixture of experts, or one balanced without it); remove the field")
    config.output_router_logits = coef > 0
    config.router_aux_loss_coef = coef


def keep_training_layout(model: Any) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights into an inference layout the first time
    it runs in eval mode without gradients (the evaluation hook before step 1) and never packs them back; training on
    after that passes wrong gradients (or crashes on layers with a bias). Evaluation here runs in the layout training
    uses instead: slower generation on those CPUs, the same gradients everywhere."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def unquantized_share(model: Any) -> float:
    """The share of decoder weights in fused expert tensors, which bitsandbytes leaves unquantized."""
    from .lora import expert_weights

    experts = set(expert_weights(model))
    sizes = {name: math.prod(p.quant_state.shape) if getattr(p, "quant_state", None) is not None else p.numel()
             for name, p in model.named_parameters() if ".layers." in name}  # 4-bit tensors hold 2 weights a byte
    total = sum(sizes.values())
    return sum(sizes[name] for name in experts) / total if experts and total else 0.0


def _bnb_config(spec: FineTuneJobSpec, precision: Precision, zero3: bool) -> Any:
    import torch

    q = spec.method.quantization
    assert q is not None  # MethodSpec requires it for qlora
    compute = precision.autocast or torch.float32
    if q.compute_dtype.value != "auto":
        compute = torch_dtype(q.compute_dtype.value)
    # Under ZeRO-3 the packed 4-bit weights are stored in the compute dtype, a tensor type DeepSpeed partitions
    # like any other (XTuner's 110B QLoRA recipe; bitsandbytes' quant_storage).
    storage = compute if zero3 and q.bits == 4 else None
    return bitsandbytes_config(q.bits, q.type, q.double_quant, compute, storage)


def trainable_parameters(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: Any) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
