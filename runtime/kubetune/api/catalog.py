"""Predefined configs: XTuner 0.2.0's own (each of its config files read by the importer, api/xtuner/table.py), then
kubetune's own recipes for models XTuner has no config for, named like XTuner's
(`<model>_<method>_<dataset>_e<epochs>`) and generated from small tables.

Each entry is a complete FineTuneJob manifest. The tables hold only what differs between families and datasets;
everything else is the API's defaults, so a predefined config and a hand-written one mean the same thing. An XTuner
name kubetune cannot run (docs/configs.md lists each with its reason) is listed and refused with that reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from .base import API_VERSION
from .enums import DeepSpeedPreset
from .xtuner.table import table as xtuner_table

INTERNLM2_TARGETS = ["wqkv", "wo", "w1", "w2", "w3"]
MIXTRAL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"]
ALL_LINEAR: list[str] = []


@dataclass(frozen=True)
class Family:
    names_and_ids: tuple[tuple[str, str], ...]
    prompt_template: str
    targets: list[str] = field(default_factory=list)
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Dataset:
    uri: str
    format: str
    epochs: int = 3
    system_template: str | None = None
    concat: tuple[dict[str, Any], ...] = ()
    inputs: tuple[str, ...] = ("请给我介绍五个上海的景点", "Please tell me five scenic spots in Shanghai")


FAMILIES: dict[str, Family] = {
    "internlm2": Family((
        ("internlm2_1_8b", "internlm/internlm2-1_8b"),
        ("internlm2_chat_1_8b", "internlm/internlm2-chat-1_8b"),
        ("internlm2_7b", "internlm/internlm2-7b"),
        ("internlm2_chat_7b", "internlm/internlm2-chat-7b"),
        ("internlm2_20b", "internlm/internlm2-20b"),
        ("internlm2_chat_20b", "internlm/internlm2-chat-20b"),
    ), "internlm2_chat", INTERNLM2_TARGETS, trust_remote_code=True),
    "internlm2_5": Family((
        ("internlm2_5_chat_7b", "internlm/internlm2_5-7b-chat"),
        ("internlm2_5_chat_20b", "internlm/internlm2_5-20b-chat"),
    ), "internlm2_chat", INTERNLM2_TARGETS, trust_remote_code=True),
    "llama2": Family((
        ("llama2_7b", "meta-llama/Llama-2-7b-hf"),
        ("llama2_70b", "meta-llama/Llama-2-70b-hf"),
    ), "default"),
    "llama2_chat": Family((
        ("llama2_7b_chat", "meta-llama/Llama-2-7b-chat-hf"),
    ), "llama2_chat"),
    "llama3": Family((
        ("llama3_8b_instruct", "meta-llama/Meta-Llama-3-8B-Instruct"),
        ("llama3_70b_instruct", "meta-llama/Meta-Llama-3-70B-Instruct"),
    ), "llama3_chat"),
    "qwen1_5": Family((
        ("qwen1_5_0_5b_chat", "Qwen/Qwen1.5-0.5B-Chat"),
        ("qwen1_5_1_8b_chat", "Qwen/Qwen1.5-1.8B-Chat"),
        ("qwen1_5_4b_chat", "Qwen/Qwen1.5-4B-Chat"),
        ("qwen1_5_7b_chat", "Qwen/Qwen1.5-7B-Chat"),
        ("qwen1_5_14b_chat", "Qwen/Qwen1.5-14B-Chat"),
        ("qwen1_5_72b_chat", "Qwen/Qwen1.5-72B-Chat"),
        ("qwen1_5_110b_chat", "Qwen/Qwen1.5-110B-Chat"),
    ), "qwen_chat"),
    "qwen2": Family((
        ("qwen2_0_5b_instruct", "Qwen/Qwen2-0.5B-Instruct"),
        ("qwen2_1_5b_instruct", "Qwen/Qwen2-1.5B-Instruct"),
        ("qwen2_7b_instruct", "Qwen/Qwen2-7B-Instruct"),
        ("qwen2_72b_instruct", "Qwen/Qwen2-72B-Instruct"),
    ), "qwen_chat"),
    "qwen2_5": Family((
        ("qwen2_5_0_5b_instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
        ("qwen2_5_1_5b_instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
        ("qwen2_5_3b_instruct", "Qwen/Qwen2.5-3B-Instruct"),
        ("qwen2_5_7b_instruct", "Qwen/Qwen2.5-7B-Instruct"),
        ("qwen2_5_14b_instruct", "Qwen/Qwen2.5-14B-Instruct"),
        ("qwen2_5_32b_instruct", "Qwen/Qwen2.5-32B-Instruct"),
        ("qwen2_5_72b_instruct", "Qwen/Qwen2.5-72B-Instruct"),
    ), "qwen_chat"),
    "mistral": Family((("mistral_7b", "mistralai/Mistral-7B-v0.1"),), "mistral"),
    "mixtral": Family((("mixtral_8x7b_instruct", "mistralai/Mixtral-8x7B-Instruct-v0.1"),), "mixtral",
                      MIXTRAL_TARGETS),
    "gemma": Family((("gemma_2b", "google/gemma-2b"), ("gemma_7b", "google/gemma-7b")), "default"),
    "gemma_it": Family((("gemma_2b_it", "google/gemma-2b-it"), ("gemma_7b_it", "google/gemma-7b-it")), "gemma"),
    "chatglm3": Family((
        ("chatglm3_6b", "THUDM/chatglm3-6b"),
        ("chatglm3_6b_base", "THUDM/chatglm3-6b-base"),
    ), "chatglm3", trust_remote_code=True),
    "baichuan2": Family((
        ("baichuan2_7b_base", "baichuan-inc/Baichuan2-7B-Base"),
        ("baichuan2_13b_base", "baichuan-inc/Baichuan2-13B-Base"),
    ), "default", trust_remote_code=True),
    "baichuan2_chat": Family((
        ("baichuan2_7b_chat", "baichuan-inc/Baichuan2-7B-Chat"),
        ("baichuan2_13b_chat", "baichuan-inc/Baichuan2-13B-Chat"),
    ), "baichuan2_chat", trust_remote_code=True),
    "deepseek_coder": Family((("deepseek_coder_6_7b_instruct", "deepseek-ai/deepseek-coder-6.7b-instruct"),),
                             "deepseek_coder"),
    "deepseek_moe": Family((("deepseek_moe_16b_chat", "deepseek-ai/deepseek-moe-16b-chat"),), "deepseek_moe",
                           trust_remote_code=True),
    # transformers has DeepSeek-V2 itself (the hub repo's own code predates transformers 5 and does not load there).
    "deepseek_v2": Family((("deepseek_v2_lite_chat", "deepseek-ai/DeepSeek-V2-Lite-Chat"),), "deepseek_v2"),
    "yi": Family((("yi_6b", "01-ai/Yi-6B"), ("yi_34b", "01-ai/Yi-34B")), "default"),
    "phi3": Family((
        ("phi3_mini_4k_instruct", "microsoft/Phi-3-mini-4k-instruct"),
        ("phi3_mini_128k_instruct", "microsoft/Phi-3-mini-128k-instruct"),
    ), "phi3_chat"),
}

CODE_INPUTS = ("写一个Python函数，将十六进制颜色代码（如#0066ee）转换为对应的红、绿、蓝（RGB）三个颜色分量值，并以元组的形式返回。",
               "Write a Python function that takes a hexadecimal color code (e.g., #0066ee) as input and converts "
               "it into the corresponding red, green, and blue (RGB) color component values.")

DATASETS: dict[str, Dataset] = {
    "alpaca": Dataset("hf://tatsu-lab/alpaca", "alpaca", system_template="alpaca"),
    "alpaca_zh": Dataset("hf://silk-road/alpaca-data-gpt4-chinese", "alpaca_zh", system_template="alpaca"),
    "alpaca_enzh": Dataset("hf://tatsu-lab/alpaca", "alpaca", system_template="alpaca", concat=(
        {"uri": "hf://silk-road/alpaca-data-gpt4-chinese", "format": "alpaca_zh"},)),
    "oasst1": Dataset("hf://timdettmers/openassistant-guanaco", "oasst1"),
    "code_alpaca": Dataset("hf://HuggingFaceH4/CodeAlpaca_20K", "code_alpaca", system_template="coder",
                           inputs=CODE_INPUTS),
    "arxiv_gentitle": Dataset("file:///data/arxiv_postprocess_csAIcsCLcsCV_20200101.json", "arxiv",
                              system_template="arxiv_gentile", inputs=(
                                  "We present InternLM, a multilingual foundational language model with 104B "
                                  "parameters. InternLM is pre-trained on a large corpora with 1.6T tokens with a "
                                  "multi-phase progressive process, and then fine-tuned to align with human "
                                  "preferences.",)),
    "colorist": Dataset("hf://burkelibbey/colors", "colors", epochs=5, system_template="colorist",
                        inputs=("请给我一个像天空一样清澈透明的蓝色。", "Please give me a clear blue like the sky.")),
    "lawyer": Dataset("file:///data/CrimeKgAssitant_52k.json", "crime_kg_assistant", system_template="lawyer",
                      concat=({"uri": "file:///data/law_reference_92k.json", "format": "law_reference"},),
                      inputs=("请问离婚需要准备什么材料？", "销售鳄鱼皮包违法吗？")),
    "medical": Dataset("hf://shibing624/medical", "medical", epochs=1, system_template="medical",
                       inputs=("我有家族遗传性的过敏，请问可以可以献血吗？", "我爷爷有高血压，请问他可以喝咖啡吗？")),
    "sql": Dataset("hf://b-mc2/sql-create-context", "sql", system_template="sql", inputs=(
        "CREATE TABLE station (name VARCHAR, lat VARCHAR, city VARCHAR)\nFind the name, latitude, and city of "
        "stations with latitude above 50.",)),
    "tiny_codes": Dataset("hf://nampdn-ai/tiny-codes", "tiny_codes", epochs=1, system_template="coder",
                          inputs=CODE_INPUTS),
    "open_platypus": Dataset("hf://garage-bAInd/Open-Platypus", "alpaca", system_template="alpaca"),
    "openorca": Dataset("hf://Open-Orca/OpenOrca", "openorca", epochs=1),
    "wizardlm": Dataset("hf://WizardLMTeam/WizardLM_evol_instruct_V2_196k", "wizardlm", epochs=1),
}

# Per-method settings where XTuner's configs differ: full fine-tuning uses a 10x smaller learning rate and
# ZeRO-2 across 8 GPUs; adapters fit on one GPU.
METHODS: dict[str, dict[str, Any]] = {
    "full": {"lr": 2e-5, "deepspeed": "zero2", "gpus": 8},
    "lora": {"lr": 2e-4, "deepspeed": "none", "gpus": 1},
    "qlora": {"lr": 2e-4, "deepspeed": "none", "gpus": 1},
}


def _job(name: str, model: dict[str, Any], method: dict[str, Any], dataset: dict[str, Any], *, batch: int,
         accum: int, epochs: int, lr: float, deepspeed: str, gpus: int,
         evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest every predefined config shares; the callers differ in model, method and data."""
    spec: dict[str, Any] = {
        "model": model,
        "method": method,
        "dataset": dataset,
        "training": {
            "batchSize": batch, "accumulativeCounts": accum, "maxEpochs": epochs,
            "optimizer": {"type": "AdamW", "lr": lr, "betas": [0.9, 0.999], "weightDecay": 0},
            "maxNorm": 1, "warmupRatio": 0.03, "deepspeed": deepspeed,
        },
        "checkpoints": {"everySteps": 500, "keep": 2},
    }
    if evaluation is not None:
        spec["evaluation"] = evaluation
    spec["resources"] = {"nodes": 1, "gpusPerNode": gpus}
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": name.replace("_", "-")[:63].rstrip("-"),
                     "labels": {"kubetune.io/config": name[:63].rstrip("_")}},
        "spec": spec,
    }


def _manifest(name: str, family: Family, hub_id: str, method: str, ds_name: str, ds: Dataset) -> dict[str, Any]:
    settings = METHODS[method]
    method_spec: dict[str, Any] = {"type": method}
    if method != "full":
        method_spec["lora"] = {"r": 64, "alpha": 16, "dropout": 0.1, "targetModules": list(family.targets)}
    if method == "qlora":
        method_spec["quantization"] = {"bits": 4, "type": "nf4", "doubleQuant": True}
    # XTuner's SYSTEM is its EvaluateChatHook's: the training rows carry only what its map fn puts in them (the
    # dataset formats do the same), never the alpaca prompt on every sample.
    # A model XTuner has configs for gets the template XTuner gives it (base models included: internlm2 base trains
    # with `default`, llama2 base with `llama2_chat` there).
    template = _xtuner_templates().get(f"hf://{hub_id}", family.prompt_template)
    dataset: dict[str, Any] = {"uri": ds.uri, "format": ds.format, "promptTemplate": template}
    evaluation: dict[str, Any] = {"everySteps": 500, "inputs": list(ds.inputs)}
    if ds.system_template:
        evaluation["systemTemplate"] = ds.system_template
    dataset.update({"maxLength": 2048, "packToMaxLength": True, "shuffleBeforePack": True})
    if ds.concat:
        dataset["concat"] = [dict(c) for c in ds.concat]
    return _job(name, {"uri": f"hf://{hub_id}", "trustRemoteCode": family.trust_remote_code}, method_spec, dataset,
                batch=1, accum=16, epochs=ds.epochs, lr=settings["lr"], deepspeed=settings["deepspeed"],
                gpus=settings["gpus"], evaluation=evaluation)


@functools.cache
def _xtuner_templates() -> dict[str, str]:
    """Model URI → the prompt template most of XTuner's text configs for that model use."""
    from collections import Counter

    seen: dict[str, Counter[str]] = {}
    for entry in xtuner_table().values():
        spec = entry.get("manifest", {}).get("spec", {})
        template = spec.get("dataset", {}).get("promptTemplate")
        if template and "vision" not in spec["model"]:
            seen.setdefault(spec["model"]["uri"], Counter())[template] += 1
    return {uri: counts.most_common(1)[0][0] for uri, counts in seen.items()}


# Preference training, as XTuner's dpo/orpo/reward configs: (name, family, hub id, method, scheme, lr, dataset uri,
# format, epochs, gpus, deepspeed).
PREFERENCE: tuple[tuple[Any, ...], ...] = (
    ("internlm2_chat_1_8b_dpo_full", "internlm2", "internlm/internlm2-chat-1_8b", "dpo", "full", 5e-7,
     "hf://mlabonne/orpo-dpo-mix-40k", "orpo_dpo_mix_40k", 3, 8, "zero2"),
    ("internlm2_chat_1_8b_dpo_qlora", "internlm2", "internlm/internlm2-chat-1_8b", "dpo", "qlora", 5e-6,
     "hf://mlabonne/orpo-dpo-mix-40k", "orpo_dpo_mix_40k", 3, 1, "none"),
    ("internlm2_chat_1_8b_orpo_full", "internlm2", "internlm/internlm2-chat-1_8b", "orpo", "full", 5e-6,
     "hf://mlabonne/orpo-dpo-mix-40k", "orpo_dpo_mix_40k", 3, 8, "zero2"),
    ("internlm2_chat_1_8b_reward_full_ultrafeedback", "internlm2", "internlm/internlm2-chat-1_8b", "reward", "full",
     2e-5, "hf://argilla/ultrafeedback-binarized-preferences-cleaned", "preference", 1, 8, "zero2"),
    ("llama3_8b_instruct_dpo_qlora_orca", "llama3", "meta-llama/Meta-Llama-3-8B-Instruct", "dpo", "qlora", 5e-6,
     "hf://Intel/orca_dpo_pairs", "intel_orca_dpo", 1, 1, "none"),
)


def _preference_manifest(name: str, family: Family, hub_id: str, method: str, scheme: str, lr: float, uri: str,
                         fmt: str, epochs: int, gpus: int, deepspeed: str) -> dict[str, Any]:
    method_spec: dict[str, Any] = {"type": method, "parameters": scheme}
    if scheme != "full":
        method_spec["lora"] = {"r": 64, "alpha": 16, "dropout": 0.1, "targetModules": list(family.targets)}
    if scheme == "qlora":
        method_spec["quantization"] = {"bits": 4, "type": "nf4", "doubleQuant": True}
    method_spec[method] = {"dpo": {"beta": 0.1, "lossType": "sigmoid", "labelSmoothing": 0.0}, "orpo": {"beta": 0.1},
                           "reward": {"lossType": "ranking", "penalty": "log_barrier", "penaltyWeight": 0.01}}[method]
    # Pairs are packed whole, up to 2 x maxLength per sequence.
    dataset = {"uri": uri, "format": fmt, "promptTemplate": family.prompt_template, "maxLength": 2048,
               "maxResponseLength": 1024, "packToMaxLength": True, "shuffleBeforePack": True}
    return _job(name, {"uri": f"hf://{hub_id}", "trustRemoteCode": family.trust_remote_code}, method_spec, dataset,
                batch=1, accum=16, epochs=epochs, lr=lr, deepspeed=deepspeed, gpus=gpus)


# LLaVA, as XTuner's llava configs: (LLM name, family, hub id), each with a pretrain stage (projector only, lr 1e-3,
# 32 per GPU, no square padding) and a QLoRA finetune (LLM QLoRA r=512/alpha=256, encoder LoRA r=64/alpha=16, lr 2e-4,
# 16 per GPU, pad-to-square, modality-length grouping, projector from the pretrain stage's last checkpoint).
LLAVA_LLMS = (
    ("internlm2_chat_1_8b", "internlm2", "internlm/internlm2-chat-1_8b"),
    ("internlm2_chat_7b", "internlm2", "internlm/internlm2-chat-7b"),
    ("internlm2_chat_20b", "internlm2", "internlm/internlm2-chat-20b"),
    ("llama3_8b_instruct", "llama3", "meta-llama/Meta-Llama-3-8B-Instruct"),
)
CLIP_L_336 = ("clip_vit_large_p14_336", "hf://openai/clip-vit-large-patch14-336")
LLAVA_DATA = "pvc://llava-data"  # LLaVA-Pretrain and llava_v1_5_mix665k, images unpacked beside them
PRETRAIN_ITERS = 2181  # 558k samples / (32 x 8 GPUs): the pretrain stage's last checkpoint


def _llava_manifest(name: str, family: Family, hub_id: str, stage: str, pretrain_name: str) -> dict[str, Any]:
    encoder_name, encoder_uri = CLIP_L_336
    vision: dict[str, Any] = {"encoder": encoder_uri, "selectLayer": -2, "projectorDepth": 2}
    # 2048 minus the 576 image tokens of a 336 px image in 14 px patches.
    dataset: dict[str, Any] = {"format": "llava", "promptTemplate": family.prompt_template, "maxLength": 1472,
                               "packToMaxLength": False}
    if stage == "pretrain":
        method: dict[str, Any] = {"type": "full", "vision": {"stage": "pretrain"}}
        dataset.update(uri=f"{LLAVA_DATA}/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                       imageFolder=f"{LLAVA_DATA}/LLaVA-Pretrain/images")
        batch, lr = 32, 1e-3
    else:
        method = {"type": "qlora", "lora": {"r": 512, "alpha": 256, "dropout": 0.05, "targetModules": []},
                  "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True},
                  "vision": {"stage": "finetune", "encoderLora": {"r": 64, "alpha": 16, "dropout": 0.05}}}
        vision["projector"] = f"pvc://llava-work/{pretrain_name}/iter_{PRETRAIN_ITERS}"
        dataset.update(uri=f"{LLAVA_DATA}/LLaVA-Instruct-150K/llava_v1_5_mix665k.json",
                       imageFolder=f"{LLAVA_DATA}/llava_images", padImageToSquare=True, groupByModalityLength=True)
        batch, lr = 16, 2e-4
    model = {"uri": f"hf://{hub_id}", "trustRemoteCode": family.trust_remote_code, "vision": vision}
    return _job(name, model, method, dataset, batch=batch, accum=1, epochs=1, lr=lr, deepspeed="zero2", gpus=8)


def _llava_entries() -> dict[str, dict[str, Any]]:
    entries = {}
    encoder_name = CLIP_L_336[0]
    for llm_name, family, hub_id in LLAVA_LLMS:
        pretrain = f"llava_{llm_name}_{encoder_name}_e1_gpu8_pretrain"
        finetune = f"llava_{llm_name}_qlora_{encoder_name}_lora_e1_gpu8_finetune"
        entries[pretrain] = _llava_manifest(pretrain, FAMILIES[family], hub_id, "pretrain", pretrain)
        entries[finetune] = _llava_manifest(finetune, FAMILIES[family], hub_id, "finetune", pretrain)
    return entries


@functools.cache
def _own() -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for family in FAMILIES.values():
        for model_name, hub_id in family.names_and_ids:
            for method in METHODS:
                for ds_name, ds in DATASETS.items():
                    name = f"{model_name}_{method}_{ds_name}_e{ds.epochs}"
                    entries[name] = _manifest(name, family, hub_id, method, ds_name, ds)
    for name, family_name, *rest in PREFERENCE:
        entries[name] = _preference_manifest(name, FAMILIES[family_name], *rest)
    entries.update(_llava_entries())
    return {n: m for n, m in sorted(entries.items()) if n not in xtuner_table()}


@functools.cache
def catalog() -> dict[str, dict[str, Any]]:
    """Every predefined config kubetune runs, by name: XTuner's first, then kubetune's own, each in name order."""
    xtuner = {n: e["manifest"] for n, e in xtuner_table().items() if "manifest" in e}
    return xtuner | _own()


# XTuner's DeepSpeed files by their list-cfg names; `copy-cfg` writes the preset's JSON, `--deepspeed` takes either.
DEEPSPEED_NAMES = tuple(f"deepspeed_{p.value}" for p in DeepSpeedPreset if p is not DeepSpeedPreset.NONE)


def names(pattern: str | None = None) -> list[str]:
    """Config names containing `pattern` (case-insensitive), like XTuner's list-cfg: XTuner's names first (those
    kubetune refuses too), then kubetune's own."""
    needle = (pattern or "").lower()
    xtuners = sorted([*xtuner_table(), *DEEPSPEED_NAMES])  # XTuner lists its DeepSpeed JSON files among them
    return [n for n in [*xtuners, *_own()] if needle in n.lower()]


def notes(name: str) -> list[str]:
    """Where a config imported from XTuner's file differs from it on purpose (empty for kubetune's own)."""
    return list(xtuner_table().get(name, {}).get("notes", []))


def get(name: str) -> dict[str, Any]:
    """A deep copy of one predefined manifest; KeyError with the reason (an XTuner config kubetune refuses) or with
    close matches (unknown)."""
    import copy
    import difflib

    entry = xtuner_table().get(name, {})
    if "refused" in entry:
        raise KeyError(f"XTuner's config {name} ({entry['path']}) is not one kubetune runs: "
                       f"{'; '.join(entry['refused'])} (docs/configs.md)")
    try:
        return copy.deepcopy(catalog()[name])
    except KeyError:
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `kubetune list-cfg`)"
        raise KeyError(f"unknown predefined config {name!r}{hint}") from None
