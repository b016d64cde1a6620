"""Optimizer and learning-rate schedule, XTuner's by default: LinearLR warm-up from 1e-5·lr over `warmupRatio` of the
run, then cosine to `minLrRatio`·lr (or linear, or constant), in mmengine's arithmetic."""

from __future__ import annotations

import math
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import TrainingSpec

    from .clock import Clock


def lr_factor(position: int, length: int, warmup: int, kind: str, start: float = 1e-5, floor: float = 0.0) -> float:
    """Multiplier of the peak learning rate at schedule position `position` (0-based) of `length`, as mmengine's
    LinearLR warm-up chained with CosineAnnealingLR (or LinearLR, or nothing) computes it: the warm-up reaches the
    peak on its last position; a one-position warm-up never leaves `start`, and the decay then runs from there;
    cosine ends one position short of `floor`, linear decay reaches it on the last position."""
    if warmup > 0 and position < warmup:
        return start if warmup == 1 else start + (1 - start) * position / (warmup - 1)
    peak = start if warmup == 1 else 1.0
    if kind == "constant":
        return peak
    done = position - warmup
    if kind == "linear":
        return peak + (floor - peak) * min(1.0, done / max(1, length - warmup - 1))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done / max(1, length - warmup))))


def build_optimizer(params: list[Any], spec: TrainingSpec) -> Any:
    import torch

    opt = spec.optimizer
    kind = opt.type.value
    betas = tuple(opt.betas)
    if kind in ("AdamW", "Adam"):
        cls = torch.optim.AdamW if kind == "AdamW" else torch.optim.Adam
        return cls(params, lr=opt.lr, betas=betas, weight_decay=opt.weight_decay, eps=opt.eps, **_fused(params))
    if kind == "SGD":
        return torch.optim.SGD(params, lr=opt.lr, momentum=betas[0], weight_decay=opt.weight_decay)
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if kind == "PagedAdamW8bit" else bnb.optim.AdamW8bit
    return cls(params, lr=opt.lr, betas=betas, weight_decay=opt.weight_decay, eps=opt.eps)


def _fused(params: list[Any]) -> dict[str, bool]:
    """One fused kernel for the whole update (torch's fused Adam, CPU and CUDA) instead of a loop over tensors, where
    every parameter is a floating-point tensor on one such device; else the multi-tensor (foreach) path."""

    devices = {p.device.type for p in params}
    if len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True} if devices == {"cuda"} else {}


def build_scheduler(optimizer: Any, clock: Clock, spec: TrainingSpec) -> Any:
    """One value per optimizer step, read at the step's schedule position: by optimizer steps its index, by
    iterations its window's last micro-batch (mmengine moves the schedule every micro-batch)."""
    import torch

    length = clock.iterations if clock.by_iteration else clock.steps
    if clock.by_iteration and spec.max_epochs:  # mmengine: int(the warm-up's end in epochs x an epoch's length)
        span = spec.warmup_ratio * spec.max_epochs * clock.per_epoch
    else:
        span = spec.warmup_ratio * length
    # A ratio an import derived from a whole number of iterations (3 of 18) comes back as that number.
    warmup = round(span) if abs(span - round(span)) < 1e-6 else int(span)
    kind, start, floor = spec.lr_schedule.value, spec.warmup_start_factor, spec.min_lr_ratio
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(clock.lr_position(step), length, warmup, kind, start, floor))
