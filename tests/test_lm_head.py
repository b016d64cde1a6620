"""The chunked head-and-loss (train/lm_head.py) equals transformers' logits path: the SFT loss and the preference
methods' per-token log-probabilities, their gradients for the hidden states, the weight and the bias, across chunk
boundaries, with the post-head soft-capping and scaling some families apply (fp32, ≤ 1e-5 relative)."""

import pytest
import torch

from kubetune.data.encode import IGNORE_INDEX
from kubetune.train import lm_head
from kubetune.train.lm_head import PostHead

VOCAB, HIDDEN, TOKENS = 1000, 24, 70


def inputs(seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, HIDDEN, generator=gen, dtype=torch.float64).float()
    weight = torch.randn(VOCAB, HIDDEN, generator=gen) * 0.3
    b = torch.randn(VOCAB, generator=gen) if bias else None
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=gen)
    targets[::7] = IGNORE_INDEX
    return hidden, weight, b, targets


def plain_logits(hidden, weight, bias, post):
    z = torch.nn.functional.linear(hidden, weight, bias).float() * post.scale
    return torch.tanh(z / post.softcap) * post.softcap if post.softcap else z


def close(a, b, rel=1e-5):
    return (a - b).abs().max() <= rel * max(b.abs().max(), 1e-12)


POSTS = {"plain": PostHead(), "softcap": PostHead(softcap=3.0), "scale": PostHead(scale=0.25),
         "both": PostHead(scale=0.5, softcap=2.0)}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(lm_head, "CHUNK_VALUES", 16 * VOCAB)  # 16 tokens a chunk: 5 chunks, the last one short


@pytest.mark.parametrize("post", POSTS)
@pytest.mark.parametrize("trained", ["all", "hidden"])  # full fine-tuning; LoRA (frozen head)
def test_sft_loss_and_gradients_equal_the_logits_path(post, trained):
    def run(loss_fn):
        hidden, weight, bias, targets = inputs()
        leaves = [hidden] + ([weight, bias] if trained == "all" else [])
        for t in leaves:
            t.requires_grad_()
        loss = loss_fn(hidden, weight, bias, targets)
        (loss * 0.37).backward()
        return loss.detach(), [t.grad for t in leaves]

    def reference(hidden, weight, bias, targets):
        return torch.nn.functional.cross_entropy(plain_logits(hidden, weight, bias, POSTS[post]), targets,
                                                 ignore_index=IGNORE_INDEX, reduction="sum")

    expected, expected_grads = run(reference)
    got, grads = run(lambda h, w, b, t: lm_head._sft_loss(h, w, b, t, POSTS[post]))
    assert close(got, expected)
    for mine, theirs in zip(grads, expected_grads):
        assert close(mine, theirs)


@pytest.mark.parametrize("post", POSTS)
def test_token_logps_and_gradients_equal_the_logits_path(post):
    weights = torch.linspace(-1, 2, TOKENS)  # a different gradient for every token, as DPO's per-sequence terms give

    def run(logps_fn):
        hidden, weight, bias, targets = inputs(1)
        leaves = [hidden.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()]
        logps = logps_fn(hidden, weight, bias, targets)
        (logps * weights).sum().backward()
        return logps.detach(), [t.grad for t in leaves]

    def reference(hidden, weight, bias, targets):
        out = type("Out", (), {"logits": plain_logits(hidden, weight, bias, POSTS[post])})
        return lm_head.LogitsHead().token_logps(None, out, targets)

    expected, expected_grads = run(reference)
    got, grads = run(lambda h, w, b, t: lm_head._token_logps(h, w, b, t, POSTS[post]))
    assert close(got, expected)
    assert (got[::7] == 0).all()  # unlabelled tokens count for nothing
    for mine, theirs in zip(grads, expected_grads):
        assert close(mine, theirs)


def test_no_gradients_asked_none_computed():
    hidden, weight, bias, targets = inputs(bias=False)
    with torch.no_grad():
        loss = lm_head._sft_loss(hidden, weight, None, targets, PostHead())
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=IGNORE_INDEX,
                                                 reduction="sum")
    assert close(loss, expected)


def test_chunks_hold_a_fixed_number_of_logits(monkeypatch):
    monkeypatch.undo()  # the real size, not small_chunks'
    assert lm_head.chunk_tokens(151_936) == (1 << 25) // 151_936 == 220
    assert lm_head.chunk_tokens(10 ** 9) == 16


# Liger's Triton kernels run on CUDA only: this test exists there (bench/gpu/run.sh runs this file), not on a CPU.
LIGER = torch.cuda.is_available() and lm_head.liger_installed()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def liger_head_equals_the_chunked_head(dtype):
    from types import SimpleNamespace

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace()
            self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)

        def get_output_embeddings(self):
            return self.lm_head

    model = Inner().cuda().to(dtype)
    hidden, _, _, targets = inputs()
    results = []
    for head in (lm_head.ChunkedHead(), lm_head.LigerHead()):
        h = hidden.cuda().to(dtype).requires_grad_()
        model.zero_grad()
        loss = head.loss_sum(model, SimpleNamespace(logits=h), targets.cuda())
        loss.backward()
        results.append((loss.detach().float(), h.grad.float(), model.lm_head.weight.grad.float()))
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for chunked, liger in zip(*results):
        assert close(liger, chunked, tolerance)


if LIGER:
    test_liger_head_equals_the_chunked_head = liger_head_equals_the_chunked_head
