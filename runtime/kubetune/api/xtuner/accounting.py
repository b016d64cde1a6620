"""Every setting of an XTuner config accounted for. After the mapping has read what it maps, each key of every dict
under the names mmengine's Runner and XTuner read (model, train_dataloader, optim_wrapper, param_scheduler, hooks,
...) is either one the mapping read, one listed here as changing nothing kubetune trains (with the reason), or a
problem with its line: an importer that skips a key it does not know trains another run than XTuner's, silently."""

from __future__ import annotations

import fnmatch
from typing import Any

from .common import Mapper
from .reader import Setting

# The config names mmengine's Runner.from_cfg and XTuner's train tool read; any other top-level name is a helper
# variable, which only matters through these.
RUNNER = ("model", "train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler", "default_hooks",
          "custom_hooks", "env_cfg", "visualizer", "randomness", "log_processor")
# Runner settings kubetune's import has no counterpart for, and what to use instead.
UNMAPPED = {
    "val_dataloader": "a validation loop with an evaluator (kubetune test scores a checkpoint on a dataset after "
                      "training; kubetune evaluate runs lm-eval tasks)",
    "val_evaluator": "a validation loop with an evaluator (kubetune test / kubetune evaluate after training)",
    "val_cfg": "a validation loop with an evaluator (kubetune test / kubetune evaluate after training)",
    "test_dataloader": "a test loop (kubetune test CONFIG --checkpoint iter_N)",
    "test_evaluator": "a test loop (kubetune test CONFIG --checkpoint iter_N)",
    "test_cfg": "a test loop (kubetune test CONFIG --checkpoint iter_N)",
    "auto_scale_lr": "mmengine's learning-rate scaling by the global batch: set training.optimizer.lr",
    "data_preprocessor": "a model data preprocessor",
}

# Keys (dotted paths, `[]` for a list item) that change nothing kubetune trains, and why.
INERT: tuple[tuple[str, str], ...] = (
    ("*.type", "the class XTuner builds from the dict; the mapping reads the classes that decide something"),
    ("train_dataloader.collate_fn", "XTuner's collate fn pads and stacks a batch, as kubetune's does"),
    ("train_dataloader.collate_fn.*", "XTuner's collate fn pads and stacks a batch, as kubetune's does"),
    ("train_dataloader.pin_memory", "a data loader speed setting"),
    ("train_dataloader.persistent_workers", "a data loader speed setting"),
    ("train_dataloader.prefetch_factor", "a data loader speed setting"),
    ("*.remove_unused_columns", "XTuner's column clean-up after its map fn; kubetune keeps only what it encodes"),
    ("*.tokenizer", "checked against model.uri: the tokenizer is the model's (a different one is refused)"),
    ("*.tokenizer.padding_side", "training pads on the right in kubetune and in XTuner's collate fn alike"),
    ("*.tokenizer.trust_remote_code", "the model's trustRemoteCode decides"),
    ("*.image_processor", "the image processor is the vision encoder's (model.vision.encoder)"),
    ("*.image_processor.*", "the image processor is the vision encoder's (model.vision.encoder)"),
    ("model.use_varlen_attn", "the dataset's use_varlen_attn decides (dataset.varlenAttention)"),
    ("model.lora.task_type", "kubetune's adapters are causal-LM LoRA (task CAUSAL_LM)"),
    ("model.llm_lora.task_type", "kubetune's adapters are causal-LM LoRA (task CAUSAL_LM)"),
    ("model.visual_encoder_lora.task_type", "the encoder's LoRA has no task"),
    ("model.llm.quantization_config.llm_int8_has_fp16_weight", "False is bitsandbytes' default, kubetune's too"),
    ("optim_wrapper.clip_grad.error_if_nonfinite", "kubetune stops on a non-finite loss before any update"),
    ("default_hooks.timer", "IterTimerHook: times iterations for the log"),
    ("default_hooks.param_scheduler", "ParamSchedulerHook: steps param_scheduler, which training.* maps"),
    ("default_hooks.sampler_seed", "DistSamplerSeedHook: gives the sampler its epoch; kubetune's order is a "
                                   "function of seed and epoch"),
    ("default_hooks.logger.log_metric_by_epoch", "how the log prints"),
    ("custom_hooks[].is_intern_repo_dataset", "DatasetInfoHook's printing"),
    ("env_cfg", "process and device set-up (cuDNN benchmark, worker start method, NCCL/gloo)"),
    ("env_cfg.*", "process and device set-up (cuDNN benchmark, worker start method, NCCL/gloo)"),
    ("log_processor", "how the log smooths and prints numbers"),
    ("log_processor.*", "how the log smooths and prints numbers"),
    ("train_dataloader.dataset.is_dpo", "the model's type (DPO, ORPO, RewardModel) decides the method"),
    ("train_dataloader.dataset.is_reward", "the model's type (DPO, ORPO, RewardModel) decides the method"),
    ("train_dataloader.dataset.reward_token_id", "the reward token is method.reward.rewardToken (reward configs note "
                                                 "it)"),
)


def inert_reason(path: str) -> str | None:
    return next((why for pattern, why in INERT if fnmatch.fnmatchcase(path, pattern)), None)


def account(m: Mapper) -> None:
    """A problem for every key under RUNNER the mapping did not read and INERT does not list; none where the line
    already has a problem (one cause, one message)."""
    for name, instead in UNMAPPED.items():
        if m.get(name) not in (None, {}, [], ()):
            m.problem(m.line(name), f"{name}: {instead}")
    flagged = {line for line, _ in m.out.problems}
    owned = {message.split(":")[0].split(".")[0].split(" ")[0] for _, message in m.out.problems}
    for name in RUNNER:
        if name in owned or (name == "train_dataloader" and owned & {"dataset", "dataset_map_fn", "template_map_fn"}):
            continue  # refused already for a reason of its own: the rest of it would repeat that
        for path, line, value in _unread(m.get(name), name, m.line(name)):
            if line not in flagged:
                flagged.add(line)
                m.problem(line, f"{path} = {_show(value)}: a setting the import does not map; kubetune would train "
                                "without it")


def _unread(value: Any, path: str, line: int):
    """(dotted path, line, value) of each key under `value` that was not read and is not inert."""
    if isinstance(value, Setting):
        for key, item in dict.items(value):
            where = f"{path}.{key}"
            at = value.lines.get(key, line)
            if key not in value.read and inert_reason(where) is None:
                yield where, at, item
                continue  # the key as a whole is the problem: its parts need no lines of their own
            yield from _unread(item, where, at)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _unread(item, f"{path}[]", line)


def _show(value: Any) -> str:
    text = getattr(value, "path", None) or repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
