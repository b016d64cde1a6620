"""A resumable sampler: the order of every epoch is a pure function of (seed, epoch), so resuming at any position
needs no replay of the data loader (XTuner replays it, issue #991) and every rank agrees on the order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import TrainError


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    gen = torch.Generator()
    gen.manual_seed(seed + epoch)
    return torch.randperm(n, generator=gen).tolist()


@dataclass
class Position:
    """Where the data stream is: the epoch and how many batches of it were consumed (per rank)."""

    epoch: int = 0
    batch: int = 0


class ResumableBatches:
    """Batches of indices for one rank: each epoch's permutation is split across ranks, then into batches."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                 order: Callable[[int, int], list[int]] | None = None):
        if n < world:
            raise TrainError(f"{n} sequences cannot feed {world} data-parallel ranks")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        # (seed, epoch) -> a permutation whose consecutive runs of batch_size x world indices are one step's batches
        self.order = order

    def batches_per_epoch(self) -> int:
        per_rank = self.n // self.world  # drop the ragged tail so every rank takes the same number of steps
        return max(1, per_rank // self.batch_size) if per_rank >= self.batch_size else 1

    def epoch(self, epoch: int, start_batch: int = 0):
        if self.order is not None:
            order = self.order(self.seed, epoch)
        else:
            order = epoch_order(self.n, self.seed, epoch) if self.shuffle else list(range(self.n))
        mine = order[self.rank:self.n - self.n % self.world:self.world]
        for b in range(start_batch, self.batches_per_epoch()):
            yield mine[b * self.batch_size:(b + 1) * self.batch_size]
