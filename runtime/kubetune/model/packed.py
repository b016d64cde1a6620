"""The forward pass over a packed batch, in one of two ways chosen per model (`choose_packing`):

- **attention**: the whole packed row in one sequence; attention keeps samples apart by the restarting position ids
  (kubetune's packed attention or varlen flash-attention). Exact where attention is the only layer that looks at
  other positions.
- **split**: each sample of a row becomes a row of its own, right-padded to the longest, and the outputs are scattered
  back into the packed layout. Exact for any causal model: a state-space scan, a short convolution or a linear
  attention (Mamba, gated DeltaNet, lightning attention, LFM2's convolutions) starts every sample from a zero state,
  and padding only ever follows a sample's real tokens. It costs what running the samples unpacked costs.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .attention import (PACKED, UnsupportedAttention, check_packed_attention_ran, decoding_attention, language_model,
                        packed_calls)

ATTENTION, SPLIT = "attention", "split"
_MODE = "kubetune_packing"  # attribute on the language model: which forward its packed rows take
# Sequence mixers other than attention, by what transformers' (and hub code's) classes are called: their state runs
# along the whole row, across sample boundaries.
_STATEFUL = re.compile(r"Mamba|Mixer|ShortConv|DeltaNet|LinearAttention|Lightning|Recurrent|RgLru|Rwkv|LSTM|SSM")


def packed_forward(model: Any, batch: dict[str, Any]) -> Any:
    """Run `model` on a collated batch so that packed samples stay independent.

    No 2-D attention mask and no KV cache in the attention mode: with both absent, transformers turns position ids
    that restart at each sample into a block-diagonal causal mask (a cache, even an empty one, disables that detection
    and lets samples attend across their boundaries).
    """
    several = batch.get("num_segments", 0) > batch["input_ids"].shape[0]  # some row holds several samples
    if several and packing_mode(model) == SPLIT:
        return split_forward(model, batch)
    extra = {"logits_to_keep": batch["keep"]} if "keep" in batch else {}
    if "pixel_values" in batch:  # LLaVA: the images of the batch's `<image>` placeholders
        extra["pixel_values"] = batch["pixel_values"]
    before = packed_calls()
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **extra)
    if several:
        check_packed_attention_ran(model, before)
    return out


def split_forward(model: Any, batch: dict[str, Any]) -> Any:
    """Every sample of the packed rows as a row of its own (right-padded), one forward, outputs scattered back into
    the packed layout: (B, S, ...) or, with `keep`, the kept positions in the same order."""
    import torch

    if "pixel_values" in batch:
        raise UnsupportedAttention("a vision-language model over a language model whose layers carry state across "
                                   "packed samples: set dataset.packToMaxLength to false")
    ids, positions = batch["input_ids"], batch["position_ids"]
    rows, width = ids.shape
    flat = positions.reshape(-1)
    starts = (flat == 0).nonzero().squeeze(1)
    lengths = torch.diff(starts, append=starts.new_tensor([flat.numel()]))
    longest = int(lengths.max())
    offsets = torch.arange(longest, device=ids.device)
    real = offsets[None, :] < lengths[:, None]  # (samples, longest)
    where = (starts[:, None] + offsets[None, :]).clamp(max=flat.numel() - 1)  # the packed position of each cell
    # Samples in packed order, each row's tokens in order: the kept cells, read row by row, are the kept positions of
    # the packed batch in its own order, so the model projects only those (no samples × longest × vocab logits).
    extra = {"logits_to_keep": batch["keep"].reshape(-1)[where] & real} if "keep" in batch else {}
    out = model(input_ids=ids.reshape(-1)[where] * real, position_ids=offsets.expand_as(where).contiguous(),
                attention_mask=real.long(), use_cache=False, **extra)
    if extra:
        return out
    values = out if isinstance(out, torch.Tensor) else out.logits
    packed = values.new_zeros(flat.numel(), *values.shape[2:]).index_copy(0, where[real], values[real])
    packed = packed.view(rows, width, *values.shape[2:])
    if isinstance(out, torch.Tensor):
        return packed
    out.logits = packed
    return out


def packing_mode(model: Any) -> str:
    inner = getattr(model, "module", model)  # DDP's or DeepSpeed's wrapper
    return getattr(language_model(getattr(inner, "llm", inner)), _MODE, ATTENTION)  # a reward model's decoder


def stateful_mixers(model: Any) -> list[str]:
    """Class names of the layers that mix positions other than through attention (state-space scans, convolutions
    along the sequence, linear attention), read off the modules themselves."""
    import torch

    found = []
    for module in language_model(model).modules():
        name = type(module).__name__
        if isinstance(module, torch.nn.Conv1d) or "A_log" in module._parameters or _STATEFUL.search(name):
            found.append(name)
    return sorted(set(found))


def choose_packing(model: Any, family: str, say: Callable[[str], None] | None = None, probe: bool = True,
                   packs: bool = True) -> str:
    """Attention where it keeps packed samples apart, else split (see the module's docstring). The modules are read
    first; then (with `probe`) two rows that differ only in their first sample show whether the second sample's
    logits move, which catches anything the names miss (hub code that computes attention itself, a mask that ignores
    the position ids)."""
    inner = language_model(model)
    mixers = stateful_mixers(inner)
    why = f"its {', '.join(mixers[:3])} layers carry state along the row" if mixers else None
    if why is None and probe:
        why = _leaks(inner)
    if why is None:
        return ATTENTION
    setattr(inner, _MODE, SPLIT)
    if getattr(inner.config, "_attn_implementation", None) == PACKED:  # each row is one sample now
        inner.config._attn_implementation = decoding_attention(inner)
    if probe and packs:
        moved = _split_moves(inner)
        if moved:
            raise UnsupportedAttention(f"dataset.packToMaxLength: {family} cannot keep packed samples apart, not even "
                                       f"run as rows of their own ({moved}); set it to false")
    if say and packs:
        say(f"packing: {family}: {why}, so each packed sample runs as a row of its own (exact; it costs what "
            "unpacked training costs: dataset.packToMaxLength false with a larger batch is as fast)")
    return SPLIT


def _leaks(inner: Any) -> str | None:
    """Two rows that differ only in the sample packed first: does the second sample notice?"""
    first, other, second = _probe_tokens(inner, 7, 7, 4)
    try:
        logits = _probe(inner, [[first, second], [other, second]])[:, 7:]
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the split forward is checked to be exact instead
        return f"its layers do not take packed rows ({' '.join(str(exc).split())[:120]})"
    return _moved(logits[0], logits[1])


def _split_moves(inner: Any) -> str | None:
    """In the split forward, a sample packed after another against the same sample alone."""
    first, second = _probe_tokens(inner, 7, 4)  # unequal: the split rows are padded
    return _moved(_probe(inner, [[first, second]])[0, 7:], _probe(inner, [[second]])[0])


def _probe_tokens(inner: Any, *lengths: int) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    vocab = int(inner.config.get_text_config().vocab_size)
    return [torch.randint(min(5, vocab - 1), vocab, (n,), generator=gen) for n in lengths]


def _probe(inner: Any, rows: list[list[Any]]) -> Any:
    """Logits of rows of packed samples (every row the same lengths), in eval mode (no dropout), no gradients."""
    import torch

    device = next(inner.parameters()).device
    ids = torch.stack([torch.cat(row) for row in rows]).to(device)
    positions = torch.cat([torch.arange(len(t)) for t in rows[0]]).repeat(len(rows), 1).to(device)
    batch = {"input_ids": ids, "position_ids": positions, "num_segments": len(rows) * len(rows[0])}
    training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            return packed_forward(inner, batch).logits.float()
    finally:
        inner.train(training)


def _moved(a: Any, b: Any) -> str | None:
    moved = float((a - b).abs().max())
    if moved > 1e-4 * max(1.0, float(a.abs().max())):
        return f"a sample's logits move by {moved:.2g} with the sample packed before it"
    return None


def accepts_logits_mask(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' own models do; remote code may not)."""
    import inspect

    return "logits_to_keep" in inspect.signature(type(language_model(model)).forward).parameters
