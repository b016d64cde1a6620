"""An XTuner config's settings (kubetune.api.xtuner.reader) → a FineTuneJob manifest: PART 1's settings as PART 2-5
use them (the model dict, the dataset dicts, the optimizer wrapper, the hooks), each kubetune field from the XTuner
value that decides it. What has no kubetune field is a problem with its line; what kubetune keeps elsewhere on purpose
is a note."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..base import API_VERSION
from ..enums import DatasetFormat, PromptTemplate
from . import llava
from .common import DTYPES, Imported, Mapper, as_dict, as_list, to_uri
from .reader import Config, Sym

# XTuner's map fns by name → kubetune's dataset formats (None: rows already in XTuner's conversation layout).
MAP_FNS = {f"{f.value}_map_fn": f.value for f in DatasetFormat} | {"template_map_fn": "xtuner"}
MODELS = {"SupervisedFinetune": "sft", "DPO": "dpo", "ORPO": "orpo", "RewardModel": "reward"}


def to_manifest(config: Config, source: Path) -> Imported:
    imported = Imported({})
    m = Mapper(config, imported)
    model = m.get("model")
    if model is None and m.get("train_dataloader") is None:
        m.problem(0, "not a training config (no model, no train_dataloader): a script XTuner keeps beside its "
                     "configs; kubetune convert does the conversions (docs/convert.md)")
        return imported
    if not isinstance(model, dict) or not isinstance(model.get("type"), Sym):
        m.problem(m.line("model"), "model: no `model = dict(type=..., llm=...)` in the config")
        return imported
    kind = "llava" if model["type"].name == "LLaVAModel" else MODELS.get(model["type"].name)
    if kind is None and m.get("framework") == "huggingface":
        m.problem(m.line("framework"), "framework = \"huggingface\": XTuner's Hugging Face Trainer example; kubetune "
                                       "imports mmengine configs (the same name without _hf)")
        return imported
    if kind is None:
        m.problem(m.line("model"), f"model: type={model['type'].name} is not a model kubetune trains (it imports "
                                   "SupervisedFinetune, DPO, ORPO, RewardModel and LLaVAModel)")
        return imported
    if kind == "llava":
        parts = (llava.model_spec(m, model), llava.method_spec(m, model), llava.dataset_spec(m, _datasets(m)))
    else:
        parts = (_model(m, model), _method(m, model, kind), _dataset(m, kind))
    spec = {"model": parts[0], "method": parts[1], "dataset": parts[2], "training": _training(m),
            "checkpoints": _checkpoints(m), "evaluation": _evaluation(m)}
    if spec["checkpoints"].get("saveOptimizer") is False and spec["training"].get("deepspeed"):
        del spec["checkpoints"]["saveOptimizer"]  # the DeepSpeed run still trains; only its checkpoints are larger
        m.out.notes.append((m.line("default_hooks"), "save_optimizer=False: checkpoints keep the optimizer state "
                            "under DeepSpeed (kubetune writes weights-only checkpoints without a preset only)"))
    spec = {k: v for k, v in spec.items() if v}
    stem = source.stem
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:63].rstrip("-") or "xtuner"
    labels = {"kubetune.io/config": stem[:63].rstrip("_-.")}  # a label value ends alphanumeric
    imported.manifest = {"apiVersion": API_VERSION, "kind": "FineTuneJob",
                         "metadata": {"name": name, "labels": labels}, "spec": spec}
    for line, text in config.skipped:
        imported.notes.append((line, f"skipped: {text}"))
    return imported


def _model(m: Mapper, model: dict) -> dict[str, Any]:
    llm = model.get("llm") or {}
    uri = m.value(llm.get("pretrained_model_name_or_path"), "model.llm.pretrained_model_name_or_path", m.line("model"))
    out: dict[str, Any] = {"uri": to_uri(uri)}
    if llm.get("trust_remote_code"):
        out["trustRemoteCode"] = True
    dtype = llm.get("torch_dtype")
    if isinstance(dtype, Sym) and dtype.name in DTYPES:
        out["dtype"] = DTYPES[dtype.name]
    return out


def _method(m: Mapper, model: dict, kind: str) -> dict[str, Any]:
    llm, lora = model.get("llm") or {}, model.get("lora")
    quant = llm.get("quantization_config")
    scheme = "qlora" if lora and quant else "lora" if lora else "full"
    out: dict[str, Any] = {"type": scheme} if kind == "sft" else {"type": kind, "parameters": scheme}
    if isinstance(lora, dict):
        spec = {"r": lora.get("r", 8), "alpha": lora.get("lora_alpha", 8), "dropout": lora.get("lora_dropout", 0.0)}
        if isinstance(lora.get("target_modules"), (list, tuple)):
            spec["targetModules"] = list(lora["target_modules"])
        if lora.get("bias", "none") != "none":
            spec["bias"] = lora["bias"]
        out["lora"] = spec
    if isinstance(quant, dict):
        bits = 4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else None
        if bits is None:
            m.problem(m.line("model"), "model.llm.quantization_config: neither load_in_4bit nor load_in_8bit")
        else:
            out["quantization"] = {"bits": bits, "type": quant.get("bnb_4bit_quant_type", "nf4"),
                                   "doubleQuant": bool(quant.get("bnb_4bit_use_double_quant", False))}
    if kind == "dpo":
        out["dpo"] = {"beta": model.get("beta", 0.1), "lossType": model.get("loss_type", "sigmoid"),
                      "labelSmoothing": model.get("label_smoothing", 0.0)}
    elif kind == "orpo":
        out["orpo"] = {"beta": model.get("beta", 0.1)}
    elif kind == "reward":
        out["reward"] = {"lossType": model.get("loss_type", "ranking")}
        m.out.notes.append((m.line("model"), "reward: the reward token is kubetune's default (method.reward."
                                             "rewardToken); XTuner's reward_token_id is a token id of its tokenizer"))
    return out


def _datasets(m: Mapper) -> list[tuple[dict, int]]:
    loader = m.get("train_dataloader")
    if not isinstance(loader, dict):
        m.problem(m.line("train_dataloader"), "train_dataloader: not a dict(...)")
        return []
    ds = loader.get("dataset")
    line = m.line("train_dataloader")
    if isinstance(ds, dict) and isinstance(ds.get("type"), Sym) and ds["type"].name == "ConcatDataset":
        parts = ds.get("datasets") or []
        return [(p, line) for p in parts if isinstance(p, dict)]
    if not isinstance(ds, dict):
        m.value(ds, "train_dataloader.dataset", line)
        return []
    return [(ds, line)]


DATASET_BUILDERS = ("process_hf_dataset", "build_preference_dataset")
FILE_LOADERS = ("json", "jsonl", "csv", "parquet", "arrow")


def _sources(m: Mapper, ds: dict, line: int) -> list[dict[str, Any]]:
    """One dataset dict → its sources (several data_files become several, in order), each with its format."""
    builder = ds.get("type")
    if isinstance(builder, Sym) and builder.name not in DATASET_BUILDERS:
        hint = " (ModelScope: download it, then point dataset.uri at the files)" \
            if builder.name == "process_ms_dataset" else ""
        m.problem(line, f"dataset: type={builder.name} is not a dataset kubetune reads yet{hint}")
        return []
    inner = as_dict(ds.get("dataset"))
    loader = inner.get("type")
    path = m.value(inner.get("path"), "dataset.path", line)
    files = m.value(inner.get("data_files"), "dataset.data_files", line)
    if isinstance(files, dict):
        files = files.get("train", next(iter(files.values()), None))
    files = list(files) if isinstance(files, (list, tuple)) else [files] if files else []
    from_files = path in FILE_LOADERS or (isinstance(loader, Sym) and loader.name == "load_jsonl_dataset")
    uris = [to_uri(f) for f in files] if from_files else [to_uri(path)] if path else []
    if not uris:
        m.problem(line, "dataset: no load_dataset path or data_files")
        return []
    if ds.get("do_dataset_tokenization") is False:
        m.problem(line, "dataset: do_dataset_tokenization=False reads rows that are token ids already; kubetune "
                        "tokenizes text rows itself (no format reads pre-tokenized data)")
        return []
    fn = ds.get("dataset_map_fn")
    fmt = None
    if fn is None:
        fmt = "xtuner"
    elif isinstance(fn, Sym) and fn.name in MAP_FNS:
        fmt = MAP_FNS[fn.name]
    elif isinstance(fn, Sym):
        m.problem(line, f"dataset_map_fn: {fn.path} is not one of XTuner's map fns kubetune knows")
    else:
        m.value(fn, "dataset_map_fn", line)
    return [{"uri": u, "format": fmt} if fmt else {"uri": u} for u in uris]


def _dataset(m: Mapper, kind: str) -> dict[str, Any]:
    parts = _datasets(m)
    if not parts:
        return {}
    first, line = parts[0]
    sources = [s for p, at in parts for s in _sources(m, p, at)]
    if not sources:
        return {}
    for source in sources:
        if kind != "sft" and source.get("format") == "xtuner":
            source["format"] = "preference"
    out: dict[str, Any] = dict(sources[0])
    out["concat"] = sources[1:]
    template = (first.get("template_map_fn") or {}).get("template") if isinstance(first.get("template_map_fn"),
                                                                                  dict) else None
    template = template or m.get("prompt_template")
    if isinstance(template, Sym) and template.name in {t.value for t in PromptTemplate}:
        out["promptTemplate"] = template.name
    elif template is not None:
        m.problem(m.line("prompt_template"), f"prompt_template: {getattr(template, 'path', template)} is not one of "
                                             "XTuner's templates")
    for key, field_name in (("max_length", "maxLength"), ("pack_to_max_length", "packToMaxLength"),
                            ("shuffle_before_pack", "shuffleBeforePack"), ("use_varlen_attn", "varlenAttention"),
                            ("max_response_length", "maxResponseLength")):
        if key in first and first[key] is not None:
            out[field_name] = m.value(first[key], key, line)
    if kind != "sft":
        out["packToMaxLength"] = first.get("use_varlen_attn", False) is True
    return {k: v for k, v in out.items() if v != [] and v is not None}


def _training(m: Mapper) -> dict[str, Any]:
    wrapper = as_dict(m.get("optim_wrapper"))
    optimizer = as_dict(wrapper.get("optimizer"))
    loader = as_dict(m.get("train_dataloader"))
    train_cfg = as_dict(m.get("train_cfg"))
    out: dict[str, Any] = {"batchSize": loader.get("batch_size", 1),
                           "accumulativeCounts": wrapper.get("accumulative_counts", 1),
                           "maxEpochs": train_cfg.get("max_epochs"), "maxSteps": train_cfg.get("max_iters")}
    opt_type = optimizer.get("type")
    if isinstance(opt_type, Sym) and opt_type.name != "AdamW":
        m.problem(m.line("optim_wrapper"), f"optimizer: {opt_type.name} (kubetune trains with AdamW)")
    out["optimizer"] = {"type": "AdamW", "lr": optimizer.get("lr"), "betas": list(optimizer.get("betas") or
                                                                                    (0.9, 0.999)),
                        "weightDecay": optimizer.get("weight_decay", 0)}
    clip = wrapper.get("clip_grad")
    out["maxNorm"] = clip.get("max_norm") if isinstance(clip, dict) else None
    out["warmupRatio"] = m.get("warmup_ratio")
    wrapper_type = wrapper.get("type")
    if isinstance(wrapper_type, Sym) and wrapper_type.name == "AmpOptimWrapper":
        out["precision"] = DTYPES.get(wrapper.get("dtype", "float16"), "fp16")
    elif isinstance(wrapper_type, Sym):
        out["precision"] = "fp32"
    sp = m.get("sequence_parallel_size")
    out["sequenceParallelSize"] = sp
    if isinstance(sp, int) and sp > 1:
        # XTuner's sequence-parallel configs are launched with `--deepspeed`; kubetune's spec carries the preset.
        out["deepspeed"] = "zero2"
        m.out.notes.append((m.line("sequence_parallel_size"), "sequence parallel needs DeepSpeed: training.deepspeed "
                                                              "zero2 (XTuner takes it from --deepspeed)"))
    out["dataloaderNumWorkers"] = loader.get("num_workers")
    seed = (m.get("randomness") or {}).get("seed") if isinstance(m.get("randomness"), dict) else None
    out["seed"] = seed
    out = {k: m.value(v, f"training.{k}", m.line("optim_wrapper")) for k, v in out.items() if v is not None}
    out["optimizer"] = {k: v for k, v in out["optimizer"].items() if v is not None}
    return {k: v for k, v in out.items() if v is not None}


def _checkpoints(m: Mapper) -> dict[str, Any]:
    hooks = as_dict(m.get("default_hooks"))
    ckpt = as_dict(hooks.get("checkpoint"))
    out: dict[str, Any] = {}
    if ckpt.get("by_epoch"):
        out["byEpoch"] = True
    elif isinstance(ckpt.get("interval"), int) and ckpt["interval"] > 0:
        out["everySteps"] = ckpt["interval"]
    elif ckpt.get("interval") is not None:
        m.out.notes.append((m.line("default_hooks"), f"checkpoint interval {ckpt['interval']}: no checkpoints by "
                                                     "steps, only at the end"))
    keep = ckpt.get("max_keep_ckpts")
    if isinstance(keep, int):
        out["keep"] = keep
    if ckpt.get("save_optimizer") is False:
        out["saveOptimizer"] = False
    return out


def _evaluation(m: Mapper) -> dict[str, Any]:
    hooks = as_list(m.get("custom_hooks"))
    chat = next((h for h in hooks if isinstance(h, dict) and isinstance(h.get("type"), Sym)
                 and h["type"].name == "EvaluateChatHook"), None)
    if chat is None:
        return {}
    out = {"everySteps": chat.get("every_n_iters"), "inputs": list(chat.get("evaluation_inputs") or [])}
    if chat.get("evaluation_images"):
        m.note(m.line("custom_hooks"), "evaluation_images: kubetune's evaluation prompts are text only (the "
                                       "LLaVA model answers them without an image)")
    if chat.get("max_new_tokens"):
        out["maxNewTokens"] = chat["max_new_tokens"]
    system = chat.get("system")
    if isinstance(system, Sym) and system.path.split(".")[-2:-1] == ["SYSTEM_TEMPLATE"]:
        out["systemTemplate"] = system.name
    elif isinstance(system, str) and system:
        out["system"] = system
    elif system not in (None, ""):
        m.value(system, "EvaluateChatHook.system", m.line("custom_hooks"))
    return {k: v for k, v in out.items() if v is not None}
