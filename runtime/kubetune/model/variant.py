"""What a layer's attention call asks of the packed attention beyond plain causal softmax, read from the call that
transformers makes; what it cannot reproduce is refused (shared by attention.py and the kernels in
packed_kernels.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .tokenizer import ModelLoadError

PACKED = "kubetune_packed"
# Attention-call keywords of transformers' models that change which scores exist or how they are normalised, and that
# this attention does not reproduce: refused, never ignored. (Runtime keywords such as `output_router_logits` pass.)
_NOT_REPRODUCED = ("position_bias", "sinks", "indices", "block_indices", "attention_chunk_size")


class UnsupportedAttention(ModelLoadError):
    """The model asks for an attention feature the packed attention cannot reproduce exactly."""


@dataclass(frozen=True)
class Variant:
    """What a layer's attention adds to plain causal softmax(q·kᵀ·scale)·v."""

    window: int | None = None  # a token sees itself and the window - 1 tokens before it
    softcap: float | None = None  # scores → softcap · tanh(scores / softcap)
    sinks: Any = None  # (heads,) logits that join each softmax's denominator and are dropped after

    @property
    def plain(self) -> bool:
        return self.window is None and self.softcap is None and self.sinks is None

    @classmethod
    def from_call(cls, kwargs: dict[str, Any]) -> "Variant":
        unknown = [k for k in _NOT_REPRODUCED if kwargs.get(k) is not None]
        if kwargs.get("is_causal") is False:
            unknown.append("is_causal=False")
        if unknown:
            raise UnsupportedAttention(
                f"{PACKED} attention cannot reproduce the model's attention setting(s) {unknown}; set "
                "model.attnImplementation to eager (exact, slower) or dataset.packToMaxLength to false")
        window = kwargs.get("sliding_window")
        return cls(window=int(window) if window else None, softcap=kwargs.get("softcap") or None,
                   sinks=kwargs.get("s_aux"))
