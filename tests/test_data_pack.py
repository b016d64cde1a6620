"""Packing: whole samples, nothing dropped, boundaries and position ids, and no attention across samples."""

import random

import pytest
import torch

from kubetune.data.collate import collate, cu_seqlens
from kubetune.data.pack import pack, padded_waste, report


def covered(lengths, sequences):
    seen = {}
    for seq in sequences:
        for idx, start, end in seq:
            seen.setdefault(idx, []).append((start, end))
    return {idx: sorted(spans) for idx, spans in seen.items()}


@pytest.mark.parametrize("seed", range(5))
def test_every_token_lands_exactly_once_and_fitting_samples_stay_whole(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(500)]
    cap = 256
    sequences = pack(lengths, cap, shuffle=True, seed=seed)
    assert all(sum(e - s for _, s, e in seq) <= cap for seq in sequences)
    spans = covered(lengths, sequences)
    assert set(spans) == set(range(len(lengths)))
    for idx, n in enumerate(lengths):
        merged = spans[idx]
        assert merged[0][0] == 0 and merged[-1][1] == n  # head and tail both present
        assert all(a[1] == b[0] for a, b in zip(merged, merged[1:]))  # contiguous, no overlap, no gap
        if n <= cap:
            assert len(merged) == 1  # a sample that fits is never cut
    rep = report(lengths, sequences, cap)
    assert rep.split_samples == sum(n > cap for n in lengths)
    assert rep.tokens == sum(lengths)
    # Best-fit decreasing leaves little room: far less padding than padding every sample to the cap.
    assert rep.padding_waste < 0.05 < padded_waste(lengths, cap)


def test_pack_is_deterministic_and_shuffle_changes_order():
    lengths = [5, 9, 3, 7, 1, 8, 2]
    assert pack(lengths, 10, seed=1) == pack(lengths, 10, seed=1)
    assert pack(lengths, 10, shuffle=False) == pack(lengths, 10, shuffle=False)


def test_collate_position_ids_restart_per_sample_and_padding():
    batch = collate([{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lens": [2, 3]},
                     {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}], pad_to_multiple_of=4)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["labels"][1].tolist() == [-100, 2, 3, -100, -100, -100, -100, -100]
    # A label that starts a new sample is never predicted across the boundary.
    assert batch["labels"][0].tolist() == [5, 6, -100, 8, 9, -100, -100, -100]
    assert batch["num_tokens"] == 6
    assert cu_seqlens([2, 3]) == [0, 2, 5]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_samples_never_attend_to_each_other(tiny_dir, attn):
    from transformers import AutoModelForCausalLM

    from kubetune.model.packed import packed_forward

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32, attn_implementation=attn).eval()
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(5, 700, (n,), generator=gen).tolist() for n in (13, 9, 20, 1, 30)]

    def per_sample_loss(batch, row, lens):
        with torch.no_grad():
            logits = packed_forward(model, batch).logits[row]
        out, off = [], 0
        for n in lens:
            if n > 1:
                out.append(torch.nn.functional.cross_entropy(
                    logits[off:off + n - 1], batch["labels"][row, off + 1:off + n], reduction="sum").item())
            off += n
        return out

    alone = [per_sample_loss(collate([{"input_ids": s, "labels": s}]), 0, [len(s)]) for s in samples]
    alone = [x for a in alone for x in a]
    flat = [t for s in samples for t in s]
    lens = [len(s) for s in samples]
    packed = collate([{"input_ids": flat, "labels": flat, "seq_lens": lens},
                      {"input_ids": samples[0], "labels": samples[0]}])  # second row forces padding on the first
    got = per_sample_loss(packed, 0, lens)
    assert len(got) == len(alone)
    for a, b in zip(got, alone):
        assert abs(a - b) <= 1e-5 * abs(b)
    # The check is sensitive: the same tokens packed without restarting positions give different losses.
    leaky = per_sample_loss(collate([{"input_ids": flat, "labels": flat}]), 0, lens)
    assert any(abs(a - b) > 1e-3 for a, b in zip(leaky[1:], alone[1:]))


@pytest.mark.parametrize("seed", range(3))
def test_a_token_budget_packs_pieces_of_max_length_into_longer_sequences(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 900) for _ in range(400)]
    budget, piece = 2048, 512
    sequences = pack(lengths, budget, shuffle=True, seed=seed, piece_length=piece)
    assert all(sum(e - s for _, s, e in seq) <= budget for seq in sequences)
    assert all(e - s <= piece for seq in sequences for _, s, e in seq)  # no sample piece longer than maxLength
    spans = covered(lengths, sequences)
    for idx, n in enumerate(lengths):
        merged = spans[idx]
        assert merged[0][0] == 0 and merged[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(merged, merged[1:]))
        assert len(merged) == -(-n // piece)  # cut only where it must be, into as few pieces as maxLength allows
    assert report(lengths, sequences, budget).padding_waste < 0.02
    assert len(sequences) < len(pack(lengths, piece, seed=seed)) / 3
