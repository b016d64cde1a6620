"""LoRA on every architecture: which weights an adapter reaches, and how peft is asked for them.

peft adapts `nn.Linear` modules (`target_modules`) and, since transformers 5 fused each MoE layer's experts into 3-D
tensors, parameters (`target_parameters`, peft's ParamWrapper). What peft 0.21 leaves to its caller:
- `all-linear` (empty `targetModules`) reaches fused experts only for the families in peft's v4→v5 table (Mixtral,
  Qwen-MoE), and adds their routers; GPT-OSS's experts are left out. Here all-linear means every linear map of the
  decoder: attention, MLPs, routed and shared experts; not the routers (XTuner's MoE configs leave them out too, and
  training them unbalances the experts) and not the output head.
- peft's v4→v5 conversion renames the old expert projection names (gate_proj, up_proj, down_proj) to the fused
  tensors wherever they appear, so DeepSeek's dense first layers and shared experts, plain linear layers of the same
  names, lose their adapters (huggingface/peft#3711). Those are adapted as parameters, which the conversion leaves
  alone: the same low-rank update, in the same adapter file.
- a ParamWrapper cannot apply dropout to its input and peft then refuses any `lora_dropout`. The adapter is built
  without it, and the linear layers get their dropout back; the parameters train without it, and the log says so.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.method import LoraSpec

@dataclass
class LoraPlan:
    """What the adapter reaches, decided before peft touches the model."""

    config: Any  # peft LoraConfig
    dropout: float  # wanted on linear layers; the config holds 0 when parameters are adapted
    expected: set[str] = field(default_factory=set)  # base weight names all-linear must reach (empty: user's list)


def plan(model: Any, lora: LoraSpec) -> LoraPlan:
    from peft import LoraConfig

    linear = linear_weights(model)
    experts = expert_weights(model)
    asked = list(lora.target_modules)
    if asked:
        modules = set(asked)
        parameters = {name.rsplit(".", 1)[-1] for name in experts if name.rsplit(".", 1)[-1] in asked}
    else:
        modules = {name.rsplit(".", 2)[-2] for name in linear}
        parameters = {name.rsplit(".", 1)[-1] for name in experts}
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0, bias=lora.bias, target_modules=modules,
                        target_parameters=sorted(parameters) or None, task_type="CAUSAL_LM")
    converted = as_peft_converts(config, model)
    renamed = set(config.target_modules) - set(converted.target_modules or ())
    stolen = [name for name in linear if name.rsplit(".", 2)[-2] in renamed]
    if stolen:  # peft would move these to the fused experts; keep them, as parameters
        config.target_parameters = sorted(set(config.target_parameters or ()) | set(stolen))
    if not (config.target_parameters or converted.target_parameters):
        config.lora_dropout = lora.dropout
    return LoraPlan(config, lora.dropout, set() if asked else set(linear) | set(experts))


def apply(model: Any, lora_plan: LoraPlan, say: Any = None) -> Any:
    from peft import get_peft_model

    model = get_peft_model(model, lora_plan.config)
    adapted = adapted_weights(model)
    missing = sorted(lora_plan.expected - adapted)
    if missing:  # never train fewer weights than all-linear promises without saying which
        raise ValueError(f"peft left {len(missing)} linear weight(s) without an adapter, e.g. {missing[:3]}")
    wrapped = parameter_adapters(model)
    if wrapped and lora_plan.dropout:
        restored = restore_dropout(model, lora_plan.dropout)
        if say:
            say(f"LoRA dropout {lora_plan.dropout} on {restored} linear layers; {wrapped} weights adapted as "
                "parameters (fused MoE experts, and linear layers peft would rename) train without it: peft cannot "
                "drop a parameter's input")
    return model


def linear_weights(model: Any) -> list[str]:
    """`<module>.weight` of every linear layer but the output head and the routers."""
    import torch

    head = model.get_output_embeddings()
    modules = dict(model.named_modules())
    return [f"{name}.weight" for name, module in modules.items()
            if isinstance(module, torch.nn.Linear) and module is not head and not _is_router(name, module, modules)]


def _is_router(name: str, module: Any, modules: dict[str, Any]) -> bool:
    """A router, whatever class it subclasses (PhiMoE's and Llama 4's subclass nn.Linear): named so, or the `gate` /
    `router` beside an MoE block's experts."""
    parent, _, leaf = name.rpartition(".")
    return "Router" in type(module).__name__ or (leaf in ("gate", "router")
                                                 and hasattr(modules.get(parent), "experts"))


def expert_weights(model: Any) -> list[str]:
    """The fused expert tensors: one (experts × out × in) parameter per projection and MoE layer."""
    return [name for name, param in model.named_parameters() if param.dim() == 3 and ".experts." in f".{name}"]


def as_peft_converts(config: Any, model: Any) -> Any:
    """A copy of `config` as peft's v4→v5 conversion will change it for this model (v4 expert names such as
    XTuner's Mixtral w1/w2/w3 become the fused expert tensors)."""
    trial = copy.deepcopy(config)
    try:
        from peft.utils.transformers_weight_conversion import (convert_peft_config_for_transformers,
                                                               get_model_conversion_mapping)
    except ImportError:  # a peft without the conversion changes nothing
        return trial
    convert_peft_config_for_transformers(trial, model=model, conversions=get_model_conversion_mapping(model))
    return trial


def adapted_weights(model: Any) -> set[str]:
    """Base weight names that carry an adapter: `…q_proj.weight` for a linear layer, `…experts.gate_up_proj` for a
    parameter."""
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    prefix = "base_model.model."
    out = set()
    for name, module in model.named_modules():
        path = name.removeprefix(prefix)
        while path.endswith(".base_layer"):
            path = path.removesuffix(".base_layer")
        if isinstance(module, ParamWrapper):
            out.add(f"{path}.{module.parameter_name}")
        elif isinstance(module, LoraLayer):
            out.add(f"{path}.weight")
    return out


def parameter_adapters(model: Any) -> int:
    from peft.tuners.lora.layer import ParamWrapper

    return sum(isinstance(module, ParamWrapper) for module in model.modules())


def restore_dropout(model: Any, dropout: float) -> int:
    """Dropout on the input of every linear LoRA layer, as peft gives it when no parameter is adapted."""
    import torch
    from peft.tuners.lora.layer import LoraLayer, ParamWrapper

    count = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
            for adapter in module.lora_dropout:
                module.lora_dropout[adapter] = torch.nn.Dropout(p=dropout)
                count += 1
    return count
