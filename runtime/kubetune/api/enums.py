"""Closed sets of names. The strings are XTuner's, so configs and habits carry over."""

from enum import StrEnum


class MethodType(StrEnum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"
    DPO = "dpo"
    ORPO = "orpo"
    REWARD = "reward"


PREFERENCE_METHODS = ("dpo", "orpo", "reward")


class ParameterScheme(StrEnum):
    """Which weights a preference method trains (SFT methods name their scheme in `type` itself)."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class PromptTemplate(StrEnum):
    """XTuner's 27 PROMPT_TEMPLATE names, plus `auto` for the tokenizer's own chat_template."""

    AUTO = "auto"
    DEFAULT = "default"
    ZEPHYR = "zephyr"
    INTERNLM_CHAT = "internlm_chat"
    INTERNLM2_CHAT = "internlm2_chat"
    MOSS_SFT = "moss_sft"
    LLAMA2_CHAT = "llama2_chat"
    CODE_LLAMA_CHAT = "code_llama_chat"
    CHATGLM2 = "chatglm2"
    CHATGLM3 = "chatglm3"
    QWEN_CHAT = "qwen_chat"
    BAICHUAN_CHAT = "baichuan_chat"
    BAICHUAN2_CHAT = "baichuan2_chat"
    WIZARDLM = "wizardlm"
    WIZARDCODER = "wizardcoder"
    VICUNA = "vicuna"
    DEEPSEEK_CODER = "deepseek_coder"
    DEEPSEEKCODER = "deepseekcoder"
    DEEPSEEK_MOE = "deepseek_moe"
    DEEPSEEK_V2 = "deepseek_v2"
    MISTRAL = "mistral"
    MIXTRAL = "mixtral"
    MINICPM = "minicpm"
    MINICPM3 = "minicpm3"
    GEMMA = "gemma"
    COHERE_CHAT = "cohere_chat"
    LLAMA3_CHAT = "llama3_chat"
    PHI3_CHAT = "phi3_chat"


class SystemTemplate(StrEnum):
    """XTuner's SYSTEM_TEMPLATE names (the spelling `arxiv_gentile` is XTuner's)."""

    MOSS_SFT = "moss_sft"
    ALPACA = "alpaca"
    ARXIV_GENTILE = "arxiv_gentile"
    COLORIST = "colorist"
    CODER = "coder"
    LAWYER = "lawyer"
    MEDICAL = "medical"
    SQL = "sql"


class DatasetFormat(StrEnum):
    """Row layouts: `xtuner` (conversation), `openai` (messages) and every XTuner dataset map fn."""

    XTUNER = "xtuner"
    OPENAI = "openai"
    DEFAULT = "default"
    ALPACA = "alpaca"
    ALPACA_ZH = "alpaca_zh"
    ARXIV = "arxiv"
    CODE_ALPACA = "code_alpaca"
    COLORS = "colors"
    CRIME_KG_ASSISTANT = "crime_kg_assistant"
    # XTuner's own spellings (`crime_kg_assitant_map_fn`, and `crime_kg_assitan` in its DATASET_FORMAT_MAPPING): the
    # same rows, so its users' names work unchanged.
    CRIME_KG_ASSITANT = "crime_kg_assitant"
    CRIME_KG_ASSITAN = "crime_kg_assitan"
    LAW_REFERENCE = "law_reference"
    MEDICAL = "medical"
    SQL = "sql"
    TINY_CODES = "tiny_codes"
    OPENORCA = "openorca"
    STACK_EXCHANGE = "stack_exchange"
    OASST1 = "oasst1"
    WIZARDLM = "wizardlm"
    MSAGENT_REACT = "msagent_react"
    PRETRAIN = "pretrain"
    # Image + conversation rows (LLaVA; needs model.vision). image_only: every question is the image alone (XTuner's
    # llava_image_only_map_fn: captioning-style pretraining).
    LLAVA = "llava"
    LLAVA_IMAGE_ONLY = "llava_image_only"
    # Preference pairs (methods dpo, orpo, reward).
    PREFERENCE = "preference"
    ORPO_DPO_MIX_40K = "orpo_dpo_mix_40k"
    INTEL_ORCA_DPO = "intel_orca_dpo"


PREFERENCE_FORMATS = ("preference", "orpo_dpo_mix_40k", "intel_orca_dpo")
LLAVA_FORMATS = ("llava", "llava_image_only")


class FileType(StrEnum):
    AUTO = "auto"
    JSON = "json"
    JSONL = "jsonl"
    PARQUET = "parquet"
    ARROW = "arrow"


class DeepSpeedPreset(StrEnum):
    NONE = "none"
    ZERO1 = "zero1"
    ZERO2 = "zero2"
    ZERO2_OFFLOAD = "zero2_offload"
    ZERO3 = "zero3"
    ZERO3_OFFLOAD = "zero3_offload"


class Precision(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class DType(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class OptimizerType(StrEnum):
    ADAMW = "AdamW"
    ADAM = "Adam"
    SGD = "SGD"
    ADAMW_8BIT = "AdamW8bit"
    PAGED_ADAMW_8BIT = "PagedAdamW8bit"


class LrSchedule(StrEnum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class StepUnit(StrEnum):
    OPTIMIZER = "optimizer"
    ITERATION = "iteration"
