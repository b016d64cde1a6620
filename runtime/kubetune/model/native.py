"""Families whose hub repositories carry their own modeling code, loaded as an architecture transformers ships with
the same weights. Their code is written for older transformers (the locked one cannot run InternLM2's), computes
attention itself (no packing, no attention kernels) and names its layers its own way. A converted copy of the
checkpoint, in the native layout, is written once per source under $KUBETUNE_CACHE/native/ and every path loads it
instead: training (packing, the chunked loss, QLoRA, ZeRO-3), merge, chat. The copy keeps the tokenizer files (and
the tokenizer's own code, which still needs trustRemoteCode where the tokenizer has no native class).

InternLM2 / InternLM2.5: Llama with a fused `wqkv` (per key-value head: its query heads, then its key, then its
value), `wo`, `feed_forward.w1/w3/w2`, `attention_norm`/`ffn_norm`, `tok_embeddings`, `output`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from kubetune.storage import cache_root

WEIGHTS = (".safetensors", ".bin")


def native_path(path: Path) -> Path:
    """The folder to load a model from: `path` itself, or its converted copy when its family has a native twin."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return path
    family = config.get("model_type")
    if family not in CONVERSIONS or not isinstance(config.get("auto_map"), dict):
        return path
    target = cache_root() / "native" / f"{family}-{_digest(path)}"
    if not (target / ".complete").exists():
        print(f"kubetune: {path}: {family} loads as transformers' {CONVERSIONS[family][0]} (the same weights, "
              f"converted once into {target})", file=sys.stderr, flush=True)
        _convert(path, target, config)
    return target


def _digest(path: Path) -> str:
    """The source's identity: its config and each weight file's name, size and modification time."""
    parts = [(path / "config.json").read_text()]
    parts += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.iterdir())
              if p.suffix in WEIGHTS]
    return hashlib.sha256("\n".join([str(path.resolve()), *parts]).encode()).hexdigest()[:16]


def _convert(source: Path, target: Path, config: dict[str, Any]) -> None:
    """Write the copy into a private folder, then move it into place: ranks converting at once never read a half."""
    from safetensors.torch import save_file

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _, tensors, native_config = CONVERSIONS[config["model_type"]]
    native = native_config(config)
    (tmp / "config.json").write_text(json.dumps(native, indent=2))
    shards = sorted(p for p in source.iterdir() if p.suffix in WEIGHTS and p.name != "training_args.bin")
    if any(p.suffix == ".safetensors" for p in shards):
        shards = [p for p in shards if p.suffix == ".safetensors"]
    index: dict[str, str] = {}
    for shard in shards:
        converted = {k: v.contiguous() for k, v in tensors(_read(shard), config).items()}
        name = shard.with_suffix(".safetensors").name
        save_file(converted, str(tmp / name), metadata={"format": "pt"})
        index |= {key: name for key in converted}
    if len(shards) > 1:
        size = sum((tmp / n).stat().st_size for n in set(index.values()))
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size},
                                                                      "weight_map": index}, indent=1))
    for item in source.iterdir():  # tokenizer, generation config; the tokenizer's code, not the model's
        if item.is_file() and item.suffix not in WEIGHTS and item.name not in ("config.json",) \
                and not item.name.endswith(".index.json") and (item.suffix != ".py" or "token" in item.name):
            shutil.copy2(item, tmp / item.name)
    (tmp / ".complete").write_text(str(source) + "\n")
    if target.exists():  # another rank finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, target)


def _read(shard: Path) -> dict[str, Any]:
    if shard.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(shard))
    import torch

    return torch.load(str(shard), map_location="cpu", weights_only=True)


# --- InternLM2 -----------------------------------------------------------------------------------------------------
_INTERNLM2_NAMES = {"attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj",
                    "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj",
                    "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _internlm2_config(config: dict[str, Any]) -> dict[str, Any]:
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "rms_norm_eps", "rope_theta", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
            "tie_word_embeddings", "torch_dtype", "dtype", "initializer_range")
    out = {k: config[k] for k in keep if k in config}
    out |= {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": config.get("hidden_act", "silu"),
            "num_key_value_heads": config.get("num_key_value_heads", config["num_attention_heads"]),
            "attention_bias": bool(config.get("bias", False)), "mlp_bias": False,
            "head_dim": config["hidden_size"] // config["num_attention_heads"]}
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict):  # InternLM2's {"type": "dynamic", "factor": 2.0}: transformers' dynamic NTK
        out["rope_scaling"] = {"rope_type": scaling.get("type", scaling.get("rope_type")),
                               "factor": scaling["factor"]}
    return out


def _internlm2_tensors(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    dim = config["hidden_size"] // heads
    out = {}
    for key, value in state.items():
        name = key.replace("model.tok_embeddings.", "model.embed_tokens.")
        if name == "output.weight":
            name = "lm_head.weight"
        if ".attention.wqkv." in name:
            prefix = name.split(".attention.wqkv.")[0] + ".self_attn."
            groups = value.reshape(kv_heads, heads // kv_heads + 2, dim, *value.shape[1:])
            suffix = name.rsplit(".", 1)[-1]  # weight or bias
            out[f"{prefix}q_proj.{suffix}"] = groups[:, :-2].reshape(heads * dim, *value.shape[1:])
            out[f"{prefix}k_proj.{suffix}"] = groups[:, -2].reshape(kv_heads * dim, *value.shape[1:])
            out[f"{prefix}v_proj.{suffix}"] = groups[:, -1].reshape(kv_heads * dim, *value.shape[1:])
            continue
        for old, new in _INTERNLM2_NAMES.items():
            name = name.replace(f".{old}.", f".{new}.")
        out[name] = value
    return out


# model_type -> (the native architecture's name, tensors, config)
CONVERSIONS: dict[str, tuple[str, Callable[[dict, dict], dict], Callable[[dict], dict]]] = {
    "internlm2": ("LlamaForCausalLM", _internlm2_tensors, _internlm2_config),
}
