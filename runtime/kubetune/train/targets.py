"""What each position is trained to predict, and the summed token loss: the labels shifted by one, and (with
`keep_logits`) only the labelled positions projected onto the vocabulary. Shared by the SFT and preference
objectives and by sequence parallelism."""

from __future__ import annotations

from typing import Any

from kubetune.data.encode import IGNORE_INDEX


def with_targets(batch: dict[str, Any], keep_logits: bool = False) -> dict[str, Any]:
    """Targets are the labels shifted one to the left: position t predicts token t+1. Shifting before any slicing
    lets sequence parallelism cut the sequence anywhere."""
    import torch

    targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
    return select_logits({**batch, "targets": targets}, keep_logits)


def select_logits(batch: dict[str, Any], keep_logits: bool) -> dict[str, Any]:
    """Only positions with a target need logits: with `keep_logits` the model projects just those hidden states onto
    the vocabulary (transformers' `logits_to_keep` mask), which skips the prompt tokens' LM-head and softmax work."""
    targets = batch["targets"]
    labelled = targets != IGNORE_INDEX
    tokens = int(labelled.sum())
    out = {**batch, "num_tokens": tokens, "num_units": tokens, "loss_targets": targets}
    if keep_logits:
        out.update(keep=labelled, loss_targets=targets[labelled])
    return out


def token_loss_sum(logits: Any, targets: Any) -> Any:
    import torch

    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")
