"""Attention over packed sequences without a mask: each packed sample attends only within itself.

transformers turns restarting position ids into a block-diagonal (S × S) mask, and SDPA then computes every score of
the S × S matrix and masks most of them away (its fast kernels do not take a mask). Here the samples of a batch are
gathered into a (samples × longest) batch, attended with `is_causal` (the fast kernels, no mask to build) and
scattered back: the same result, with Σ (samples · longest²) scores instead of S². Padding at the end of a short
sample only ever sits after its real tokens, so causality keeps it out of their attention.

Architectures whose attention is more than plain causal softmax pass what differs through the attention call, per
layer (Gemma 2/3 and GPT-OSS alternate sliding and full layers): a sliding window (Mistral, Qwen2 with
`use_sliding_window`, Gemma 2/3, Cohere 2, GPT-OSS), logit soft-capping (Gemma 2) and attention sinks (GPT-OSS's
per-head `s_aux`). Each is applied here exactly as transformers' eager attention applies it, per sample. A setting of
transformers' attention calls it cannot reproduce is refused, never ignored (`UnsupportedAttention`).

It is the default training attention where the flash-attn wheel is not installed. On a GPU the same function runs
PyTorch's own kernels (varlen flash attention, FlexAttention: `packed_kernels.py`); the gather-and-SDPA path below is
the CPU's and the fallback for what those cannot take. Generation switches back to an attention transformers can
decode with (see `generation_attention`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from . import packed_kernels
from .variant import PACKED, UnsupportedAttention, Variant

SEQUENCE_PARALLEL = "kubetune_ulysses"
# Families whose transformers model builds its causal mask without the position ids (transformers 5.24: GPT-OSS), so
# with eager or SDPA attention packed samples see each other. tests/test_architectures.py keeps this list true.
MASK_IGNORES_PACKING = frozenset({"gpt_oss"})

# Calls of the packed attention so far: a forward that leaves it unchanged ran attention of the model's own (remote
# code that bypasses transformers' attention interface), which would let packed samples see each other.
_CALLS = [0]


def buckets(found: packed_kernels.Layout) -> list[tuple[Any, Any, int, int]]:
    """Group the packed samples of the flattened (B·S) tokens by length (powers of two), so that a long sample does
    not make every short one pad to its length. Per group: the tokens' flat indices, where each goes in the group's
    (samples × longest) layout, and that layout's shape."""
    import torch

    sample = found.document
    first = found.cu_seqlens[:-1].long()
    lengths = torch.diff(found.cu_seqlens).long()
    offset = torch.arange(sample.numel(), device=sample.device) - first[sample]
    size_class = torch.ceil(torch.log2(lengths.double())).long()
    groups = []
    for cls in torch.unique(size_class).tolist():
        members = torch.nonzero(size_class == cls).squeeze(1)
        rank = torch.full_like(lengths, -1)
        rank[members] = torch.arange(members.numel(), device=sample.device)
        tokens = torch.nonzero(rank[sample] >= 0).squeeze(1)
        longest = int(lengths[members].max())
        groups.append((tokens, rank[sample[tokens]] * longest + offset[tokens], members.numel(), longest))
    return groups


def segment_attention(query: Any, key: Any, value: Any, position_ids: Any, scaling: float | None,
                      dropout: float = 0.0, variant: Variant = Variant()) -> Any:
    """q: (B, H, S, D), k/v: (B, Hkv, S, D) → (B, S, H, D), each token attending causally within its sample."""
    batch, heads, length, _ = query.shape
    dim = value.shape[-1]  # DeepSeek's multi-head latent attention: values narrower than queries and keys
    flat_q, flat_k, flat_v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], t.shape[-1])
                              for t in (query, key, value))
    out = flat_q.new_zeros(batch * length, heads, dim)
    found = packed_kernels.layout(position_ids)
    if not found.groups:  # once per batch, not once per layer: finding them costs Python work and host syncs
        found.groups.extend(buckets(found))
    for tokens, where, count, longest in found.groups:
        def to_samples(flat: Any) -> Any:
            grid = flat.new_zeros(count * longest, *flat.shape[1:]).index_copy(0, where, flat.index_select(0, tokens))
            return grid.view(count, longest, *flat.shape[1:]).transpose(1, 2)

        attended = attend(to_samples(flat_q), to_samples(flat_k), to_samples(flat_v), scaling, dropout, variant)
        out = out.index_copy(0, tokens, attended.transpose(1, 2).reshape(count * longest, heads, dim)
                             .index_select(0, where))
    return out.view(batch, length, heads, dim)


def attend_packed(query: Any, key: Any, value: Any, position_ids: Any, scaling: float | None, dropout: float = 0.0,
                  variant: Variant = Variant()) -> Any:
    """q: (B, H, S, D), k/v: (B, Hkv, S, D) → (B, S, H, D) with the kernel that fits the call (packed_kernels)."""
    kernel = packed_kernels.choose(query, value, scaling, dropout, variant)
    if kernel == "varlen":
        return packed_kernels.varlen(query, key, value, position_ids, scaling, variant)
    if kernel == "flex":
        return packed_kernels.flex(query, key, value, position_ids, scaling, variant)
    return segment_attention(query, key, value, position_ids, scaling, dropout, variant)


def attend(q: Any, k: Any, v: Any, scaling: float | None, dropout: float, variant: Variant) -> Any:
    """Causal attention of whole samples, (N, H, L, D) → (N, H, L, D). Plain causal and sliding-window attention run
    in SDPA's kernels; soft-capping and sinks change the softmax itself, so they are computed as transformers' eager
    attention computes them (same order of operations, same dtypes)."""
    import torch
    from torch.nn import functional

    gqa = q.shape[1] != k.shape[1]
    if variant.plain:
        return functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                                       enable_gqa=gqa)
    position = torch.arange(q.shape[2], device=q.device)
    allowed = position[None, :] <= position[:, None]
    if variant.window:
        allowed &= position[None, :] > position[:, None] - variant.window
    if variant.softcap is None and variant.sinks is None:
        return functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scaling,
                                                       enable_gqa=gqa)
    if gqa:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    scores = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    if variant.softcap is not None:
        scores = torch.tanh(scores / variant.softcap) * variant.softcap
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    if variant.sinks is None:
        probs = functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    else:  # GPT-OSS: one more logit per head in every row's denominator, dropped after the softmax
        sinks = variant.sinks.reshape(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1).to(scores.dtype)
        combined = torch.cat([scores, sinks], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        probs = functional.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1]
    probs = functional.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs.to(v.dtype), v)


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, position_ids: Any = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention-function signature; the decoder layer passes the position ids through."""
    if position_ids is None or query.shape[2] != key.shape[2]:
        raise RuntimeError(f"{PACKED} attention is for training forwards (whole sequences with position ids)")
    _CALLS[0] += 1
    return attend_packed(query, key, value, position_ids, scaling, dropout, Variant.from_call(kwargs)), None


def packed_calls() -> int:
    return _CALLS[0]


def language_model(model: Any) -> Any:
    """The causal LM that attends: DDP's or DeepSpeed's `.module`, LLaVA's `.llm`, peft's base model unwrapped."""
    model = getattr(model, "module", model)
    model = model.llm if hasattr(model, "projector") else model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def check_packed_attention_ran(model: Any, calls_before: int) -> None:
    """After a training forward with the packed attention chosen: refuse a model whose code never called it."""
    inner = language_model(model)
    if getattr(inner.config, "_attn_implementation", None) == PACKED and _CALLS[0] == calls_before:
        raise UnsupportedAttention(
            f"the model's code ({type(inner).__name__}) computes attention without transformers' attention "
            "interface, so packed samples would attend to each other: set dataset.packToMaxLength to false")


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED, packed_attention)
    # No S × S mask is ever built: the attention function derives the samples from the position ids.
    AttentionMaskInterface.register(PACKED, lambda *args, **kwargs: None)


def training_attention(requested: str, device: Any) -> str | None:
    """The attention implementation to train with: an explicit choice wins; `auto` is varlen flash-attention on a
    GPU that has it, else the packed-segment attention above."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    register()
    return PACKED


def decoding_attention(model: Any) -> str:
    """The attention transformers decodes this model with: SDPA where the architecture allows it, else eager (Gemma 2's
    soft-capping and GPT-OSS's sinks, which SDPA would refuse or silently drop)."""
    base = language_model(model)
    softcap = getattr(base.config, "attn_logit_softcapping", None)
    return "sdpa" if getattr(base, "_supports_sdpa", False) and not softcap else "eager"


@contextlib.contextmanager
def generation_attention(model: Any):
    """Generation decodes one token at a time against a cache: use the model's own decoding attention, then
    restore."""
    config = model.config
    chosen = config._attn_implementation
    if chosen in (PACKED, SEQUENCE_PARALLEL):
        config._attn_implementation = decoding_attention(model)
    try:
        yield
    finally:
        config._attn_implementation = chosen
