"""`kubetune convert pth_to_hf CONFIG CKPT SAVE_DIR`: a training checkpoint (kubetune's `iter_N/`, plain or DeepSpeed;
XTuner's `iter_N.pth` file or `iter_N.pth/` DeepSpeed directory, convert/xtuner_ckpt.py) as a Hugging Face artifact
that plain transformers/peft load: a PEFT adapter for lora/qlora, a sharded model plus tokenizer
for full fine-tuning. fp16 unless `--fp32`; the training config travels along as `kubetune_config.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TYPE_CHECKING

import yaml

from .shards import ConvertError
from .writers import write_adapter, write_full

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJob


def checkpoint_weights(ckpt: Path) -> Path:
    """The HF-format weights inside a checkpoint (DeepSpeed runs store them consolidated next to the shards)."""
    model = ckpt / "model"
    if model.is_dir():
        return model
    if (ckpt / "adapter_config.json").is_file() or (ckpt / "config.json").is_file():
        return ckpt
    raise ConvertError(f"{ckpt}: not a kubetune checkpoint (no model/ directory); pass an iter_N directory")


def convert(job: FineTuneJob, ckpt: Path, out: Path, fp32: bool = False, max_shard_size: str = "2GB", safe: bool = True,
            log: Callable[[str], None] = print, save_format: str = "kubetune") -> Path:
    import tempfile

    from .xtuner_ckpt import as_source, is_xtuner_checkpoint

    if is_xtuner_checkpoint(ckpt):
        with tempfile.TemporaryDirectory(prefix="kubetune-xtuner-ckpt-") as scratch:
            return _convert(job, as_source(job, ckpt, Path(scratch)), out, fp32, max_shard_size, safe, log,
                            save_format)
    return _convert(job, checkpoint_weights(ckpt), out, fp32, max_shard_size, safe, log, save_format)


def _convert(job: FineTuneJob, source: Path, out: Path, fp32: bool, max_shard_size: str, safe: bool,
             log: Callable[[str], None], save_format: str) -> Path:
    import torch

    dtype = torch.float32 if fp32 else torch.float16
    out.mkdir(parents=True, exist_ok=True)
    if (source / "llava.json").is_file():
        from .llava import export as export_llava

        kind = export_llava(job, source, out, dtype, max_shard_size, safe, save_format)
    elif save_format != "kubetune":
        raise ConvertError(f"--save-format {save_format} is for LLaVA checkpoints; {source} is not one")
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
