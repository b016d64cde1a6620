"""Batches of packed sequences → tensors. Position ids restart at every sample (and at the padding), and no 2-D
attention mask is passed: transformers then derives a block-diagonal causal mask from the position ids (SDPA and
eager on CPU, varlen flash-attention on GPU), so packed samples never attend to each other."""

from __future__ import annotations

from typing import Any, Sequence

from .encode import IGNORE_INDEX


def collate(rows: Sequence[dict[str, Any]], pad_token_id: int = 0, pad_to_multiple_of: int = 1) -> dict[str, Any]:
    import torch

    longest = max(len(r["input_ids"]) for r in rows)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    real = sum(len(r.get("seq_lens") or [len(r["input_ids"])]) for r in rows)
    # Which sample each position belongs to, numbered across the batch; padding goes to an extra index `real`.
    # Preference objectives sum log-probabilities per sample with it (samples 2k and 2k+1 are a chosen/rejected pair).
    segment_ids = torch.full((batch, width), real, dtype=torch.long)
    first = 0
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
        segments = list(row.get("seq_lens") or [n]) + ([width - n] if width > n else [])
        position_ids[i] = torch.cat([torch.arange(s, dtype=torch.long) for s in segments])
        own = segments[:-1] if width > n else segments
        segment_ids[i, :n] = torch.repeat_interleave(torch.arange(first, first + len(own)), torch.as_tensor(own))
        first += len(own)
        # The logit at a sample's last token would be scored against the next sample's first label: no such pair.
        start = 0
        for size in segments[:-1]:
            start += size
            labels[i, start] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "segment_ids": segment_ids,
            "num_segments": real, "num_tokens": int((labels != IGNORE_INDEX).sum())}


def cu_seqlens(seq_lens: Sequence[int]) -> list[int]:
    """Cumulative boundaries [0, l1, l1+l2, ...] of the samples in one packed sequence (flash-attn varlen layout)."""
    out = [0]
    for n in seq_lens:
        out.append(out[-1] + int(n))
    return out
