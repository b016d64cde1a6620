"""Packing whole samples into sequences of maxLength, without cutting samples that fit and without dropping tails.

XTuner's Packer concatenates everything and cuts at fixed offsets, so samples straddle sequences, and it drops each
shard's remainder. Here a sample is only split when it alone is longer than a sequence; every token lands somewhere.
Each sequence records its segment lengths, from which the collator derives position ids that restart per sample,
and the model then keeps samples from attending to each other.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

Piece = tuple[int, int, int]  # (sample index, start, end)


def pack(lengths: list[int], capacity: int, shuffle: bool = True, seed: int = 0,
         piece_length: int | None = None) -> list[list[Piece]]:
    """Best-fit decreasing over the samples; returns sequences as lists of sample pieces. A sample longer than
    `piece_length` (default: `capacity`) is cut into pieces of that length; with a larger `capacity` (a token budget,
    `dataset.maxPackedLength`) a sequence holds several of them."""
    if capacity < 1:
        raise ValueError("capacity must be positive")
    piece_length = min(piece_length or capacity, capacity)
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)  # ties in length then break randomly, and sequences mix sources
    pieces: list[Piece] = []
    full: list[list[Piece]] = []
    for idx in order:
        n = lengths[idx]
        start = 0
        while n - start > piece_length:  # only a sample longer than a whole piece is split
            if piece_length == capacity:
                full.append([(idx, start, start + capacity)])
            else:
                pieces.append((idx, start, start + piece_length))
            start += piece_length
        if n - start > 0:
            pieces.append((idx, start, n))
    pieces.sort(key=lambda p: p[2] - p[1], reverse=True)

    bins: list[list[Piece]] = []
    free: list[tuple[int, int]] = []  # (space left, bin id), sorted
    for piece in pieces:
        size = piece[2] - piece[1]
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            space, bin_id = free.pop(at)
        else:
            space, bin_id = capacity, len(bins)
            bins.append([])
        bins[bin_id].append(piece)
        if space - size > 0:
            bisect.insort(free, (space - size, bin_id))
    sequences = full + bins
    if shuffle:
        rng.shuffle(sequences)
    return sequences


@dataclass
class PackReport:
    samples: int
    sequences: int
    tokens: int
    split_samples: int
    max_length: int

    @property
    def padding_waste(self) -> float:
        """1 − real tokens / (sequences × maxLength): the share of computed positions that are padding."""
        slots = self.sequences * self.max_length
        return 0.0 if slots == 0 else 1 - self.tokens / slots


def report(lengths: list[int], sequences: list[list[Piece]], max_length: int) -> PackReport:
    split = len({idx for seq in sequences for idx, start, end in seq if start > 0 or end < lengths[idx]})
    return PackReport(len(lengths), len(sequences), sum(lengths), split, max_length)


def padded_waste(lengths: list[int], max_length: int) -> float:
    """Padding share without packing, every sample padded to maxLength (truncated to it when longer)."""
    slots = len(lengths) * max_length
    return 0.0 if slots == 0 else 1 - sum(min(n, max_length) for n in lengths) / slots


def padded_to_longest_waste(lengths: list[int], max_length: int, batch_size: int) -> float:
    """Padding share without packing when each batch is padded only to its longest sample."""
    lengths = [min(n, max_length) for n in lengths]
    slots = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                for i in range(0, len(lengths), batch_size))
    return 0.0 if slots == 0 else 1 - sum(lengths) / slots
