"""Every causal-LM architecture transformers registers (its `AutoModelForCausalLM` mapping), built tiny from its own
config class: the same small sizes for all (hidden 64, 2 layers, 4 heads, 4 experts), the few settings a family
needs on top of them in OVERRIDES, and the families that cannot be built tiny in UNBUILDABLE with the reason."""

from __future__ import annotations

import inspect
from typing import Any

VOCAB = 1100  # above the tiny tokenizer's 1024 (archkit's tokenizer), under every family's minimum
SIZES: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, max_position_embeddings=512, vocab_size=VOCAB, moe_intermediate_size=32, num_experts=4,
    num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=32,
    bos_token_id=1, eos_token_id=2, pad_token_id=3)
MLA: dict[str, Any] = dict(kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                           head_dim=8, num_key_value_heads=4)
MAX_PARAMETERS = 5_000_000

# family → settings beyond SIZES (None drops one of SIZES); "text_config" entries go to the text sub-config.
OVERRIDES: dict[str, dict[str, Any]] = {
    "falcon": {"head_dim": None},  # derived from hidden size and heads
    "gemma3": {"text_config": {"sliding_window": 16}, "mm_tokens_per_image": 4,  # multimodal: a tiny SigLIP tower
               "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=28, patch_size=14)},
    "mamba2": {"num_heads": 8},  # hidden × expand / head_dim
    # Hybrids keep both kinds of layer in their two.
    "lfm2": {"layer_types": ["conv", "full_attention"]},
    "qwen3_next": {"layer_types": ["linear_attention", "full_attention"]},
    "qwen3_5_text": {"layer_types": ["linear_attention", "full_attention"]},
    "qwen3_5": {"text_config": {"layer_types": ["linear_attention", "full_attention"]}},
    "qwen3_5_moe_text": {"layer_types": ["linear_attention", "full_attention"]},
    "qwen3_5_moe": {"text_config": {"layer_types": ["linear_attention", "full_attention"]}},
    "kimi_linear": {"layer_types": ["linear_attention", "full_attention"]},
    "bailing_hybrid": {"layer_group_size": 2},
    "recurrent_gemma": {"block_types": ["recurrent", "attention"]},
    "lfm3": {"layer_types": ["conv", "full_attention"]},
    "bamba": {"attn_layer_indices": [1]},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    "zamba2": {"layers_block_type": ["mamba", "hybrid"]},
    "zaya": {"num_experts_per_tok": 1},  # its only routing
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
}

# family → why no tiny model of it is built here (it is neither trained nor refused by these tests).
UNBUILDABLE: dict[str, str] = {
    "axk1": "its attention's head sizes are not derived from the tiny sizes (shape -1, 8, 0); no override found yet",
    "blt": "a byte-level model with separate local and global transformers the shared sizes do not reach (4.6e9 "
           "parameters)",
    "cohere_compass_text": "its config class rejects the layer types it builds itself at 2 layers ('full_attention')",
    "dbrx": "its attention sub-config does not take the tiny sizes (no rope_theta)",
    "dots1": "its config leaves a per-layer size unset at the tiny sizes (int * None)",
    "dots3_note": "its per-layer configs need their own head counts (num_key_value_heads must match heads)",
    "dots3_note_text": "its per-layer configs need their own head counts",
    "gemma3n": "its audio/vision towers need the timm package, which kubetune does not install",
    "gemma3n_text": "its KV-sharing layer pattern does not fit 2 layers",
    "gemma4": "the multimodal Gemma 4 (vision tower at default sizes); its text model's tiny build is listed below",
    "gemma4_assistant": "a drafting head whose per-layer input size must be set with the base model's",
    "gemma4_text": "its per-layer configs need their own head sizes",
    "gemma4_unified_assistant": "a drafting head that runs only on a base model's shared KV states",
    "gemma4_unified_text": "its per-layer configs need their own head sizes",
    "git": "an image-to-text model whose vision tower the text sizes do not reach",
    "got_ocr2": "an OCR model whose vision tower the text sizes do not reach",
    "inkling2_loop_text": "a looped model with sizes the shared ones do not reach (1.5e7 parameters)",
    "inkling2_text": "sizes the shared ones do not reach (1.6e7 parameters)",
    "phi4_multimodal": "its audio and vision towers the text sizes do not reach (8.7e8 parameters)",
    "zamba": "its layer pattern does not fit 2 layers (3 layer types); zamba2 is tested",
}


def families() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def model_class(family: str) -> Any:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family])


def config(family: str) -> Any:
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[family]
    default = cls()
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in SIZES.items() if hasattr(default, k) or k in accepted}
    if "text_config" in (getattr(default, "sub_configs", None) or {}):
        settings["text_config"] = dict(SIZES)
    if hasattr(default, "qk_rope_head_dim"):  # multi-head latent attention (DeepSeek V2/V3 and its kin)
        settings.update(MLA)
    if hasattr(default, "rotary_dim"):  # partial rotary (GPT-J, CodeGen): within the head
        settings["rotary_dim"] = 8
    for key, value in OVERRIDES.get(family, {}).items():
        if key == "text_config":
            settings["text_config"] = {**settings.get("text_config", {}), **value}
        elif value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    return cls(**settings)


def build(family: str, seed: int = 0) -> Any:
    """The tiny random model (fp32, eval mode), or ValueError saying why it cannot be built tiny."""
    import torch

    if family in UNBUILDABLE:
        raise ValueError(UNBUILDABLE[family])
    cls, cfg = model_class(family), config(family)
    if not isinstance(cfg, cls.config_class):  # a multimodal config whose causal LM is its text model
        cfg = cfg.get_text_config()
    with torch.device("meta"):
        count = sum(p.numel() for p in cls(cfg).parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(f"{count:,} parameters at the tiny sizes (a part the sizes do not reach)")
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # some families start projections at zero: give every weight a real value
        for name, param in model.named_parameters():
            if param.dim() >= 1 and param.abs().sum() == 0 and "norm" not in name:
                param.normal_(0, 0.02)
    return model
