"""The language-model head and the loss over it, without ever holding the whole vocabulary's logits.

transformers projects every labelled token onto the vocabulary and the loss then reads those logits: at Qwen's 152k
vocabulary and 8k labelled tokens that is 4.9 GB in fp32 before its gradient, the first thing a long-context
fine-tune runs out of. Here the model's forward stops at the final hidden states (its head is swapped for the
identity for the call) and the head's projection and the loss run together a few hundred tokens at a time:

- `chunked` (plain PyTorch, any device): the SFT loss computes its gradients while it runs, chunk by chunk, as
  Liger-Kernel's fused linear cross-entropy does (no logits kept for the backward pass, no extra matrix product);
  the preference methods' per-token log-probabilities recompute each chunk's logits in the backward pass instead
  (their gradient differs per sequence, so it cannot be folded in ahead).
- `liger`: Liger-Kernel's Triton version of the same, on CUDA when the `liger-kernel` package is installed (SFT).
- `logits`: transformers' way.

What some families do after their head is applied here too (Gemma 2/3's final soft-capping, Cohere's logit scale,
Granite's logit scaling), and a model's first check compares this path's logits with its own forward's, so a family
that does something else after its head is found before training, never trained wrongly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from kubetune.data.encode import IGNORE_INDEX
from kubetune.model.attention import generation_attention, language_model
from kubetune.model.tokenizer import ModelLoadError

from .targets import token_loss_sum

KERNELS = ("auto", "logits", "chunked", "liger")
# Logits per chunk (tokens × vocabulary): 32M fp32 values, 128 MB, whatever the vocabulary.
CHUNK_VALUES = 1 << 25


@dataclass(frozen=True)
class PostHead:
    """What the model does to its head's output before returning it: logits · scale, then cap · tanh(logits / cap)."""

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, inner: Any) -> "PostHead":
        config = inner.config
        scale = float(getattr(inner, "logit_scale", None) or 1.0)  # Cohere multiplies
        scaling = getattr(config, "logits_scaling", None)  # Granite divides
        if scaling:
            scale /= float(scaling)
        return cls(scale, getattr(config, "final_logit_softcapping", None) or None)

    def apply(self, z: Any) -> Any:
        """fp32 logits → what the model returns, and the derivative of that with respect to z (None: 1)."""
        import torch

        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap is None:
            return z, None
        t = torch.tanh(z / self.softcap)
        return t * self.softcap, (1 - t * t) * self.scale


@contextlib.contextmanager
def hidden_states_out(inner: Any):
    """While inside, the model's forward returns its final hidden states where it would return logits."""
    head = inner.get_output_embeddings()
    config = inner.config
    saved = {"softcap": getattr(config, "final_logit_softcapping", None),
             "scaling": getattr(config, "logits_scaling", None), "scale": getattr(inner, "logit_scale", None)}
    head.forward = _identity
    if saved["softcap"] is not None:
        config.final_logit_softcapping = None
    if saved["scaling"] is not None:
        config.logits_scaling = 1.0
    if saved["scale"] is not None:
        inner.logit_scale = 1.0
    try:
        yield head
    finally:
        del head.forward
        if saved["softcap"] is not None:
            config.final_logit_softcapping = saved["softcap"]
        if saved["scaling"] is not None:
            config.logits_scaling = saved["scaling"]
        if saved["scale"] is not None:
            inner.logit_scale = saved["scale"]


def _identity(hidden: Any) -> Any:
    return hidden


def chunk_tokens(vocab: int) -> int:
    return max(16, CHUNK_VALUES // vocab)


def _chunk_logits(hidden: Any, weight: Any, bias: Any, post: PostHead) -> tuple[Any, Any]:
    from torch.nn import functional

    # F.linear, as the head's own forward: under autocast it runs in the autocast dtype, as the logits path does.
    return post.apply(functional.linear(hidden, weight, bias).float())


@dataclass
class _Grads:
    """The gradients a chunked pass fills: hidden states (in their dtype), weight and bias (summed in fp32)."""

    h: Any
    w: Any
    b: Any

    @classmethod
    def zeros(cls, needed: tuple[bool, ...], hidden: Any, weight: Any, bias: Any) -> "_Grads":
        import torch

        need_h, need_w, need_b = needed
        return cls(torch.zeros_like(hidden) if need_h else None,
                   torch.zeros_like(weight, dtype=torch.float32) if need_w else None,
                   torch.zeros_like(bias, dtype=torch.float32) if need_b else None)

    def add(self, start: int, dz: Any, h: Any, weight: Any, slope: Any, post: PostHead) -> None:
        """Back-propagate d/d(logits as the model returns them) of one chunk through the post-head and the head."""
        if slope is not None:
            dz *= slope
        elif post.scale != 1.0:
            dz *= post.scale
        if self.h is not None:
            self.h[start:start + dz.shape[0]] = (dz.to(weight.dtype) @ weight).to(self.h.dtype)
        if self.w is not None:
            self.w += dz.t() @ h.float()
        if self.b is not None:
            self.b += dz.sum(0)


def _sft_loss(hidden: Any, weight: Any, bias: Any, targets: Any, post: PostHead) -> Any:
    import torch

    class FusedLoss(torch.autograd.Function):
        """Σ cross-entropy over the labelled tokens; d loss/d (hidden, weight, bias) worked out chunk by chunk while
        the loss is, so the backward pass only scales them by its incoming scalar."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, bias: Any) -> Any:
            grads = _Grads.zeros(ctx.needs_input_grad, hidden, weight, bias)
            total = hidden.new_zeros((), dtype=torch.float32)
            step = chunk_tokens(weight.shape[0])
            for start in range(0, hidden.shape[0], step):
                h, t = hidden[start:start + step], targets[start:start + step]
                with torch.no_grad():
                    z, slope = _chunk_logits(h, weight, bias, post)
                    labelled = t != IGNORE_INDEX
                    lse = torch.logsumexp(z, dim=-1)
                    picked = z.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
                    total += ((lse - picked) * labelled).sum()
                    if not any(ctx.needs_input_grad):
                        continue
                    dz = torch.softmax(z, dim=-1)  # d loss/d z: softmax - onehot, on labelled rows only
                    dz.scatter_add_(1, t.clamp(min=0)[:, None], -torch.ones_like(dz[:, :1]))
                    dz *= labelled[:, None]
                    grads.add(start, dz, h, weight, slope, post)
            ctx.save_for_backward(grads.h, grads.w, grads.b)
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
            return total

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            # The weight's and bias's gradients were summed in fp32; each goes back in its parameter's dtype.
            return tuple(None if g is None else (g * grad).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes))

    return FusedLoss.apply(hidden, weight, bias)


def _token_logps(hidden: Any, weight: Any, bias: Any, targets: Any, post: PostHead) -> Any:
    import torch

    class TokenLogps(torch.autograd.Function):
        """log p(target) of every token ((N,); 0 where unlabelled); the backward pass recomputes each chunk's
        logits from the saved log-sum-exps."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, bias: Any) -> Any:
            out = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
            lses = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
            step = chunk_tokens(weight.shape[0])
            for start in range(0, hidden.shape[0], step):
                t = targets[start:start + step]
                z, _ = _chunk_logits(hidden[start:start + step], weight, bias, post)
                lses[start:start + step] = torch.logsumexp(z, dim=-1)
                picked = z.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
                out[start:start + step] = (picked - lses[start:start + step]) * (t != IGNORE_INDEX)
            ctx.save_for_backward(hidden, weight, bias, lses)
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            hidden, weight, bias, lses = ctx.saved_tensors
            grads = _Grads.zeros(ctx.needs_input_grad, hidden, weight, bias)
            step = chunk_tokens(weight.shape[0])
            for start in range(0, hidden.shape[0], step):
                h, t = hidden[start:start + step], targets[start:start + step]
                z, slope = _chunk_logits(h, weight, bias, post)
                dz = -torch.exp(z - lses[start:start + step, None])  # d logp/d z: onehot - softmax
                dz.scatter_add_(1, t.clamp(min=0)[:, None], torch.ones_like(dz[:, :1]))
                dz *= (grad[start:start + step] * (t != IGNORE_INDEX))[:, None]
                grads.add(start, dz, h, weight, slope, post)
            return (grads.h, None if grads.w is None else grads.w.to(weight.dtype),
                    None if grads.b is None else grads.b.to(bias.dtype))

    return TokenLogps.apply(hidden, weight, bias)


class LogitsHead:
    """transformers' way: the forward returns the logits of every kept position."""

    name = "logits"

    def run(self, forward: Callable[[Any, dict], Any], model: Any, batch: dict) -> Any:
        return forward(model, batch)

    def loss_sum(self, model: Any, out: Any, targets: Any) -> Any:
        return token_loss_sum(out.logits, targets)

    def token_logps(self, model: Any, out: Any, targets: Any) -> Any:
        import torch

        logits = out.logits.reshape(-1, out.logits.size(-1))
        targets = targets.reshape(-1)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != IGNORE_INDEX)


class ChunkedHead(LogitsHead):
    """The forward stops at the hidden states; head and loss run chunk by chunk."""

    name = "chunked"

    def run(self, forward: Callable[[Any, dict], Any], model: Any, batch: dict) -> Any:
        with hidden_states_out(language_model(model)):
            return forward(model, batch)

    def _parts(self, model: Any, out: Any) -> tuple[Any, Any, Any, PostHead]:
        inner = language_model(model)
        head = inner.get_output_embeddings()
        return out.logits.reshape(-1, out.logits.size(-1)), head.weight, head.bias, PostHead.of(inner)

    def loss_sum(self, model: Any, out: Any, targets: Any) -> Any:
        hidden, weight, bias, post = self._parts(model, out)
        return _sft_loss(hidden, weight, bias, targets.reshape(-1), post)

    def token_logps(self, model: Any, out: Any, targets: Any) -> Any:
        hidden, weight, bias, post = self._parts(model, out)
        return _token_logps(hidden, weight, bias, targets.reshape(-1), post)


class LigerHead(ChunkedHead):
    """Liger-Kernel's fused linear cross-entropy (Triton, CUDA) for the SFT loss; log-probabilities as `chunked`."""

    name = "liger"

    def loss_sum(self, model: Any, out: Any, targets: Any) -> Any:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        hidden, weight, bias, post = self._parts(model, out)
        loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum", softcap=post.softcap)(
            weight, hidden, targets.reshape(-1), bias)
        return loss[0] if isinstance(loss, tuple) else loss


def liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def choose(kernel: str, spec: Any, model: Any, device: Any, say: Callable[[str], None]) -> LogitsHead:
    """The head for `training.lossKernel`: `auto` takes liger on CUDA where installed, else chunked, and falls back
    to logits (saying why) where the model rules the others out; an explicit choice the model rules out is refused."""
    if kernel == "logits" or spec.method.type.value == "reward":  # a reward model scores with its own head
        return LogitsHead()
    why = _ruled_out(spec, model, device)
    if why:
        if kernel != "auto":
            raise ModelLoadError(f"training.lossKernel {kernel}: {why}; use logits or auto")
        say(f"loss kernel: logits ({why})")
        return LogitsHead()
    post = PostHead.of(language_model(model))
    liger_ok = device.type == "cuda" and liger_installed() and post.scale == 1.0
    if kernel == "liger" and not liger_ok:
        raise ModelLoadError("training.lossKernel liger: needs a CUDA device and the liger-kernel package, and no "
                             "logit scale (Cohere, Granite); use chunked (plain PyTorch, the same loss) or auto")
    chosen = LigerHead() if kernel == "liger" or (kernel == "auto" and liger_ok) else ChunkedHead()
    say(f"loss kernel: {chosen.name}")
    return chosen


def _ruled_out(spec: Any, model: Any, device: Any) -> str | None:
    import torch

    if spec.model.vision:
        return "LLaVA models compute their logits through the vision wrapper"
    if spec.model.trust_remote_code:
        return "a model's own code (trustRemoteCode) may do anything after its head"
    if spec.training.deepspeed.value.startswith("zero3"):
        return "ZeRO-3 partitions the head's weight outside the model's forward"
    inner = language_model(model)
    head = inner.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return f"the output layer is a {type(head).__name__} (an adapter or quantized layer), not a plain linear one"
    return None if same_logits(model, device) else (
        f"{type(inner).__name__} changes its logits after the head in a way this kernel does not reproduce")


def same_logits(model: Any, device: Any) -> bool:
    """Eight tokens through the model's own forward and through hidden states + head + post-head here: equal? The
    head's input is scaled so that the logits reach ±50, where a soft-cap or a scale shows (random and small
    models' logits are too small for a soft-cap of 30 to change them)."""
    import torch

    inner = language_model(model)
    head = inner.get_output_embeddings()
    ids = (torch.arange(8, device=device) % inner.config.get_text_config().vocab_size)[None]
    batch = {"input_ids": ids, "position_ids": torch.arange(8, device=device)[None]}
    factor = [1.0]
    scaled = head.register_forward_pre_hook(lambda module, args: (args[0] * factor[0],))
    training = inner.training
    inner.eval()  # no dropout: both forwards must see the same network
    try:
        # One short sample: the model's decoding attention computes it exactly, without the packed or
        # sequence-parallel machinery (whose all-to-all would wait for the other ranks).
        with torch.no_grad(), generation_attention(inner):
            largest = inner(**batch, use_cache=False).logits.float().abs().max()
            if not torch.isfinite(largest):  # a diverged or damaged model: its first loss stops the run, named
                return True
            factor[0] = 50.0 / max(float(largest), 1e-6)
            reference = inner(**batch, use_cache=False).logits.float()
            with hidden_states_out(inner):
                hidden = inner(**batch, use_cache=False).logits
            got, _ = _chunk_logits(hidden, head.weight, head.bias, PostHead.of(inner))
    finally:
        scaled.remove()
        inner.train(training)
    return bool(torch.allclose(got, reference, rtol=2e-2, atol=2e-2 * float(reference.abs().max())))
