"""The kernels behind the packed attention, chosen per call by what the device and the layer need.

- `varlen`: PyTorch's own variable-length flash attention (`torch.nn.attention.varlen`, torch ≥ 2.10, CUDA, fp16 or
  bf16): the packed tokens go in as they are, with the samples' cumulative lengths, so no token is gathered, padded or
  scattered and no score across samples is computed. Plain causal and sliding-window layers.
- `flex`: FlexAttention with a document mask (compiled on CUDA): soft-capping (Gemma 2) through its score_mod, and
  what varlen cannot take (fp32, a scale the installed varlen has no argument for).
- `segment`: the gather-and-SDPA attention of `attention.py`: every CPU (FlexAttention has no backward there), sinks
  (GPT-OSS), dropout, and values narrower than queries (DeepSeek's latent attention).

All three compute the same attention (tests/test_packed_kernels.py compares them with each sample alone); the choice
only moves where the time goes. `KUBETUNE_PACKED_KERNEL` (or `forced`) pins one, for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:
    from .variant import Variant

KERNELS = ("varlen", "flex", "segment")
_FORCED: list[str | None] = [None]


@dataclass(frozen=True)
class Layout:
    """Where the packed samples of a batch lie in its flattened (B·S) tokens."""

    cu_seqlens: Any  # (samples + 1,) int32: each sample's first token, then the total
    max_length: int
    document: Any  # (B·S,) the sample of each token
    masks: dict = field(default_factory=dict)  # FlexAttention's block masks of this layout, by sliding window
    groups: list = field(default_factory=list)  # the segment kernel's length buckets (attention.buckets), once found


_LAST: dict[str, Any] = {}


def layout(position_ids: Any) -> Layout:
    """The samples of a batch, found once per batch: every layer (and gradient checkpointing's recomputation) asks
    with the same position-id tensor, and finding them costs a host sync."""
    import torch

    # The tensor itself is held and compared, not its address: a freed batch's memory is soon the next batch's.
    held = _LAST.get("positions")
    if held is not None and held is position_ids and _LAST["version"] == held._version:
        return _LAST["layout"]
    flat = position_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1] + 1
    starts[:: position_ids.shape[1]] = True  # a row always starts a sample
    first = torch.nonzero(starts).squeeze(1)
    cu = torch.cat([first, first.new_tensor([flat.numel()])]).to(torch.int32)
    found = Layout(cu, int(torch.diff(cu).max()), starts.cumsum(0) - 1)
    _LAST.update(positions=position_ids, version=position_ids._version, layout=found)
    return found


@contextlib.contextmanager
def forced(kernel: str | None):
    """Use `kernel` for every packed attention call inside (None: choose per call)."""
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"unknown packed attention kernel {kernel!r}; one of {', '.join(KERNELS)}")
    before = _FORCED[0]
    _FORCED[0] = kernel
    try:
        yield
    finally:
        _FORCED[0] = before


@functools.lru_cache(maxsize=1)
def _varlen_parameters() -> frozenset[str]:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return frozenset()
    return frozenset(inspect.signature(varlen_attn).parameters)


def varlen_fits(q: Any, v: Any, scaling: float | None, dropout: float, variant: Variant) -> bool:
    import torch

    params = _varlen_parameters()
    default_scale = scaling is None or abs(scaling - q.shape[-1] ** -0.5) < 1e-12
    return (q.is_cuda and bool(params) and q.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0
            and variant.softcap is None and variant.sinks is None and v.shape[-1] == q.shape[-1]
            and q.shape[-1] <= 256 and ("scale" in params or default_scale)
            and (variant.window is None or "window_size" in params))


def flex_fits(q: Any, v: Any, dropout: float, variant: Variant) -> bool:
    return q.is_cuda and dropout == 0.0 and variant.sinks is None and v.shape[-1] == q.shape[-1]


def computes(kernel: str, v_dim: int, q_dim: int, dropout: float, variant: Variant) -> bool:
    """Whether `kernel` computes this layer's attention at all (device and dtype aside)."""
    if kernel == "segment":
        return True
    exact = dropout == 0.0 and variant.sinks is None and v_dim == q_dim
    if kernel == "flex":
        return exact
    params = _varlen_parameters()  # torch 2.10's varlen takes no window (nor scale: the caller checks that)
    return exact and bool(params) and variant.softcap is None and (variant.window is None or "window_size" in params)


def choose(q: Any, v: Any, scaling: float | None, dropout: float, variant: Variant) -> str:
    """A pinned kernel wins where it computes the layer's attention (on any device: FlexAttention's forward runs on
    a CPU, which the tests use); otherwise the fastest that fits."""
    wanted = _FORCED[0] or os.environ.get("KUBETUNE_PACKED_KERNEL") or None
    if wanted and computes(wanted, v.shape[-1], q.shape[-1], dropout, variant):
        return wanted
    if varlen_fits(q, v, scaling, dropout, variant):
        return "varlen"
    return "flex" if flex_fits(q, v, dropout, variant) else "segment"


def varlen(query: Any, key: Any, value: Any, position_ids: Any, scaling: float | None, variant: Variant) -> Any:
    """q: (B, H, S, D), k/v: (B, Hkv, S, D) → (B, S, H, D)."""
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, length, dim = query.shape
    params = _varlen_parameters()
    found = layout(position_ids)
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    kwargs: dict[str, Any] = {}
    if "window_size" in params:  # (left, right): a token sees window - 1 tokens before it and none after
        kwargs["window_size"] = (variant.window - 1 if variant.window else -1, 0)
    else:
        kwargs["is_causal"] = True
    if "scale" in params:
        kwargs["scale"] = scaling
    if k.shape[1] != heads:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    out = varlen_attn(q, k, v, found.cu_seqlens, found.cu_seqlens, found.max_length, found.max_length, **kwargs)
    return out.view(batch, length, heads, dim)


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Any:
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _block_mask(found: Layout, window: int | None, total: int, device: Any) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    if window not in found.masks:
        document = found.document

        def mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            allowed = (document[q_idx] == document[kv_idx]) & (q_idx >= kv_idx)
            return allowed & (q_idx - kv_idx < window) if window else allowed

        found.masks[window] = create_block_mask(mask, 1, None, total, total, device=device)
    return found.masks[window]


def flex(query: Any, key: Any, value: Any, position_ids: Any, scaling: float | None, variant: Variant) -> Any:
    """The batch's rows laid end to end as one sequence under a document mask: q (B, H, S, D) → (B, S, H, D)."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    batch, heads, length, dim = query.shape
    total = batch * length
    q, k, v = (t.permute(1, 0, 2, 3).reshape(1, t.shape[1], total, dim) for t in (query, key, value))
    found = layout(position_ids)
    # A tensor, not a float: FlexAttention traces score_mod, and a float it closes over is baked into (or, changed,
    # breaks) what it traced.
    cap = torch.tensor(variant.softcap or 1.0, device=q.device)

    def softcap(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return torch.tanh(score / cap) * cap

    attend = _compiled_flex() if q.is_cuda else flex_attention  # compiled flex on a CPU needs a C++ toolchain
    out = attend(q, k, v, score_mod=softcap if variant.softcap else None,
                 block_mask=_block_mask(found, variant.window, total, q.device), scale=scaling,
                 enable_gqa=k.shape[1] != heads)
    return out.reshape(heads, batch, length, dim).permute(1, 2, 0, 3)
