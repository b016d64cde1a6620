"""Continuous batching: one thread owns the model; requests join the running batch between decode steps (each is
prefilled on its own, then its KV cache is left-padded into the batch) and leave as soon as they finish, so a long
answer never holds a short one back and the batch never waits to fill."""

from __future__ import annotations

import collections
import inspect
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .sampling import Sampling, SamplingFailed, generator, next_tokens
from .text import Detokenizer


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry later."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclass
class Event:
    text: str = ""
    tokens: int = 0
    finished: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None


@dataclass
class Request:
    prompt: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    done: bool = False
    generated: list[int] = field(default_factory=list)
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    detok: Detokenizer | None = None
    rng: Any = None
    adapter: str | None = None  # the PEFT adapter this request's rows go through; None: the base weights

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 16, max_waiting: int = 64,
                 eos_ids: set[int] | None = None, observer: Any = None, per_row_adapters: bool = False):
        import torch

        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.eos_ids = set(eos_ids or ())
        self.observer = observer
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.cv = threading.Condition()
        self.stopping = False
        self.accepted = self.finished = 0  # counted apart from the lists: a request being prefilled is in neither
        self.batch: _Batch | None = None
        self.torch = torch
        # transformers 5.x renamed `past_key_values` to `cache` (the old name warns, then goes away in 5.40).
        language_model = model.llm if hasattr(model, "projector") else model  # LLaVA passes the cache through
        accepted = inspect.signature(language_model.forward).parameters
        self.cache_arg = "cache" if "cache" in accepted else "past_key_values"
        # Given, not derived from the cache: a cache of recurrent layers only has no sequence length to derive it from.
        self.positions_arg = "cache_position" in accepted
        # Adapters kept beside the base weights (model.load.load_adapters): every forward names, row by row, the
        # adapter that row goes through.
        self.lora = per_row_adapters
        self.thread = threading.Thread(target=self._loop, name="kubetune-engine", daemon=True)
        self.thread.start()

    # --- called from any thread -----------------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        with self.cv:
            if self.stopping:
                raise EngineStopped("the server is shutting down")
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            request.detok = Detokenizer(self.tokenizer, request.sampling.stop)
            request.rng = generator(request.sampling, self.device)
            self.waiting.append(request)
            self.accepted += 1
            self.cv.notify()
        self._observe("queued", request)
        return request

    def stats(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        waiting = len(self.waiting)
        return self.accepted - self.finished - waiting, waiting

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; with `drain`, finish the ones already accepted, else abort them."""
        with self.cv:
            self.stopping = True
            if not drain:
                for r in list(self.waiting) + self.running:
                    r.cancel()
            self.cv.notify()
        self.thread.join(timeout)

    # --- the engine thread ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.waiting and not self.running and not self.stopping:
                    self.cv.wait()
                if self.stopping and not self.waiting and not self.running:
                    return
                joining: list[Request] = []
                while self.waiting and len(self.running) + len(joining) < self.max_batch:
                    joining.append(self.waiting.popleft())
            try:
                with self.torch.inference_mode():
                    for r in joining:
                        self._prefill(r)
                    if self.running:
                        self._decode()
            except Exception as exc:  # a failing forward must fail its requests, not hang their clients
                for r in self.running + joining:  # a joining request may be running already: _finish runs once
                    self._finish(r, "error", error=f"{type(exc).__name__}: {exc}")
                self.running, self.batch = [], None

    def _prefill(self, r: Request) -> None:
        if r.cancelled:
            return self._finish(r, "abort")
        r.scheduled_at = time.monotonic()
        self._observe("scheduled", r)
        ids = self.torch.tensor([r.prompt], device=self.device)
        cache = new_cache(self.model)
        where = {"cache_position": self.torch.arange(len(r.prompt), device=self.device)} if self.positions_arg else {}
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self.cache_arg: cache}, **where,
                         **self._adapters([r]))
        token = next_tokens(out.logits[:, -1], [r.sampling], [r.prompt], [r.rng])[0]
        if isinstance(token, SamplingFailed):
            return self._finish(r, "error", error=str(token))
        if self._accept(r, token):
            return
        self.running.append(r)
        self.batch = _Batch.join(self.batch, _Batch.single(cache, len(r.prompt), token, self.torch))

    def _decode(self) -> None:
        b = self.batch
        assert b is not None  # decoding runs only while requests are running
        mask = b.extended_mask()
        extra: dict[str, Any] = {"cache_position": self.torch.tensor([mask.shape[1] - 1], device=self.device)
                                 } if self.positions_arg else {}
        if b.attends:  # recurrent layers keep one state per row: the left padding never reached them
            extra["attention_mask"] = mask
        out = self.model(input_ids=b.last.unsqueeze(1), position_ids=b.positions.unsqueeze(1), use_cache=True,
                         **{self.cache_arg: b.cache}, **extra, **self._adapters(self.running))
        b.positions = b.positions + 1  # the cache grew in place
        histories = [self.torch.tensor(r.prompt + r.generated, device=self.device) if r.sampling.repetition_penalty != 1
                     else [] for r in self.running]
        tokens = next_tokens(out.logits[:, -1], [r.sampling for r in self.running], histories,
                             [r.rng for r in self.running])
        keep = [i for i, (r, t) in enumerate(zip(self.running, tokens)) if not self._take(r, t)]
        b.last = self.torch.tensor([t if isinstance(t, int) else 0 for t in tokens], device=self.device)
        if len(keep) < len(self.running):
            self.running = [self.running[i] for i in keep]
            self.batch = b.select(keep) if keep else None

    def _adapters(self, rows: list[Request]) -> dict[str, Any]:
        # PEFT groups the rows by adapter inside each LoRA layer; "__base__" rows skip the update.
        return {"adapter_names": [r.adapter or "__base__" for r in rows]} if self.lora else {}

    def _take(self, r: Request, token: int | SamplingFailed) -> bool:
        if isinstance(token, SamplingFailed):
            self._finish(r, "error", error=str(token))
            return True
        return self._accept(r, token)

    def _accept(self, r: Request, token: int) -> bool:
        """Record one generated token; return True when the request is finished (and has been told)."""
        now = time.monotonic()
        if r.first_token_at is None:
            r.first_token_at = now
        self._observe("token", r, now)
        r.last_token_at = now
        if r.cancelled:
            self._finish(r, "abort")
            return True
        if token in self.eos_ids and not r.sampling.ignore_eos:
            self._finish(r, "stop")
            return True
        r.generated.append(token)
        assert r.detok is not None  # submit() gives every request its detokenizer
        text = r.detok.add(token)
        if r.detok.stopped:
            self._finish(r, "stop", text)
            return True
        if len(r.generated) >= r.sampling.max_tokens:
            self._finish(r, "length", text + r.detok.flush())
            return True
        if text:
            r.emit(Event(text=text, tokens=len(r.generated)))
        return False

    def _finish(self, r: Request, reason: str, text: str = "", error: str | None = None) -> None:
        if r.done:  # counted once, or the running gauge and stats() drift below zero
            return
        r.done = True
        if reason == "stop" and r.detok is not None and not r.detok.stopped:
            text += r.detok.flush()
        self.finished += 1
        self._observe("finished", r, reason)
        r.emit(Event(text=text, tokens=len(r.generated), finished=reason, error=error))

    def _observe(self, what: str, r: Request, *args: Any) -> None:
        if self.observer is not None:
            getattr(self.observer, what)(r, *args)


class _Batch:
    """The running batch's cache, left-padded to one length, with its attention mask and next positions. Attention
    layers keep keys and values along the sequence (padded on the left to join); the state-space, convolution and
    linear-attention layers of hybrid models keep a fixed-size state per row (joined as rows)."""

    def __init__(self, layers: list[_Layer], mask: Any, positions: Any, last: Any, torch: Any):
        self.torch = torch
        self.cache = _cache(layers)
        self.mask, self.positions, self.last = mask, positions, last

    @classmethod
    def single(cls, cache: Any, length: int, token: int, torch: Any) -> "_Batch":
        layers = [_Layer.of(layer) for layer in cache.layers]
        if not any(layer.tensors() for layer in layers):
            raise RuntimeError("the model keeps no cache kubetune can batch (its layers return no keys, values or "
                               "states)")
        device = next(t for layer in layers for t in layer.tensors()).device
        return cls(layers, torch.ones(1, length, dtype=torch.long, device=device),
                   torch.tensor([length], device=device), torch.tensor([token], device=device), torch)

    @classmethod
    def join(cls, a: "_Batch | None", b: "_Batch") -> "_Batch":
        if a is None:
            return b
        torch = a.torch
        length = max(a.mask.shape[1], b.mask.shape[1])
        layers = [_Layer.of(x).join(_Layer.of(y), length, torch) for x, y in zip(a.cache.layers, b.cache.layers)]
        mask = torch.cat([_pad_mask(a.mask, length, torch), _pad_mask(b.mask, length, torch)])
        return cls(layers, mask, torch.cat([a.positions, b.positions]), torch.cat([a.last, b.last]), torch)

    @property
    def attends(self) -> bool:
        """Whether any layer keeps keys and values (attention, which the padding mask is for)."""
        return any(getattr(layer, "keys", None) is not None for layer in self.cache.layers)

    def extended_mask(self) -> Any:
        self.mask = self.torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        return self.mask

    def select(self, rows: list[int]) -> "_Batch":
        index = self.torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # Columns that are padding in every remaining row are dead weight: drop them.
        start = int((mask.sum(dim=0) > 0).nonzero()[0])
        layers = [_Layer.of(layer).select(index, start) for layer in self.cache.layers]
        return _Batch(layers, mask[:, start:], self.positions.index_select(0, index),
                      self.last.index_select(0, index), self.torch)


@dataclass
class _Layer:
    """One layer's cached tensors: keys and values (attention), conv and recurrent states by index (the rest)."""

    kv: tuple[Any, Any] | None = None
    conv: dict[int, Any] = field(default_factory=dict)
    recurrent: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, layer: Any) -> "_Layer":
        kv = (layer.keys, layer.values) if getattr(layer, "keys", None) is not None else None
        conv = {i: t for i, t in getattr(layer, "conv_states", {}).items() if t is not None}
        recurrent = {i: t for i, t in getattr(layer, "recurrent_states", {}).items() if t is not None}
        return cls(kv, conv, recurrent)

    def tensors(self) -> list[Any]:
        return [*(self.kv or ()), *self.conv.values(), *self.recurrent.values()]

    def join(self, other: "_Layer", length: int, torch: Any) -> "_Layer":
        kv = None
        if self.kv is not None and other.kv is not None:
            kv = (torch.cat([_pad(self.kv[0], length), _pad(other.kv[0], length)]),
                  torch.cat([_pad(self.kv[1], length), _pad(other.kv[1], length)]))
        return _Layer(kv, {i: torch.cat([t, other.conv[i]]) for i, t in self.conv.items()},
                      {i: torch.cat([t, other.recurrent[i]]) for i, t in self.recurrent.items()})

    def select(self, index: Any, start: int) -> "_Layer":
        kv = None if self.kv is None else (self.kv[0].index_select(0, index)[:, :, start:],
                                           self.kv[1].index_select(0, index)[:, :, start:])
        return _Layer(kv, {i: t.index_select(0, index) for i, t in self.conv.items()},
                      {i: t.index_select(0, index) for i, t in self.recurrent.items()})


def _cache(layers: list[_Layer]) -> Any:
    """A transformers cache holding these tensors, its layer types matching what each layer keeps."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, LinearAttentionAndFullAttentionLayer, LinearAttentionLayer

    cache = DynamicCache()
    if not any(layer.conv or layer.recurrent for layer in layers):
        for i, layer in enumerate(layers):
            if layer.kv is not None:
                cache.update(*layer.kv, i)
        return cache
    built = []
    for layer in layers:
        states = max([*layer.conv, *layer.recurrent], default=0) + 1
        if layer.kv is not None and (layer.conv or layer.recurrent):
            target: Any = LinearAttentionAndFullAttentionLayer(number_of_states=states)
        elif layer.kv is not None:
            target = DynamicLayer()
        else:
            target = LinearAttentionLayer(number_of_states=states)
        if layer.kv is not None:
            target.update(*layer.kv)
        for i, t in layer.conv.items():
            target.update_conv_state(t, state_idx=i)
        for i, t in layer.recurrent.items():
            target.update_recurrent_state(t, state_idx=i)
        built.append(target)
    cache.layers = built
    return cache


def new_cache(model: Any) -> Any:
    """The cache a prefill fills: the model's own layer types where it has state-space or linear-attention layers
    (their states need their own slots), else transformers' default."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    try:
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
    except (KeyError, ValueError, TypeError, AttributeError):  # a config transformers cannot read layer types from
        return DynamicCache()
    if any(hasattr(layer, "conv_states") for layer in cache.layers):
        return cache
    return DynamicCache()


def _pad(t: Any, length: int) -> Any:
    import torch.nn.functional as F

    return F.pad(t, (0, 0, length - t.shape[2], 0)) if t.shape[2] < length else t


def _pad_mask(mask: Any, length: int, torch: Any) -> Any:
    missing = length - mask.shape[1]
    return torch.cat([mask.new_zeros(mask.shape[0], missing), mask], dim=1) if missing else mask
