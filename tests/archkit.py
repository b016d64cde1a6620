"""Tiny random models of the architectures users fine-tune, built from transformers' own config classes (nothing is
downloaded): hidden 64, 2 layers, a sliding window of 16 where the family has one, 4 experts where it is a MoE. Each
family keeps what makes it differ (soft-capping, sinks, alternating layer types, shared experts, tied embeddings)."""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any

WINDOW = 16
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

# family → (config class in transformers, what differs from SMALL)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": False}),
    "qwen3": ("Qwen3Config", {"head_dim": 16, "tie_word_embeddings": False}),
    "qwen3_moe": ("Qwen3MoeConfig", {"head_dim": 16, "num_experts": 4, **MOE, "tie_word_embeddings": False}),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW, "tie_word_embeddings": False}),
    "mixtral": ("MixtralConfig", {"sliding_window": WINDOW, "num_local_experts": 4, "num_experts_per_tok": 2,
                                  "tie_word_embeddings": False}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 16}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                                    "layer_types": ["sliding_attention", "full_attention"]}),
    "phi3": ("Phi3Config", {"tie_word_embeddings": False}),
    "cohere": ("CohereConfig", {}),
    "deepseek_v3": ("DeepseekV3Config", {"n_routed_experts": 4, **MOE, "n_shared_experts": 1,
                                         "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                                         "num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8,
                                         "qk_nope_head_dim": 16, "v_head_dim": 16, "tie_word_embeddings": False}),
    "deepseek_v2": ("DeepseekV2Config", {"n_routed_experts": 4, **MOE, "n_shared_experts": 1,
                                         "first_k_dense_replace": 1, "num_key_value_heads": 4, "kv_lora_rank": 16,
                                         "q_lora_rank": None, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
                                         "v_head_dim": 16, "tie_word_embeddings": False}),  # V2-Lite: no q_lora
    "gpt_oss": ("GptOssConfig", {"head_dim": 16, "sliding_window": WINDOW, "num_local_experts": 4,
                                 "num_experts_per_tok": 2, "layer_types": ["sliding_attention", "full_attention"],
                                 "tie_word_embeddings": False}),
    "granite": ("GraniteConfig", {"tie_word_embeddings": False}),
    "olmo2": ("Olmo2Config", {"tie_word_embeddings": False}),
}


def config(family: str, vocab_size: int) -> Any:
    import transformers

    name, overrides = ARCHITECTURES[family]
    return getattr(transformers, name)(vocab_size=vocab_size, **{**SMALL, **overrides})


def build(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Tokenizer and random weights of a tiny `family` model in out_dir, loadable with AutoModelForCausalLM."""
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune.tiny import build_tokenizer

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(family, len(tokenizer)), dtype=torch.float32)
    with torch.no_grad():  # some families start projections at zero or tiny scales: give every weight a real value
        for name, param in model.named_parameters():
            if param.dim() >= 1 and param.abs().sum() == 0 and "norm" not in name:
                param.normal_(0, 0.02)
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_remote_internlm2(out_dir: str | Path, seed: int = 0, model_type: str = "internlm2") -> Path:
    """A tiny model in InternLM2's layout, its code beside its weights as on the hub (tests/remote_code). As
    `internlm2` kubetune loads it natively (model/native.py); under another `model_type` it loads only with
    trust_remote_code: the path of the catalogue's other remote-code families."""
    import shutil

    import torch

    from kubetune.tiny import build_tokenizer

    from .remote_code.configuration_internlm2 import InternLM2Config
    from .remote_code.modeling_internlm2 import InternLM2ForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    config = InternLM2Config(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=3)
    config.auto_map = {"AutoConfig": "configuration_internlm2.InternLM2Config",
                       "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}
    torch.manual_seed(seed)
    InternLM2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    if model_type != "internlm2":
        saved = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**saved, "model_type": model_type}, indent=2))
    for name in ("configuration_internlm2.py", "modeling_internlm2.py"):
        shutil.copy2(Path(__file__).parent / "remote_code" / name, out / name)
    return out
