"""What every part of the XTuner mapping shares: the result, the mapper that records problems and notes by line,
and the small value helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .reader import Config, Local, Sym, Unknown

DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass
class Imported:
    manifest: dict[str, Any]
    problems: list[tuple[int, str]] = field(default_factory=list)  # would train differently: refused by default
    notes: list[tuple[int, str]] = field(default_factory=list)  # kept elsewhere or dropped on purpose


class Mapper:
    def __init__(self, config: Config, imported: Imported):
        self.c, self.out = config, imported

    def get(self, name: str, default: Any = None) -> Any:
        return self.c.values.get(name, default)

    def line(self, name: str) -> int:
        return self.c.lines.get(name, 0)

    def problem(self, line: int, message: str) -> None:
        if (line, message) not in self.out.problems:  # one dict shared by several settings (the tokenizer): once
            self.out.problems.append((line, message))

    def note(self, line: int, message: str) -> None:
        self.out.notes.append((line, message))

    def value(self, value: Any, what: str, line: int) -> Any:
        """A plain value, or None with a problem for what the reader could not evaluate."""
        if isinstance(value, Unknown):
            self.problem(value.line, f"{what}: `{value.text}` is not a value the importer evaluates")
            return None
        if isinstance(value, Local):
            self.problem(value.line, f"{what}: {value.name} is Python defined in the config; kubetune does not run "
                                     "a config's code (use a dataset format, or convert the data first)")
            return None
        return value


def to_uri(path: Any) -> Any:
    """A hub id becomes hf://; a local path (absolute, ./, ~) or a URI stays."""
    if not isinstance(path, str) or "://" in path or path.startswith(("/", ".", "~")) or Path(path).exists():
        return path
    return f"hf://{path}" if re.fullmatch(r"[\w.-]+/[\w.-]+", path) else path


def read_all(value: Any) -> None:
    """Mark every key under a config dict as read: the mapping decided on it as a whole (a note or a problem says
    how)."""
    if isinstance(value, dict):
        for item in value.values():
            read_all(item)
        value.items()  # a Setting counts a walk over its items as reading each key
    elif isinstance(value, (list, tuple)):
        for item in value:
            read_all(item)


def check_tokenizer(m: Mapper, tokenizer: Any, model_path: Any, where: str, line: int, eos_token: Any) -> None:
    """XTuner builds the tokenizer from its own dict; kubetune loads model.uri's. The same path is fine (padding side
    and remote code follow the model); another one is a problem, and so is an eos_token other than model.eosToken;
    ChatGLM3's encode_special_tokens is refused; other keyword arguments stay unread, so the accounting refuses them
    by line."""
    if not isinstance(tokenizer, dict):
        return
    lines = getattr(tokenizer, "lines", {})
    path = tokenizer.get("pretrained_model_name_or_path")
    tokenizer.get("padding_side"), tokenizer.get("trust_remote_code")
    if tokenizer.get("eos_token") != eos_token:
        m.problem(lines.get("eos_token", line), f"{where}.eos_token {tokenizer.get('eos_token')!r}: not the training "
                                                f"data's ({eos_token!r}); kubetune has one tokenizer (model.eosToken)")
    if tokenizer.get("encode_special_tokens"):
        m.problem(lines.get("encode_special_tokens", line),
                  "tokenizer encode_special_tokens=True: ChatGLM3's tokenizer option (special tokens written in the "
                  "data become control tokens); kubetune loads the tokenizer without it")
    if path is not None and model_path is not None and path != model_path:
        m.problem(lines.get("pretrained_model_name_or_path", line),
                  f"{where}.pretrained_model_name_or_path {path!r}: another tokenizer than the model's "
                  f"({model_path!r}); kubetune uses model.uri's tokenizer")


def quantization(m: Mapper, quant: dict) -> dict[str, Any]:
    line = m.line("model")
    four, eight = quant.get("load_in_4bit"), quant.get("load_in_8bit")
    if not four and not eight:
        m.problem(line, "model.llm.quantization_config: neither load_in_4bit nor load_in_8bit")
        return {}
    if quant.get("llm_int8_threshold", 6.0) != 6.0:
        m.problem(line, f"model.llm.quantization_config.llm_int8_threshold {quant['llm_int8_threshold']}: kubetune "
                        "quantizes with bitsandbytes' 6.0")
    quant.get("bnb_4bit_quant_storage")  # how the packed weights are stored (for FSDP sharding): same numbers
    out: dict[str, Any] = {"bits": 4 if four else 8, "type": quant.get("bnb_4bit_quant_type", "nf4"),
                           "doubleQuant": bool(quant.get("bnb_4bit_use_double_quant", False))}
    compute = quant.get("bnb_4bit_compute_dtype")
    # transformers' BitsAndBytesConfig computes in fp32 unless told: kubetune's `auto` follows the training dtype.
    out["computeDtype"] = DTYPES.get(compute.name, "auto") if isinstance(compute, Sym) else "fp32"
    return out


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
