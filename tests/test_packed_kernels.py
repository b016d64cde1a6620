"""Every kernel behind the packed attention equals attention over each sample alone: the gather-and-SDPA path on
every machine, FlexAttention's forward on a CPU (it has no CPU backward), and on a CUDA machine varlen flash attention
and FlexAttention forward and backward (bench/gpu/run.sh runs this file there; CI has no GPU)."""

import pytest
import torch

from kubetune.model import packed_kernels
from kubetune.model.attention import Variant, attend, attend_packed

LENGTHS = [[37, 5, 64, 1, 21], [128]]  # two rows: a row always starts a sample
CUDA = torch.cuda.is_available()
VARIANTS = {"plain": Variant(), "window": Variant(window=16), "softcap": Variant(softcap=5.0)}


def packed_inputs(device, dtype, heads=4, kv_heads=2, dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    length = max(sum(row) for row in LENGTHS)
    q, k, v = (torch.randn(len(LENGTHS), h, length, dim, generator=gen).to(device, dtype)
               for h in (heads, kv_heads, kv_heads))
    position_ids = torch.zeros(len(LENGTHS), length, dtype=torch.long)
    for r, row in enumerate(LENGTHS):
        position_ids[r] = torch.cat([torch.arange(n) for n in row])
    return q, k, v, position_ids.to(device)


def each_sample_alone(q, k, v, variant, scaling):
    """(B, S, H, D): every sample attended on its own by the reference `attend` (fp32)."""
    out = torch.zeros(q.shape[0], q.shape[2], q.shape[1], v.shape[-1], dtype=torch.float32, device=q.device)
    for r, row in enumerate(LENGTHS):
        start = 0
        for n in row:
            piece = [t[r:r + 1, :, start:start + n].float() for t in (q, k, v)]
            piece[1], piece[2] = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in piece[1:])
            out[r, start:start + n] = attend(*piece, scaling, 0.0, variant)[0].transpose(0, 1)
            start += n
    return out


def kernels_here():
    found = [("segment", "cpu", torch.float32, True), ("flex", "cpu", torch.float32, False)]
    if CUDA:
        found += [("segment", "cuda", torch.bfloat16, True), ("flex", "cuda", torch.bfloat16, True),
                  ("flex", "cuda", torch.float32, True)]
        if packed_kernels._varlen_parameters():
            found.append(("varlen", "cuda", torch.bfloat16, True))
    return found


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kernel,device,dtype,backward", kernels_here())
def test_kernel_equals_each_sample_alone(kernel, device, dtype, backward, variant):
    if kernel == "varlen" and variant == "softcap":
        pytest.skip("varlen takes no soft-capping: such layers go to flex (test_choice_follows_the_layer)")
    q, k, v, position_ids = packed_inputs(device, dtype)
    scaling = 0.2
    # bf16: its own rounding; fp32 on a GPU: kernels may multiply in TF32. A mask or window error is of order 1.
    tolerance = 2e-2 if dtype == torch.bfloat16 else 2e-3 if device == "cuda" else 1e-5
    reference = each_sample_alone(q, k, v, VARIANTS[variant], scaling)
    inputs = [t.detach().requires_grad_(backward) for t in (q, k, v)]
    with packed_kernels.forced(kernel), torch.set_grad_enabled(backward):
        got = attend_packed(*inputs, position_ids, scaling, 0.0, VARIANTS[variant])
    assert got.shape == reference.shape
    assert (got.float() - reference).abs().max() <= tolerance * reference.abs().max()
    if backward:
        ref_inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
        (each_sample_alone(*ref_inputs, VARIANTS[variant], scaling) * reference).sum().backward()
        (got.float() * reference).sum().backward()
        for mine, theirs in zip(inputs, ref_inputs):
            assert (mine.grad.float() - theirs.grad).abs().max() <= tolerance * theirs.grad.abs().max()


def test_choice_follows_the_layer():
    q, k, v, _ = packed_inputs("cpu", torch.float32)
    assert packed_kernels.choose(q, v, None, 0.0, Variant()) == "segment"  # no FlexAttention backward on a CPU
    with packed_kernels.forced("flex"):
        assert packed_kernels.choose(q, v, None, 0.0, Variant()) == "flex"
        assert packed_kernels.choose(q, v, None, 0.0, Variant(sinks=torch.zeros(4))) == "segment"
    with pytest.raises(ValueError, match="one of varlen, flex, segment"):
        with packed_kernels.forced("flash"):
            pass
    if CUDA:
        q, k, v, _ = packed_inputs("cuda", torch.bfloat16)
        expected = "varlen" if packed_kernels._varlen_parameters() else "flex"
        assert packed_kernels.choose(q, v, None, 0.0, Variant()) == expected
        assert packed_kernels.choose(q, v, None, 0.0, Variant(softcap=5.0)) == "flex"
        assert packed_kernels.choose(q, v, None, 0.0, Variant(sinks=torch.zeros(4))) == "segment"
        assert packed_kernels.choose(q.float(), v.float(), None, 0.0, Variant()) == "flex"


def test_layout_is_found_once_per_batch():
    _, _, _, position_ids = packed_inputs("cpu", torch.float32)
    first = packed_kernels.layout(position_ids)
    assert packed_kernels.layout(position_ids) is first
    assert first.cu_seqlens.tolist() == [0, 37, 42, 106, 107, 128, 256]
    assert first.max_length == 128
    position_ids[0, 0] = 0  # written in place: a new batch
    assert packed_kernels.layout(position_ids) is not first
