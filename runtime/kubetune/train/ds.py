"""DeepSpeed ZeRO: XTuner's presets with XTuner's override rules, the engine around our model and optimizer, and its
share of a checkpoint.

Override rules (XTuner's DeepSpeedStrategy): micro-batch, accumulation steps and clipping come from the training
config, whatever the JSON says (a differing explicit value is reported); fp16/bf16 "auto" follow the resolved
precision. The presets keep `zero_force_ds_cpu_optimizer: false`, so offload steps the AdamW we built (no cpu_adam
JIT build), as XTuner does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

TAG = "state"  # DeepSpeed's own sub-directory inside iter_N/deepspeed
# What DeepSpeed's own checkpoint files may name besides tensors and plain containers (DeepSpeed reads them with
# weights_only=False, so anything else would run as code): its enums and config records, seen in its ZeRO 1-3 files.
ALLOWED_GLOBALS = frozenset({"deepspeed.runtime.zero.config.ZeroStageEnum",
                             "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                             "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                             # ZeRO-1/2 optimizer states map parameters to slices with it: two ints, no code
                             "deepspeed.utils.tensor_fragment.fragment_address"})


def load_config(preset: str, path: str | None) -> dict[str, Any]:
    from kubetune.configs import deepspeed_preset

    if path:
        return json.loads(Path(path).read_text())
    return deepspeed_preset(preset)


def resolve(config: dict[str, Any], training: Any, autocast: Any, world: int, say: Callable[[str], None]) -> dict:
    """The config DeepSpeed runs with: `auto` and mismatches resolved from the training section."""
    import torch

    cfg = copy.deepcopy(config)
    wanted = {"train_micro_batch_size_per_gpu": training.batch_size,
              "gradient_accumulation_steps": training.accumulative_counts,
              "gradient_clipping": float(training.max_norm)}
    for key, value in wanted.items():
        given = cfg.get(key, "auto")
        if given != "auto" and given != value:
            say(f"deepspeed: {key}={given} in the DeepSpeed config is replaced by {value} from the training config")
        cfg[key] = value
    cfg["train_batch_size"] = training.batch_size * training.accumulative_counts * world
    fp16 = autocast == torch.float16
    bf16 = autocast == torch.bfloat16
    for key, on in (("fp16", fp16), ("bf16", bf16)):
        section = cfg.setdefault(key, {})
        if section.get("enabled", "auto") not in ("auto", on):
            say(f"deepspeed: {key}.enabled={section['enabled']} is replaced by {on} from training.precision")
        section["enabled"] = on
    cfg.setdefault("steps_per_print", 2**31 - 1)  # we log; DeepSpeed's own step prints would duplicate it
    cfg.setdefault("wall_clock_breakdown", False)
    return cfg


def stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def zero3_init(config: dict[str, Any]) -> Any:
    """Under ZeRO-3 the weights must be partitioned while they load, not after; transformers does that while this
    object is alive (keep a reference until the model is built)."""
    if stage(config) != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(config)


def initialize(model: Any, optimizer: Any, config: dict[str, Any]) -> Any:
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                           dist_init_required=False)
    return engine


def consolidated_state_dict(engine: Any, config: dict[str, Any], trainable_only: bool) -> dict | None:
    """Under ZeRO-3, the whole weights gathered one layer at a time (every rank must call this; rank 0 gets the
    dict). None for stages 0-2, where every rank already holds whole weights."""
    if stage(config) != 3:
        return None
    return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=trainable_only)


def save(engine: Any, directory: Path) -> None:
    """Optimizer partitions and trainable weights in DeepSpeed's layout (every rank writes its own part)."""
    engine.save_checkpoint(str(directory), tag=TAG, save_latest=False, exclude_frozen_parameters=True)


def load(engine: Any, directory: Path) -> None:
    scan(directory)
    path, _ = engine.load_checkpoint(str(directory), tag=TAG, load_module_strict=False, load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"{directory}: no DeepSpeed state to resume from")


def scan(directory: Path) -> None:
    """Refuse DeepSpeed files whose pickles name globals outside the allow-list, before DeepSpeed unpickles them."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    from kubetune.storage.archives import unbounded

    from .errors import TrainError

    for path in sorted(directory.rglob("*.pt")):
        why = unbounded(path)
        if why is not None:
            raise TrainError(f"{path}: {why}; refusing to load it")
        try:
            found = sorted(set(get_unsafe_globals_in_checkpoint(str(path))) - ALLOWED_GLOBALS)
        except Exception as exc:  # a damaged archive: zipfile, pickle and torch raise their own types
            raise TrainError(f"{path}: not a readable DeepSpeed checkpoint file ({type(exc).__name__})") from None
        if found:
            raise TrainError(f"{path}: names {', '.join(found[:5])}, which a DeepSpeed checkpoint does not hold; "
                             "refusing to load it (it could run code)")
