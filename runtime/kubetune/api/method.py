"""The `method` of a FineTuneJob: which weights train (full, LoRA, QLoRA) and the objective (supervised, or DPO, ORPO
and reward models on preference pairs)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .base import KubeModel, Rule
from .enums import PREFERENCE_METHODS, DType, MethodType, ParameterScheme


class LoraSpec(KubeModel):
    """LoRA adapter shape (peft LoraConfig)."""

    r: int = Field(default=64, ge=1, le=4096)
    """Rank of the update matrices."""
    alpha: float = Field(default=16, gt=0)
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(default=0.1, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(default_factory=list,
                                                                                      max_length=64)
    """Module names to adapt; empty means every linear layer except the output head."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases to train."""


class QuantizationSpec(KubeModel):
    """bitsandbytes quantization of the frozen base weights (QLoRA)."""

    bits: Literal[4, 8] = 4
    """4-bit (NF4/FP4) or 8-bit (LLM.int8) base weights."""
    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves about 0.4 bits per parameter)."""
    compute_dtype: DType = DType.AUTO
    """Dtype of the dequantized matmuls; `auto` follows the training precision."""


class DpoSpec(KubeModel):
    """Direct preference optimisation (XTuner's DPO model)."""

    beta: float = Field(default=0.1, gt=0, le=100)
    """Strength of the KL penalty towards the reference model (larger: stay closer)."""
    loss_type: Literal["sigmoid", "robust", "hinge", "ipo", "kto_pair", "sppo_hard", "nca_pair"] = "sigmoid"
    """DPO variant: sigmoid (the paper, with labelSmoothing: cDPO), robust, hinge, ipo (per-token averages),
    kto_pair, sppo_hard or nca_pair."""
    # An inclusive bound: the apiserver compares whole-number values against int(maximum), so an exclusive 0.5 would
    # refuse `labelSmoothing: 0`.
    label_smoothing: float = Field(default=0.0, ge=0, le=0.49)
    """Assumed fraction of flipped preference labels (sigmoid and robust)."""


class OrpoSpec(KubeModel):
    """Odds-ratio preference optimisation: SFT on the chosen response plus a log-odds-ratio term, no reference."""

    beta: float = Field(default=0.1, gt=0, le=100)
    """Weight of the odds-ratio term against the chosen response's NLL."""


class RewardSpec(KubeModel):
    """A reward model: a scalar head on the hidden state at a reward token appended to prompt + response."""

    loss_type: Literal["ranking", "focal"] = "ranking"
    """ranking (Bradley-Terry) or focal (InternLM2's focal ranking loss, down-weighting easy pairs)."""
    penalty: Literal["log_barrier", "l2", "none"] = "log_barrier"
    """Keeps scores bounded: a log barrier at +-5 (InternLM2) or an L2 term."""
    penalty_weight: float = Field(default=0.01, ge=0, le=10)
    """Weight of the penalty."""
    reward_token: str | None = Field(default=None, min_length=1, max_length=64)
    """Token appended to every sequence whose hidden state is scored; must be one token of the vocabulary. Default:
    the tokenizer's EOS token."""


class VisionMethodSpec(KubeModel):
    """Which LLaVA parts train: stage pretrain trains the projector alone; stage finetune trains the projector and the
    LLM (as `method.type` says: full, lora or qlora), plus LoRA on the encoder when `encoderLora` is set."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("encoderLora", "stage"), "encoderLora is only valid with stage finetune (pretrain trains the projector "
             "alone)", "!has(self.encoderLora) || !has(self.stage) || self.stage == 'finetune'",
             lambda lora, stage: lora is None or stage == "finetune"),
    )

    stage: Literal["pretrain", "finetune"] = "finetune"
    """pretrain: LLM and encoder frozen, projector trained (method type full, nothing else changes); finetune:
    projector + LLM (+ encoder LoRA)."""
    encoder_lora: LoraSpec | None = None
    """LoRA adapters on the image encoder (stage finetune); unset: the encoder stays frozen."""


class MethodSpec(KubeModel):
    """Which parameters train, how the base is stored, and the objective."""

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(("quantization", "type", "parameters"),
             "quantization is only valid with method type qlora (or parameters qlora)",
             "!has(self.quantization) || (has(self.type) && (self.type == 'qlora' || "
             "(self.type in ['dpo', 'orpo', 'reward'] && has(self.parameters) && self.parameters == 'qlora')))",
             lambda q, t, p: q is None or t == "qlora" or (t in PREFERENCE_METHODS and p == "qlora")),
        Rule(("lora", "type", "parameters"),
             "lora settings are only valid with method type lora or qlora (or parameters lora/qlora): for full "
             "fine-tuning remove method.lora",
             "!has(self.lora) || !has(self.type) || (self.type != 'full' && !(self.type in ['dpo', 'orpo', 'reward']"
             " && has(self.parameters) && self.parameters == 'full'))",
             lambda lora, t, p: lora is None or (t != "full" and not (t in PREFERENCE_METHODS and p == "full"))),
        Rule(("parameters", "type"), "parameters is only valid with method type dpo, orpo or reward",
             "!has(self.parameters) || (has(self.type) && self.type in ['dpo', 'orpo', 'reward'])",
             lambda p, t: p is None or t in PREFERENCE_METHODS),
        Rule(("dpo", "type"), "dpo settings are only valid with method type dpo",
             "!has(self.dpo) || (has(self.type) && self.type == 'dpo')", lambda d, t: d is None or t == "dpo"),
        Rule(("orpo", "type"), "orpo settings are only valid with method type orpo",
             "!has(self.orpo) || (has(self.type) && self.type == 'orpo')", lambda o, t: o is None or t == "orpo"),
        Rule(("reward", "type"), "reward settings are only valid with method type reward",
             "!has(self.reward) || (has(self.type) && self.type == 'reward')",
             lambda r, t: r is None or t == "reward"),
        Rule(("vision.stage", "type"), "method.vision needs method type full, lora or qlora; stage pretrain needs type "
             "full (only the projector trains, over the unquantized frozen LLM)",
             "!has(self.vision) || (has(self.type) && (self.type in ['full', 'lora', 'qlora']) && "
             "(!has(self.vision.stage) || self.vision.stage == 'finetune' || self.type == 'full'))",
             lambda stage, t: stage is None or (t in ("full", "lora", "qlora")
                                                and (stage == "finetune" or t == "full"))),
    )

    type: MethodType = MethodType.LORA
    """`full` trains every weight; `lora` trains adapters; `qlora` trains adapters over a 4/8-bit base (all three
    supervised). `dpo`, `orpo` and `reward` train on preference pairs, with `parameters` as the scheme."""
    parameters: ParameterScheme | None = None
    """For dpo, orpo and reward: which weights train (full, lora or qlora). Default: lora."""
    lora: LoraSpec | None = None
    """Adapter settings for lora and qlora (defaults apply when unset)."""
    quantization: QuantizationSpec | None = None
    """Base-weight quantization for qlora (4-bit NF4 with double quantization when unset)."""
    dpo: DpoSpec | None = None
    """DPO settings (method type dpo; defaults apply when unset)."""
    orpo: OrpoSpec | None = None
    """ORPO settings (method type orpo; defaults apply when unset)."""
    reward: RewardSpec | None = None
    """Reward-model settings (method type reward; defaults apply when unset)."""
    vision: VisionMethodSpec | None = None
    """LLaVA training stage and encoder LoRA (with `model.vision`); unset with `model.vision`: stage finetune."""

    @property
    def scheme(self) -> str:
        """full, lora or qlora: what trains, whatever the objective."""
        if self.type.value in PREFERENCE_METHODS:
            return (self.parameters or ParameterScheme.LORA).value
        return self.type.value

    @property
    def stage(self) -> str:
        """A LLaVA run's stage: pretrain or finetune."""
        return self.vision.stage if self.vision else "finetune"

    @property
    def is_preference(self) -> bool:
        return self.type.value in PREFERENCE_METHODS

    @model_validator(mode="after")
    def _fill_method_defaults(self):
        # Filled here, once, so no use site ever needs `spec.method.lora or LoraSpec()`.
        if self.scheme != "full" and self.lora is None:
            self.lora = LoraSpec()
        if self.scheme == "qlora" and self.quantization is None:
            self.quantization = QuantizationSpec()
        for kind, block in (("dpo", DpoSpec), ("orpo", OrpoSpec), ("reward", RewardSpec)):
            if self.type.value == kind and getattr(self, kind) is None:
                setattr(self, kind, block())
        return self
