"""`kubetune convert pth_to_hf CONFIG CKPT SAVE_DIR`: a training checkpoint (`iter_N/`, plain or DeepSpeed) as a
Hugging Face artifact that plain transformers/peft load: a PEFT adapter for lora/qlora, a sharded model plus tokenizer
for full fine-tuning. fp16 unless `--fp32`; the training config travels along as `kubetune_config.yaml`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

from .shards import ConvertError, ShardWriter, parse_size, read_shard, shard_files


def checkpoint_weights(ckpt: Path) -> Path:
    """The HF-format weights inside a checkpoint (DeepSpeed runs store them consolidated next to the shards)."""
    model = ckpt / "model"
    if model.is_dir():
        return model
    if (ckpt / "adapter_config.json").is_file() or (ckpt / "config.json").is_file():
        return ckpt
    raise ConvertError(f"{ckpt}: not a kubetune checkpoint (no model/ directory); pass an iter_N directory")


def convert(job: Any, ckpt: Path, out: Path, fp32: bool = False, max_shard_size: str = "2GB", safe: bool = True,
            log: Callable[[str], None] = print, save_format: str = "kubetune") -> Path:
    import torch

    source = checkpoint_weights(ckpt)
    dtype = torch.float32 if fp32 else torch.float16
    out.mkdir(parents=True, exist_ok=True)
    if (source / "llava.json").is_file():
        from .llava import export as export_llava

        kind = export_llava(job, source, out, dtype, max_shard_size, safe, save_format)
    elif save_format != "kubetune":
        raise ConvertError(f"--save-format {save_format} is for LLaVA checkpoints; {ckpt} is not one")
    elif (source / "reward_head.safetensors").is_file():
        from .reward import export

        kind = export(job, source, out, fp32, max_shard_size, safe)
    elif (source / "adapter_config.json").is_file():
        kind = write_adapter(source, out, dtype, safe)
    else:
        kind = write_full(job, source, out, dtype, max_shard_size, safe)
    (out / "kubetune_config.yaml").write_text(yaml.safe_dump(job.to_dict(), sort_keys=False))
    log(f"{kind} written to {out} ({'fp32' if fp32 else 'fp16'}, {'safetensors' if safe else '.bin'})")
    return out


def _cast(dtype: Any) -> Callable[[Any], Any]:
    return lambda t: t.to(dtype) if t.is_floating_point() else t


def write_adapter(source: Path, out: Path, dtype: Any, safe: bool) -> str:
    import torch

    weights = next((source / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                    if (source / n).is_file()), None)
    if weights is None:
        raise ConvertError(f"{source}: adapter_config.json without adapter weights")
    out.mkdir(parents=True, exist_ok=True)
    cast = _cast(dtype)
    tensors = {k: cast(v) for k, v in read_shard(weights)}
    if safe:
        from safetensors.torch import save_file

        save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(tensors, str(out / "adapter_model.bin"))
    shutil.copy2(source / "adapter_config.json", out / "adapter_config.json")
    return "PEFT adapter"


def write_full(job: Any, source: Path, out: Path, dtype: Any, max_shard_size: str, safe: bool) -> str:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    cast = _cast(dtype)
    writer = ShardWriter(out, parse_size(max_shard_size), safe)
    for shard in shard_files(source):
        for key, tensor in read_shard(shard):
            writer.add(key, cast(tensor))
    writer.close()
    for name in ("config.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32" if dtype == torch.float32 else "float16"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    from kubetune.model.tokenizer import load_tokenizer

    load_tokenizer(job.spec.model).save_pretrained(out)
    return "model + tokenizer"
