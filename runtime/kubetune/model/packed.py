"""The forward pass over a packed batch."""

from __future__ import annotations

from typing import Any

from .attention import check_packed_attention_ran, language_model, packed_calls


def packed_forward(model: Any, batch: dict[str, Any]) -> Any:
    """Run `model` on a collated batch so that packed samples stay independent.

    No 2-D attention mask and no KV cache: with both absent, transformers turns position ids that restart at each
    sample into a block-diagonal causal mask (a cache, even an empty one, disables that detection and lets samples
    attend across their boundaries).
    """
    extra = {"logits_to_keep": batch["keep"]} if "keep" in batch else {}
    if "pixel_values" in batch:  # LLaVA: the images of the batch's `<image>` placeholders
        extra["pixel_values"] = batch["pixel_values"]
    before = packed_calls()
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **extra)
    if batch.get("num_segments", 0) > batch["input_ids"].shape[0]:  # some row holds several samples
        check_packed_attention_ran(model, before)
    return out


def accepts_logits_mask(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' own models do; remote code may not)."""
    import inspect

    return "logits_to_keep" in inspect.signature(type(language_model(model)).forward).parameters
