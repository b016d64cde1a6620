"""Per-request sampling: each row of a batch keeps its own temperature, top-k/top-p, penalty and seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (benchmarks)

    @property
    def greedy(self) -> bool:
        # Below this, dividing the logits overflows float32 (1e-300 → inf → NaN); vLLM draws the same line.
        return self.temperature < GREEDY_BELOW or self.top_k == 1


GREEDY_BELOW = 1e-5


class SamplingFailed(Exception):
    """One row's numbers went bad (NaN/inf probabilities): that request fails, the batch goes on."""


def generator(sampling: Sampling, device: Any) -> Any:
    """A private RNG per request, so a seeded request gives the same answer whatever else shares its batch."""
    import torch

    if sampling.greedy:
        return None
    g = torch.Generator(device=device)
    if sampling.seed is not None:
        g.manual_seed(sampling.seed)
    else:
        g.seed()
    return g


def next_tokens(logits: Any, samplings: list[Sampling], histories: list[Any],
                generators: list[Any]) -> list[int | SamplingFailed]:
    """One token per row of `logits` [B, V]; greedy rows share one argmax, the others are sampled row by row. A row
    whose sampling fails gets a `SamplingFailed` in its place, so one request never takes its batch down."""
    import torch

    logits = logits.float()
    for row, (s, seen) in enumerate(zip(samplings, histories)):
        if s.repetition_penalty != 1.0 and len(seen):
            seen = torch.as_tensor(seen, dtype=torch.long, device=logits.device)
            seen = seen[seen >= 0]  # LLaVA's image placeholders are not vocabulary
            scores = logits[row, seen]
            logits[row, seen] = torch.where(scores < 0, scores * s.repetition_penalty, scores / s.repetition_penalty)
    chosen: list[int | SamplingFailed] = list(logits.argmax(dim=-1).tolist())
    for row, (s, g) in enumerate(zip(samplings, generators)):
        if not s.greedy:
            try:
                chosen[row] = _sample(logits[row], s, g)
            except (RuntimeError, SamplingFailed) as exc:
                chosen[row] = exc if isinstance(exc, SamplingFailed) else SamplingFailed(str(exc))
    return chosen


def _sample(scores: Any, s: Sampling, g: Any) -> int:
    import torch

    scores = scores / s.temperature
    if 0 < s.top_k < scores.numel():
        kth = torch.topk(scores, s.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p < 1.0:
        ordered, index = torch.sort(scores, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p; the most likely token always stays.
        drop = cumulative - torch.softmax(ordered, dim=-1) >= s.top_p
        drop[0] = False  # a top_p below float32's smallest number would otherwise drop every token
        scores = scores.index_fill(0, index[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        raise SamplingFailed("the sampling probabilities are not finite (check temperature, top_p and top_k)")
    return int(torch.multinomial(probs, 1, generator=g).item())
