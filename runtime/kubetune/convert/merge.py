"""`kubetune convert merge BASE ADAPTER SAVE_DIR`: fold a LoRA adapter into its base model, shard by shard.

PEFT's `merge_and_unload` needs the whole model in memory. Here safetensors bases stream one tensor at a time
(stream.py, NumPy only): every targeted weight gets `scale · B @ A` added in fp32 and is stored back in its dtype, and
goes straight to its place in the output shard; peak memory is about the largest tensor plus the adapter. PyTorch
.bin bases go shard by shard instead. Tokenizer, config and processor files are copied. The result equals PEFT's
merge (up to fp16/bf16 rounding: PEFT adds the rounded delta in the low precision).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from .shards import ConvertError, ShardWriter, is_weight_file, parse_size, read_shard, shard_files
from .stream import read_array, read_header, rewrite, to_float32, from_float32

PREFIX = "base_model.model."


def load_adapter(adapter_dir: Path) -> tuple[dict, dict[str, Any]]:
    """The adapter's config and its tensors as float32 NumPy arrays."""
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ConvertError(f"{adapter_dir}: no adapter_config.json (is this a PEFT adapter directory?)")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ConvertError(f"{config_path}: peft_type {config.get('peft_type')} cannot be merged (LoRA only)")
    path = adapter_dir / "adapter_model.safetensors"
    if path.is_file():
        entries, _ = read_header(path)
        with path.open("rb") as handle:
            return config, {e.key: to_float32(read_array(e, handle), e.dtype) for e in entries}
    if (adapter_dir / "adapter_model.bin").is_file():
        return config, {k: v.float().numpy() for k, v in read_shard(adapter_dir / "adapter_model.bin")}
    raise ConvertError(f"{adapter_dir}: no adapter_model.safetensors or adapter_model.bin")


def updates_of(config: dict, weights: dict[str, Any]) -> dict[str, tuple]:
    """Base weight name → ("lora", A, B, scale, transpose) or ("replace", tensor)."""
    r_default, alpha_default = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    updates: dict[str, tuple] = {}
    for key, a in weights.items():
        for kind in ("lora_A", "lora_embedding_A"):
            if f".{kind}." not in key:
                continue
            module = key.split(f".{kind}.")[0].removeprefix(PREFIX)
            b = weights[key.replace(kind, kind.replace("_A", "_B"))]
            r = next((v for k, v in rank_pattern.items() if module.endswith(k)), r_default)
            alpha = next((v for k, v in alpha_pattern.items() if module.endswith(k)), alpha_default)
            scale = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
            transpose = kind == "lora_embedding_A" or config.get("fan_in_fan_out", False)
            updates[f"{module}.weight"] = ("lora", a, b, scale, transpose)
    for key, tensor in weights.items():
        if ".modules_to_save." in key:  # a fully trained copy replaces the base module's tensor
            updates[key.removeprefix(PREFIX).replace(".modules_to_save.default", "")] = ("replace", tensor)
    return updates


def merged_array(weight: Any, dtype: str, update: tuple) -> Any:
    """NumPy: the merged weight, computed in float32 and stored in the weight's dtype."""
    if update[0] == "replace":
        return from_float32(update[1], dtype)
    _, a, b, scale, transpose = update
    delta = (b @ a) * scale
    return from_float32(to_float32(weight, dtype) + (delta.T if transpose else delta), dtype)


def merged_tensor(weight: Any, update: tuple, device: str) -> Any:
    """torch (for .bin checkpoints): the same computation."""
    import torch

    if update[0] == "replace":
        return torch.from_numpy(update[1]).to(weight.dtype)
    _, a, b, scale, transpose = update
    delta = (torch.from_numpy(b).to(device) @ torch.from_numpy(a).to(device)).mul_(scale)
    merged = weight.to(device, torch.float32).add_(delta.T if transpose else delta)
    return merged.to("cpu", weight.dtype)


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path, max_shard_size: str = "2GB", safe: bool = True,
          device: str = "cpu", log: Callable[[str], None] = print) -> list[Path]:
    config, weights = load_adapter(adapter_dir)
    if config.get("target_parameters"):
        del weights
        return merge_in_memory(base_dir, adapter_dir, out_dir, max_shard_size, safe, log)
    updates = updates_of(config, weights)
    del weights
    files = shard_files(base_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    applied = set()
    in_memory = key_renamer(base_dir)

    def transform(key: str, tensor: Any, dtype: str | None = None) -> Any:
        key = key if key in updates else in_memory(key)
        update = updates.get(key)
        if update is None:
            return tensor
        try:
            merged = merged_array(tensor, dtype, update) if dtype else merged_tensor(tensor, update, device)
        except (RuntimeError, ValueError) as exc:  # shapes differ: the adapter belongs to another model
            raise ConvertError(f"{adapter_dir}: does not fit {key} of {base_dir} ({exc}); was it trained on "
                               "another base model?") from None
        applied.add(key)
        return merged

    try:
        if safe and all(f.suffix == ".safetensors" for f in files):
            written = rewrite(files, out_dir, parse_size(max_shard_size), transform, log)
        else:  # PyTorch .bin in or out: shard by shard through memory-mapped torch.load
            writer = ShardWriter(out_dir, parse_size(max_shard_size), safe)
            for i, shard in enumerate(files, start=1):
                for key, tensor in read_shard(shard):
                    writer.add(key, transform(key, tensor))
                writer.flush()
                log(f"merged {shard.name} ({i}/{len(files)})")
            written = writer.close()
        missing = sorted(set(updates) - applied)
        if missing:
            raise ConvertError(f"{adapter_dir}: the adapter targets weights the base model {base_dir} does not "
                               f"have, e.g. {missing[:3]} (was it trained on another base?)")
    except ConvertError:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    copy_companions(base_dir, adapter_dir, out_dir)
    return written


def key_renamer(base_dir: Path) -> Callable[[str], str]:
    """Checkpoint key → the name transformers gives that weight in memory, which is what adapters name. They differ
    where transformers renames on load: multimodal checkpoints as shipped (Gemma 3 ≥4B, Qwen3.5: the file's
    `language_model.model.layers.N…` is `model.language_model.layers.N…` in memory), older layouts. Read from
    transformers' own conversion mapping of the base's architecture, on a weightless (meta) model."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(base_dir)))
        renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
        meta = model.state_dict()
    except Exception:  # noqa: BLE001 - no architecture transformers knows (hub code): the file's names are the names
        return lambda key: key
    return lambda key: rename_source_key(key, renamings, [], model.base_model_prefix, meta)[0]


def copy_companions(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """Tokenizer, config and processor files of the base, and the training config, which `chat`/`serve` of the
    merged model read for the template it was trained with."""
    for path in base_dir.iterdir():
        if path.is_file() and not is_weight_file(path.name) and not (out_dir / path.name).exists():
            shutil.copy2(path, out_dir / path.name)
    if (adapter_dir / "kubetune_config.yaml").is_file():
        shutil.copy2(adapter_dir / "kubetune_config.yaml", out_dir / "kubetune_config.yaml")


def merge_in_memory(base_dir: Path, adapter_dir: Path, out_dir: Path, max_shard_size: str, safe: bool,
                    log: Callable[[str], None]) -> list[Path]:
    """Adapters on parameters (MoE experts, which transformers fuses into one tensor per layer on load and splits
    back per expert on save) are merged by PEFT on the loaded model, and transformers writes the base's own layout
    back: the whole model is in memory once, not streamed."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    log("the adapter targets parameters (MoE experts): merging through PEFT with the whole model in memory")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ConvertError(f"{adapter_dir}: cannot be merged into {base_dir} ({' '.join(str(exc).split())[:300]}); "
                           "was it trained on another base model?") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size, safe_serialization=safe)
    copy_companions(base_dir, adapter_dir, out_dir)
    return sorted(p for p in out_dir.iterdir() if is_weight_file(p.name))
