"""Before a model answers anyone: two prompts of different lengths decoded through the engine (prefilled alone,
joined into one batch, decoded together), each token checked against the model's own forward over the whole text
without a cache. A family whose cache the engine cannot batch (its own cache class, indexer caches, layers that keep
nothing) is refused at start-up with one line, instead of answering every request with an error."""

from __future__ import annotations

from typing import Any

from kubetune.errors import ModelLoadError

from .engine import Engine, Event, Request
from .sampling import Sampling

TOKENS = 3


def check_batched_decoding(model: Any, tokenizer: Any, family: str, max_batch: int = 2) -> None:
    """With `max_batch` 1 (the REPL) only one prompt: what a batch would add is never used."""
    import torch

    vocab = int(model.config.get_text_config().vocab_size)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(min(5, vocab - 1), vocab, (n,), generator=gen).tolist() for n in (5, 9)]
    prompts = prompts if max_batch > 1 else prompts[:1]
    advice = "serve it with --max-batch 1 (no batching), " if max_batch > 1 else ""
    errors: list[str] = []

    def emit(event: Event) -> None:
        if event.error:
            errors.append(event.error)

    engine = Engine(model, tokenizer, max_batch=len(prompts))
    with engine.cv:  # both wait before the engine looks: the second joins the first's batch
        requests = [engine.submit(Request(prompt=p, sampling=Sampling(max_tokens=TOKENS, ignore_eos=True), emit=emit))
                    for p in prompts]
    engine.shutdown(drain=True, timeout=600)
    if errors:
        raise ModelLoadError(f"model: {family}: kubetune's batched decoding fails on it "
                             f"({' '.join(errors[0].split())[:200]}); {advice}it can be trained, not served here")
    for r in requests:
        wrong = _first_wrong(model, r.prompt, r.generated)
        if wrong is not None:
            raise ModelLoadError(f"model: {family}: kubetune's batched decoding gives another token than the model's "
                                 f"own forward at step {wrong + 1}; {advice}it can be trained, not served here")


def _first_wrong(model: Any, prompt: list[int], generated: list[int]) -> int | None:
    """The first generated token that is not the greedy choice of a full forward (ties within 1e-3 of the logits'
    scale pass: half precision may order them either way)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + generated], device=device), use_cache=False).logits[0].float()
    for i, token in enumerate(generated):
        row = logits[len(prompt) - 1 + i]
        if float(row.max() - row[token]) > 1e-3 * max(1.0, float(row.abs().max())):
            return i
    return None
