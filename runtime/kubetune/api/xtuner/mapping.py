"""An XTuner config's settings (kubetune.api.xtuner.reader) → a FineTuneJob manifest: PART 1's settings as PART 2-5
use them (the model dict, the dataset dicts, the optimizer wrapper, the hooks), each kubetune field from the XTuner
value that decides it. What has no kubetune field is a problem with its line; what kubetune keeps elsewhere on purpose
is a note."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..base import API_VERSION
from ..enums import DatasetFormat, PromptTemplate
from . import llava
from .accounting import account
from .common import DTYPES, Imported, Mapper, as_dict, as_list, check_tokenizer, quantization, read_all, to_uri
from .reader import Call, Config, Local, Sym, Unknown
from .schedule import schedule_fields

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
    _runtime(m)
    spec = {k: v for k, v in spec.items() if v}
    stem = source.stem
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:63].rstrip("-") or "xtuner"
    labels = {"kubetune.io/config": stem[:63].rstrip("_-.")}  # a label value ends alphanumeric
    imported.manifest = {"apiVersion": API_VERSION, "kind": "FineTuneJob",
                         "metadata": {"name": name, "labels": labels}, "spec": spec}
    for line, text in config.skipped:
        imported.notes.append((line, f"skipped: {text}"))
    account(m)
    _unevaluated(m, imported.manifest.get("spec", {}), "")
    imported.manifest = json.loads(json.dumps(imported.manifest))  # plain dicts: the config's Settings stay behind
    return imported


# Hooks that change nothing a run computes: XTuner's dataset summary, its throughput log, the message-hub plumbing of
# varlen attention (kubetune passes sample boundaries itself).
INERT_HOOKS = {"DatasetInfoHook", "ThroughputHook", "VarlenAttnArgsToMessageHubHook", "EvaluateChatHook",
               "HFCheckpointHook"}  # the last writes the Hugging Face model at the end: kubetune's export does
LOG_BACKENDS = {"LocalVisBackend", "TensorboardVisBackend"}  # kubetune writes scalars.json and TensorBoard itself


def _runtime(m: Mapper) -> None:
    """PART 5's settings that would change the run and kubetune has no field for: refused by line."""
    if m.get("load_from") is not None:
        m.problem(m.line("load_from"), "load_from: kubetune starts from model.uri; convert the checkpoint first "
                                       "(kubetune convert pth_to_hf CONFIG CKPT DIR) and point model.uri at DIR")
    for hook in as_list(m.get("custom_hooks")):
        kind = hook.get("type") if isinstance(hook, dict) else hook
        name = kind.name if isinstance(kind, Sym) else getattr(kind, "name", str(kind))
        if name not in INERT_HOOKS:
            m.problem(m.line("custom_hooks"), f"custom_hooks: {name} is a hook kubetune does not run")
    visualizer = as_dict(m.get("visualizer"))
    for backend in as_list(visualizer.get("vis_backends")):
        kind = backend.get("type") if isinstance(backend, dict) else None
        name = kind.name if isinstance(kind, Sym) else str(kind)
        if name not in LOG_BACKENDS:
            m.problem(m.line("visualizer"), f"visualizer: {name} is not a backend kubetune logs to (it writes "
                                            "scalars.json and TensorBoard event files)")
    if as_dict(m.get("optim_wrapper")).get("paramwise_cfg") is not None:
        m.problem(m.line("optim_wrapper"), "optim_wrapper.paramwise_cfg: per-parameter learning rates and decay "
                                           "are not something kubetune trains with")


def _unevaluated(m: Mapper, node: Any, path: str) -> None:
    """Whatever the reader did not evaluate and a field still holds (an expression, a symbol, the config's own
    function): a problem at its line, and the field left out."""
    items = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
    for key, value in items:
        if isinstance(value, (Unknown, Local, Sym, Call)):
            m.value(value if isinstance(value, (Unknown, Local)) else Unknown(getattr(value, "path", "a call"),
                                                                               getattr(value, "line", 0)),
                    f"{path}.{key}".lstrip("."), getattr(value, "line", 0))
            node[key] = None
        else:
            _unevaluated(m, value, f"{path}.{key}".lstrip("."))


def _model(m: Mapper, model: dict) -> dict[str, Any]:
    llm = model.get("llm") or {}
    uri = m.value(llm.get("pretrained_model_name_or_path"), "model.llm.pretrained_model_name_or_path", m.line("model"))
    out: dict[str, Any] = {"uri": to_uri(uri)}
    if llm.get("trust_remote_code"):
        out["trustRemoteCode"] = True
    dtype = llm.get("torch_dtype")
    if isinstance(dtype, Sym) and dtype.name in DTYPES:
        out["dtype"] = DTYPES[dtype.name]
    eos = _eos_token(m)
    if eos is not None:
        out["eosToken"] = eos
    attention = llm.get("attn_implementation")
    if attention is not None:
        out["attnImplementation"] = attention
    builder = llm.get("type")
    if isinstance(builder, Sym) and not builder.path.endswith("from_pretrained"):
        m.problem(m.line("model"), f"model.llm: type={builder.path} builds the model its own way; kubetune loads "
                                   "model.uri with from_pretrained")
    for key in ("moe_implementation", "expert_in_one_shard"):  # XTuner's MoE kernels: speed, not numbers
        llm.get(key)
    return out


LORA_VARIANTS = ("use_rslora", "use_dora", "modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern",
                 "init_lora_weights")


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
        for key in LORA_VARIANTS:
            if lora.get(key) not in (None, False, [], (), {}) and not (key == "init_lora_weights" and lora[key] is True):
                m.problem(m.line("model"), f"model.lora {key}={lora[key]!r}: kubetune trains plain LoRA adapters "
                                           "(no rsLoRA, DoRA, extra fully trained modules or per-layer choices)")
        out["lora"] = spec
    if isinstance(quant, dict):
        out["quantization"] = quantization(m, quant)
    elif llm.get("load_in_8bit") or llm.get("load_in_4bit"):  # from_pretrained's own flags, without a config
        out["type" if kind == "sft" else "parameters"] = "qlora" if lora else scheme
        out["quantization"] = {"bits": 8 if llm.get("load_in_8bit") else 4, "type": "nf4", "doubleQuant": False}
        if not lora:
            m.problem(m.line("model"), "model.llm: a quantized model without LoRA does not train")
    if kind == "dpo":
        out["dpo"] = {"beta": model.get("beta", 0.1), "lossType": model.get("loss_type", "sigmoid"),
                      "labelSmoothing": model.get("label_smoothing", 0.0)}
    elif kind == "orpo":
        out["orpo"] = {"beta": model.get("beta", 0.1)}
    elif kind == "reward":
        penalty = model.get("penalty_type", "log_barrier")
        out["reward"] = {"lossType": model.get("loss_type", "ranking"),
                         "penalty": {"L2": "l2"}.get(penalty, penalty), "penaltyWeight": model.get("penalty_weight", 0.01)}
        m.out.notes.append((m.line("model"), "reward: the reward token is kubetune's default (method.reward."
                                             "rewardToken); XTuner's reward_token_id is a token id of its tokenizer"))
    return out


def _eos_token(m: Mapper) -> Any:
    """The end-of-sequence token the training data's tokenizer is built with (XTuner's eos_token=)."""
    parts = _datasets(m)
    return as_dict(parts[0][0].get("tokenizer")).get("eos_token") if parts else None


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
    for key in ("name", "data_dir"):
        if inner.get(key) is not None:
            m.problem(line, f"dataset.{key} {inner[key]!r}: a configuration of the hub dataset "
                            f"(load_dataset({key}=...)) which kubetune does not select; point dataset.uri at its "
                            "files instead")
            return []
    if ds.get("is_reference"):
        m.problem(line, "dataset: is_reference=True is POLAR's reference-conditioned reward data (a reference answer "
                        "beside each pair); kubetune's reward models train on plain chosen/rejected pairs")
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
    keep = ds.get("max_dataset_length")  # XTuner shuffles, then keeps this many rows
    extra = {"maxSamples": keep} if isinstance(keep, int) else {}
    return [{"uri": u, "format": fmt, **extra} if fmt else {"uri": u, **extra} for u in uris]


# A dataset dict's settings that apply to the whole (concatenated) dataset in kubetune.
SHARED = (("max_length", "maxLength"), ("pack_to_max_length", "packToMaxLength"),
          ("shuffle_before_pack", "shuffleBeforePack"), ("use_varlen_attn", "varlenAttention"),
          ("max_response_length", "maxResponseLength"), ("max_packed_length", "maxPackedLength"),
          ("num_proc", "numProc"))


def _same_across(m: Mapper, parts: list[tuple[dict, int]]) -> None:
    """A ConcatDataset's parts each carry these; kubetune has one of each for the whole: they must agree."""
    first = parts[0][0]
    for part, at in parts[1:]:
        for key in [k for k, _ in SHARED] + ["template"]:
            mine, theirs = ((as_dict(p.get("template_map_fn")).get("template") if key == "template" else p.get(key))
                            for p in (part, first))
            if mine != theirs:
                m.problem(at, f"dataset.datasets: {key}={mine!r} differs from the first dataset's {theirs!r}; "
                              "kubetune applies one to the whole concatenation")


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
    factory = first.get("template_map_fn")
    if factory is not None and not isinstance(factory, dict):
        m.value(factory if isinstance(factory, Local) else Unknown(str(factory), line), "template_map_fn", line)
    template = as_dict(factory).get("template")
    template = template or m.get("prompt_template")
    if isinstance(template, Sym) and template.name in {t.value for t in PromptTemplate}:
        out["promptTemplate"] = template.name
    elif template is not None:
        m.problem(m.line("prompt_template"), f"prompt_template: {getattr(template, 'path', template)} is not one of "
                                             "XTuner's templates")
    for key, field_name in SHARED:
        if key in first and first[key] is not None:
            out[field_name] = m.value(first[key], key, line)
    _same_across(m, parts)
    llm_path = as_dict(as_dict(m.get("model")).get("llm")).get("pretrained_model_name_or_path")
    for part, at in parts:
        check_tokenizer(m, part.get("tokenizer"), llm_path, "dataset.tokenizer", at, _eos_token(m))
    if kind != "sft":
        out["packToMaxLength"] = first.get("use_varlen_attn", False) is True
        # XTuner's preference datasets render prompt and answers with the tokenizer's chat template
        # (preference_dataset.tokenize); its prompt_template serves the evaluation hook only.
        out["promptTemplate"] = "auto"
    return {k: v for k, v in out.items() if v != [] and v is not None}


OPTIMIZERS = {"AdamW": "AdamW", "Adam": "Adam", "SGD": "SGD", "AdamW8bit": "AdamW8bit",
              "PagedAdamW8bit": "PagedAdamW8bit"}


def _training(m: Mapper) -> dict[str, Any]:
    wrapper = as_dict(m.get("optim_wrapper"))
    optimizer = as_dict(wrapper.get("optimizer"))
    loader = as_dict(m.get("train_dataloader"))
    train_cfg = as_dict(m.get("train_cfg"))
    # XTuner counts iterations (micro-batches): max_iters, save_steps, evaluation_freq and the logger's interval.
    out: dict[str, Any] = {"batchSize": loader.get("batch_size", 1), "stepUnit": "iteration",
                           "accumulativeCounts": wrapper.get("accumulative_counts", 1),
                           "maxEpochs": train_cfg.get("max_epochs"), "maxSteps": train_cfg.get("max_iters")}
    out["optimizer"] = _optimizer(m, optimizer)
    clip = wrapper.get("clip_grad", "unset")
    out["maxNorm"] = clip.get("max_norm") if isinstance(clip, dict) else 0 if clip is None else None
    if isinstance(out["optimizer"].get("lr"), (int, float)):
        out |= schedule_fields(m, out["optimizer"]["lr"])
    else:  # the schedule's factors are relative to an lr the importer could not evaluate (refused at its line)
        read_all(m.get("param_scheduler"))
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
    randomness = as_dict(m.get("randomness"))
    out["seed"] = randomness.get("seed")
    out["deterministic"] = randomness.get("deterministic") or None
    _sampler(m, loader, out)
    scale = wrapper.get("loss_scale", "dynamic")
    if scale != "dynamic":
        m.problem(m.line("optim_wrapper"), f"optim_wrapper.loss_scale {scale!r}: kubetune's fp16 loss scale is "
                                           "dynamic (a static scale is not an option)")
    logger = as_dict(as_dict(m.get("default_hooks")).get("logger"))
    out["logEverySteps"] = logger.get("interval")
    if as_dict(m.get("model")).get("use_activation_checkpointing") is False:
        out["gradientCheckpointing"] = False
    out = {k: m.value(v, f"training.{k}", m.line("optim_wrapper")) for k, v in out.items() if v is not None}
    out["optimizer"] = {k: v for k, v in out["optimizer"].items() if v is not None}
    return {k: v for k, v in out.items() if v is not None}


SAMPLERS = ("DefaultSampler", "SequenceParallelSampler", "LengthGroupedSampler", "InternRepoSampler")


def _sampler(m: Mapper, loader: dict[str, Any], out: dict[str, Any]) -> None:
    line = m.line("train_dataloader")
    sampler = as_dict(loader.get("sampler"))
    kind = sampler.get("type")
    name = kind.name if isinstance(kind, Sym) else kind
    if name is not None and name not in SAMPLERS:
        m.problem(line, f"train_dataloader.sampler: {name} is not a sampler kubetune has ({', '.join(SAMPLERS)})")
    if sampler.get("shuffle") is False:
        out["shuffle"] = False
    if sampler.get("seed") is not None:
        m.note(line, f"train_dataloader.sampler seed={sampler['seed']}: kubetune's data order follows training.seed "
                     "(one seed for the run)")
    if sampler.get("per_device_batch_size") is not None:
        m.note(line, "LengthGroupedSampler per_device_batch_size: kubetune groups lengths by batchSize x data-parallel "
                     "ranks")
    batches = as_dict(loader.get("batch_sampler"))
    if batches:
        if batches.get("drop_last") is not True:
            m.problem(line, "train_dataloader.batch_sampler: drop_last must be True (kubetune drops a ragged last "
                            "batch)")
        out["batchSize"] = batches.get("batch_size", out["batchSize"])


def _optimizer(m: Mapper, optimizer: dict[str, Any]) -> dict[str, Any]:
    opt_type = optimizer.get("type")
    name = opt_type.name if isinstance(opt_type, Sym) else "AdamW"
    if name not in OPTIMIZERS:
        m.problem(m.line("optim_wrapper"), f"optimizer: {name} is not an optimizer kubetune trains with "
                                           f"({', '.join(OPTIMIZERS)})")
    out = {"type": OPTIMIZERS.get(name, "AdamW"), "lr": optimizer.get("lr"),
           "betas": list(optimizer.get("betas") or (0.9, 0.999)), "weightDecay": optimizer.get("weight_decay", 0),
           "eps": optimizer.get("eps")}
    if name == "SGD":  # kubetune's SGD takes its momentum from betas[0]
        out["betas"] = [optimizer.get("momentum", 0.0), 0.999]
        out["eps"] = None
        for key in ("nesterov", "dampening"):
            if optimizer.get(key):
                m.problem(m.line("optim_wrapper"), f"optimizer: SGD {key}={optimizer[key]!r} (kubetune's SGD "
                                                   "is plain momentum SGD)")
    return out


def _checkpoints(m: Mapper) -> dict[str, Any]:
    hooks = as_dict(m.get("default_hooks"))
    ckpt = as_dict(hooks.get("checkpoint"))
    out: dict[str, Any] = {}
    interval = ckpt.get("interval", -1)
    if ckpt.get("by_epoch", True):
        # XTuner's loop is one mmengine epoch long: a by-epoch CheckpointHook saves once, at the end (epoch_1.pth).
        out["everySteps"] = 0
        m.note(m.line("default_hooks"), "checkpoint by_epoch=True: XTuner saves once, at the end, as epoch_1.pth; "
                                        "kubetune saves there too, as iter_N (epoch_1.pth names it)")
    elif isinstance(interval, int) and interval > 0:
        out["everySteps"] = interval
    else:
        out["everySteps"] = 0  # mmengine's interval -1: no checkpoints by iterations, the last one at the end
    if ckpt.get("save_last", True) is False:
        m.note(m.line("default_hooks"), "checkpoint save_last=False: kubetune writes the run's last checkpoint "
                                        "all the same (the export converts it)")
    keep = ckpt.get("max_keep_ckpts", -1)  # mmengine keeps them all unless told
    if isinstance(keep, int):
        out["keep"] = keep if keep > 0 else -1
    if ckpt.get("save_optimizer") is False:
        out["saveOptimizer"] = False
    return out


def _template(m: Mapper) -> Any:
    parts = _datasets(m)
    first = parts[0][0] if parts else {}
    return as_dict(first.get("template_map_fn")).get("template") or m.get("prompt_template")


# XTuner's EvaluateChatHook samples with these unless generation_kwargs says otherwise (kubetune's default too).
_SAMPLING = {"do_sample": True, "temperature": 0.1, "top_p": 0.75, "top_k": 40}


def _generation(m: Mapper, kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("do_sample") is False:
        return {"greedy": True}
    changed = {k: v for k, v in kwargs.items() if k in _SAMPLING and v != _SAMPLING[k] or k not in _SAMPLING}
    if changed:
        m.problem(m.line("custom_hooks"), f"EvaluateChatHook generation_kwargs {changed}: kubetune's evaluation "
                                          "samples as XTuner's default (temperature 0.1, top-p 0.75, top-k 40) or "
                                          "greedily (do_sample=False)")
    return {}


def _evaluation(m: Mapper) -> dict[str, Any]:
    hooks = as_list(m.get("custom_hooks"))
    chat = next((h for h in hooks if isinstance(h, dict) and isinstance(h.get("type"), Sym)
                 and h["type"].name == "EvaluateChatHook"), None)
    if chat is None:
        return {}
    out = {"everySteps": chat.get("every_n_iters"), "inputs": list(chat.get("evaluation_inputs") or [])}
    line = m.line("custom_hooks")
    llm_path = as_dict(as_dict(m.get("model")).get("llm")).get("pretrained_model_name_or_path")
    check_tokenizer(m, chat.get("tokenizer"), llm_path, "EvaluateChatHook.tokenizer", line, _eos_token(m))
    read_all(chat.get("image_processor"))
    template, trained = chat.get("prompt_template"), _template(m)
    if template is not None and trained is not None and template != trained:
        m.problem(line, f"EvaluateChatHook prompt_template {getattr(template, 'name', template)}: not the training "
                        f"data's ({getattr(trained, 'name', trained)}); kubetune evaluates with the training template")
    if chat.get("evaluation_images"):
        m.note(m.line("custom_hooks"), "evaluation_images: kubetune's evaluation prompts are text only (the "
                                       "LLaVA model answers them without an image)")
    if chat.get("max_new_tokens"):
        out["maxNewTokens"] = chat["max_new_tokens"]
    words = list(chat.get("stop_words") or []) + ([chat["stop_word"]] if chat.get("stop_word") else [])
    if words:
        out["stopWords"] = words
    out |= _generation(m, as_dict(chat.get("generation_kwargs")))
    system = chat.get("system")
    if isinstance(system, Sym) and system.path.split(".")[-2:-1] == ["SYSTEM_TEMPLATE"]:
        out["systemTemplate"] = system.name
    elif isinstance(system, str) and system:
        out["system"] = system
    elif system not in (None, ""):
        m.value(system, "EvaluateChatHook.system", m.line("custom_hooks"))
    return {k: v for k, v in out.items() if v is not None}
