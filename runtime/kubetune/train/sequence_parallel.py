"""Sequence parallelism, DeepSpeed-Ulysses style: each rank of a sequence-parallel group holds a contiguous slice of
every sequence; around attention an all-to-all trades the sequence slices for a slice of the heads, so each rank
attends over the whole sequence with 1/P of the heads, then trades back.

Groups are contiguous ranks `[i*P, (i+1)*P)` (XTuner's layout); the data-parallel rank is `rank // P`, so every rank
of a group reads the same sample. The loss is summed over each rank's slice and divided by the labelled tokens of the
whole window, and data parallel averages gradients over all ranks: the gradient equals the non-parallel one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from kubetune.data.encode import IGNORE_INDEX
from kubetune.model.attention import SEQUENCE_PARALLEL as ATTENTION
from kubetune.model.attention import Variant, attend_packed

from .errors import TrainError


@dataclass
class SequenceGroup:
    size: int
    rank: int  # position inside the group
    group: Any  # torch.distributed ProcessGroup


_ACTIVE: SequenceGroup | None = None


def setup(size: int, rank: int, world: int) -> SequenceGroup:
    """Create the groups (every rank must create every group) and register the attention function."""
    import torch.distributed as dist

    global _ACTIVE
    if world % size:
        raise TrainError(f"training.sequenceParallelSize {size} must divide the number of processes ({world})")
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    _ACTIVE = SequenceGroup(size=size, rank=rank % size, group=mine)
    _register()
    return _ACTIVE


def shard(batch: dict[str, Any], sp: SequenceGroup, pad_token_id: int, keep_logits: bool = False) -> dict[str, Any]:
    """This rank's slice of a collated batch, with targets shifted over the whole sequence first (the slice's last
    position predicts the next slice's first token)."""
    from .targets import select_logits

    ids, pos = _slice(batch["input_ids"], sp, pad_token_id), _slice(batch["position_ids"], sp, 0)
    targets = _slice(shift_targets(batch["labels"]), sp, IGNORE_INDEX)
    return select_logits({"input_ids": ids, "position_ids": pos, "targets": targets,
                          "full_position_ids": _slice(batch["position_ids"], sp, 0, whole=True)}, keep_logits)


def shard_pairs(batch: dict[str, Any], sp: SequenceGroup, pad_token_id: int, keep_logits: bool = False
                ) -> dict[str, Any]:
    """This rank's slice of a batch of packed chosen/rejected pairs: each rank sums its positions' log-probabilities
    per sample, the objective adds the group's partial sums (`group_sum`), and the group's first rank alone carries
    the loss and counts the pairs, so each pair weighs once."""
    out = shard(batch, sp, pad_token_id, keep_logits)
    count = batch["num_segments"]
    segments = _slice(batch["segment_ids"], sp, count)  # padding belongs to the discarded segment `count`
    out.update(loss_segments=segments[out["keep"]] if keep_logits else segments.reshape(-1), num_segments=count,
               num_units=count // 2 if sp.rank == 0 else 0, sequence_group=sp)
    return out


def _slice(t: Any, sp: SequenceGroup, fill: int, whole: bool = False) -> Any:
    """`t` [B, S] padded with `fill` to a multiple of the group size, then this rank's part (or all of it)."""
    import torch

    width = t.shape[1]
    padded = -(-width // sp.size) * sp.size
    if padded > width:
        t = torch.nn.functional.pad(t, (0, padded - width), value=fill)
    part = padded // sp.size
    return t if whole else t[:, sp.rank * part:(sp.rank + 1) * part]


def group_sum(t: Any, sp: SequenceGroup) -> Any:
    """The sum of `t` over the sequence group; differentiable (the gradient of a sum is the summed gradient)."""
    import torch
    import torch.distributed as dist

    if torch.is_grad_enabled() and t.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t, group=sp.group)
    t = t.clone()
    dist.all_reduce(t, group=sp.group)
    return t


def shift_targets(labels: Any) -> Any:
    import torch

    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


@functools.cache
def _all_to_all() -> Any:
    """Autograd-aware all-to-all: split `scatter_dim` into P parts, send part j to rank j, concatenate what arrives
    along `gather_dim`. Its gradient is the reverse exchange. (Built once, on first use: torch is imported lazily.)"""
    import torch

    class AllToAll(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t, scatter_dim, gather_dim, sp):
            ctx.dims, ctx.sp = (scatter_dim, gather_dim), sp
            return _exchange(t, scatter_dim, gather_dim, sp)

        @staticmethod
        def backward(ctx, grad):
            scatter_dim, gather_dim = ctx.dims
            return _exchange(grad, gather_dim, scatter_dim, ctx.sp), None, None, None

    return AllToAll


def _exchange(x: Any, scatter_dim: int, gather_dim: int, sp: SequenceGroup) -> Any:
    import torch
    import torch.distributed as dist

    parts = [p.contiguous() for p in torch.chunk(x, sp.size, dim=scatter_dim)]
    received = [torch.empty_like(parts[0]) for _ in parts]
    dist.all_to_all(received, parts, group=sp.group)
    return torch.cat(received, dim=gather_dim)


def ulysses_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                      scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers attention function: q/k/v arrive as (B, heads, S/P, D); returns (B, S/P, heads, D)."""
    sp = _ACTIVE
    assert sp is not None  # setup() ran before the model was built with this attention
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % sp.size:
        raise TrainError(f"training.sequenceParallelSize {sp.size} must divide the model's {heads} attention heads")
    if kv_heads % sp.size:  # too few key/value heads to split: give every query head its own copy
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    q, k, v = (_all_to_all().apply(t, 1, 2, sp) for t in (query, key, value))
    variant = Variant.from_call(kwargs)
    if variant.sinks is not None:  # per-head logits: this rank attends with its slice of the heads
        variant = replace(variant, sinks=variant.sinks.chunk(sp.size)[sp.rank])
    out = attend_packed(q, k, v, _FULL_POSITIONS["current"], scaling, dropout, variant)  # (B, S, H/P, D)
    return _all_to_all().apply(out, 1, 2, sp), None


# The whole sequence's position ids of the batch in flight. Kept after the forward returns: gradient checkpointing
# runs attention again during the backward pass.
_FULL_POSITIONS: dict[str, Any] = {}


def forward(model: Any, batch: dict[str, Any]) -> Any:
    """The packed forward over this rank's slice; attention sees the whole sequence's positions."""
    from kubetune.model.packed import packed_forward

    _FULL_POSITIONS["current"] = batch["full_position_ids"]
    return packed_forward(model, batch)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, ulysses_attention)
    # No mask: the attention function finds the packed samples from the whole sequence's positions.
    AttentionMaskInterface.register(ATTENTION, lambda *args, **kwargs: None)
