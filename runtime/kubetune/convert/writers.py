"""Writing a checkpoint's weights as Hugging Face files: a PEFT adapter as it is, a full model re-sharded with its
config and tokenizer; both cast to the requested dtype. Shared by pth_to_hf and the LLaVA exporter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

from .shards import ConvertError, ShardWriter, parse_size, read_shard, shard_files

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJob


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


def write_full(job: FineTuneJob, source: Path, out: Path, dtype: Any, max_shard_size: str, safe: bool) -> str:
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
