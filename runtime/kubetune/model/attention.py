"""Attention over packed sequences without a mask: each packed sample attends only within itself.

transformers turns restarting position ids into a block-diagonal (S × S) mask, and SDPA then computes every score of
the S × S matrix and masks most of them away (its fast kernels do not take a mask). Here the samples of a batch are
gathered into a (samples × longest) batch, attended with `is_causal` (the fast kernels, no mask to build) and
scattered back: the same result, with Σ (samples · longest²) scores instead of S². Padding at the end of a short
sample only ever sits after its real tokens, so causality keeps it out of their attention.

It is the default training attention where varlen flash-attention is not available (every CPU; GPUs without
flash-attn); generation switches back to SDPA (see `generation_attention`).
"""

from __future__ import annotations

import contextlib
from typing import Any

PACKED = "kubetune_packed"
SEQUENCE_PARALLEL = "kubetune_ulysses"


def buckets(position_ids: Any) -> list[tuple[Any, Any, int, int]]:
    """Group the packed samples of the flattened (B·S) tokens by length (powers of two), so that a long sample does
    not make every short one pad to its length. Per group: the tokens' flat indices, where each goes in the group's
    (samples × longest) layout, and that layout's shape."""
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1] + 1
    starts[:: position_ids.shape[1]] = True  # a row always starts a sample
    sample = starts.cumsum(0) - 1
    first = torch.nonzero(starts).squeeze(1)
    lengths = torch.diff(first, append=torch.tensor([flat.numel()], device=flat.device))
    offset = torch.arange(flat.numel(), device=flat.device) - first[sample]
    size_class = torch.ceil(torch.log2(lengths.double())).long()
    groups = []
    for cls in torch.unique(size_class).tolist():
        members = torch.nonzero(size_class == cls).squeeze(1)
        rank = torch.full_like(lengths, -1)
        rank[members] = torch.arange(members.numel(), device=flat.device)
        tokens = torch.nonzero(rank[sample] >= 0).squeeze(1)
        longest = int(lengths[members].max())
        groups.append((tokens, rank[sample[tokens]] * longest + offset[tokens], members.numel(), longest))
    return groups


def segment_attention(query: Any, key: Any, value: Any, position_ids: Any, scaling: float | None,
                      dropout: float = 0.0) -> Any:
    """q: (B, H, S, D), k/v: (B, Hkv, S, D) → (B, S, H, D), each token attending causally within its sample."""
    import torch

    batch, heads, length, dim = query.shape
    flat_q, flat_k, flat_v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    out = flat_q.new_zeros(batch * length, heads, dim)
    for tokens, where, count, longest in buckets(position_ids):
        def to_samples(flat: Any) -> Any:
            grid = flat.new_zeros(count * longest, flat.shape[1], dim).index_copy(0, where, flat.index_select(0, tokens))
            return grid.view(count, longest, flat.shape[1], dim).transpose(1, 2)

        q, k, v = to_samples(flat_q), to_samples(flat_k), to_samples(flat_v)
        attended = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=q.shape[1] != k.shape[1])
        out = out.index_copy(0, tokens, attended.transpose(1, 2).reshape(count * longest, heads, dim)
                             .index_select(0, where))
    return out.view(batch, length, heads, dim)


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, position_ids: Any = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention-function signature; the decoder layer passes the position ids through."""
    if position_ids is None or query.shape[2] != key.shape[2]:
        raise RuntimeError(f"{PACKED} attention is for training forwards (whole sequences with position ids)")
    return segment_attention(query, key, value, position_ids, scaling, dropout), None


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


@contextlib.contextmanager
def generation_attention(model: Any):
    """Generation decodes one token at a time against a cache: use SDPA for it, then restore."""
    config = model.config
    chosen = config._attn_implementation
    if chosen in (PACKED, SEQUENCE_PARALLEL):
        config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        config._attn_implementation = chosen
