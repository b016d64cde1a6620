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

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_k == 1


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


def next_tokens(logits: Any, samplings: list[Sampling], histories: list[Any], generators: list[Any]) -> list[int]:
    """One token per row of `logits` [B, V]; greedy rows share one argmax, the others are sampled row by row."""
    import torch

    logits = logits.float()
    for row, (s, seen) in enumerate(zip(samplings, histories)):
        if s.repetition_penalty != 1.0 and len(seen):
            seen = seen[seen >= 0]  # LLaVA's image placeholders are not vocabulary
            scores = logits[row, seen]
            logits[row, seen] = torch.where(scores < 0, scores * s.repetition_penalty, scores / s.repetition_penalty)
    chosen = logits.argmax(dim=-1).tolist()
    for row, (s, g) in enumerate(zip(samplings, generators)):
        if not s.greedy:
            chosen[row] = _sample(logits[row], s, g)
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
        scores = scores.index_fill(0, index[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=g).item())
