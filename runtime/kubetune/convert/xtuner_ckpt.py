"""XTuner's checkpoints: `iter_N.pth` (mmengine's file: the model's state dict beside the optimizer, the schedulers
and the message hub) and `iter_N.pth/` (DeepSpeed's directory: `mp_rank_00_model_states.pt` holds the module's
weights). Read with `torch.load(weights_only=True)`: tensors and plain containers as torch allows, and a short
allow-list of the other things these files hold (mmengine's HistoryBuffer and ConfigDict, numpy scalars and arrays,
the `getattr` numpy's pickles call), each mapped to an inert placeholder that runs nothing. Anything else in the file
stops the read, naming it. The weights become the directory kubetune's writers read: a PEFT adapter (XTuner's
`llm.` prefix and PEFT's `.default` adapter name removed, as XTuner's own converter saves it) or a full model."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.storage.archives import unbounded

from .shards import ConvertError

if TYPE_CHECKING:
    from kubetune.api.finetune import FineTuneJob

DEEPSPEED_STATES = "mp_rank_00_model_states.pt"
# What XTuner 0.2.0's checkpoints hold besides tensors and plain containers (found with
# torch.serialization.get_unsafe_globals_in_checkpoint on real ones, tests/test_xtuner_checkpoints.py).
INERT = ("mmengine.logging.history_buffer.HistoryBuffer", "mmengine.config.config.ConfigDict", "builtins.getattr",
         "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
         "numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")


class _Inert(dict):
    """Stands for every allow-listed object: takes any arguments and state, keeps none of it, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return dict.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        return None


def is_xtuner_checkpoint(path: Path) -> bool:
    return (path.is_file() and path.suffix == ".pth") or (path / DEEPSPEED_STATES).is_file()


def read_weights(path: Path) -> dict[str, Any]:
    """The trained weights of an XTuner checkpoint, keys as XTuner's model names them (`llm.…`)."""
    import torch

    deepspeed = path.is_dir()
    file = path / DEEPSPEED_STATES if deepspeed else path
    why = unbounded(file)
    if why is not None:
        raise ConvertError(f"{file}: not a checkpoint kubetune reads safely ({why})")
    try:
        # Listed without unpickling anything: a file naming another callable is refused before it is opened.
        unknown = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(file))) - set(INERT))
        if unknown:
            raise ConvertError(f"{file}: not an XTuner checkpoint kubetune reads safely (it holds "
                               f"{', '.join(unknown)}, which is not on the allow-list; nothing of it was run)")
        with torch.serialization.safe_globals([(_Inert, name) for name in INERT]):
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reason = (lines[-1] if lines else type(exc).__name__)[:200]
        raise ConvertError(f"{file}: not a checkpoint kubetune reads safely ({reason})") from None
    weights = checkpoint.get("module" if deepspeed else "state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise ConvertError(f"{file}: no {'module' if deepspeed else 'state_dict'} weights in it")
    if deepspeed and any(t.numel() == 0 for t in weights.values() if isinstance(t, torch.Tensor)):
        raise ConvertError(f"{path}: a ZeRO-3 checkpoint (the module's weights are partitioned across the optimizer "
                           "shards); consolidate it with the zero_to_fp32.py DeepSpeed wrote beside it first")
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}


def as_source(job: FineTuneJob, path: Path, scratch: Path) -> Path:
    """The checkpoint's weights written into `scratch` as a kubetune checkpoint's model directory."""
    from safetensors.torch import save_file

    weights = read_weights(path)
    if any(k.startswith(("projector.", "visual_encoder.")) for k in weights):
        raise ConvertError(f"{path}: an XTuner LLaVA checkpoint; kubetune converts XTuner's LLM checkpoints only")
    tensors = {k.removeprefix("llm."): v.contiguous() for k, v in weights.items()}
    scratch.mkdir(parents=True, exist_ok=True)
    if any(".lora_A." in k for k in tensors):
        adapter = {k.replace(".default.", "."): v for k, v in tensors.items()}
        save_file(adapter, str(scratch / "adapter_model.safetensors"))
        (scratch / "adapter_config.json").write_text(json.dumps(_adapter_config(job, adapter), indent=2))
        return scratch
    save_file(tensors, str(scratch / "model.safetensors"))
    _copy_model_config(job, scratch)
    return scratch


def _adapter_config(job: FineTuneJob, adapter: dict[str, Any]) -> dict[str, Any]:
    """PEFT's config for these adapters: the job's LoRA settings, the target modules the weights name (XTuner's
    default is every linear layer but the head, so the names are the truth)."""
    lora = job.spec.method.lora
    targets = sorted({k.split(".lora_A.")[0].rsplit(".", 1)[-1] for k in adapter if ".lora_A." in k})
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": job.spec.model.uri,
            "r": lora.r if lora else 8, "lora_alpha": lora.alpha if lora else 8,
            "lora_dropout": lora.dropout if lora else 0.0, "bias": lora.bias if lora else "none",
            "target_modules": targets, "inference_mode": True, "fan_in_fan_out": False}


def _copy_model_config(job: FineTuneJob, scratch: Path) -> None:
    from kubetune.storage import local_path

    base = local_path(job.spec.model.uri, repo_type="model")
    for name in ("config.json", "generation_config.json"):
        if (base / name).is_file():
            (scratch / name).write_bytes((base / name).read_bytes())
