"""Optimizer and learning-rate schedule, XTuner's by default: LinearLR warm-up from 1e-5·lr over `warmupRatio` of the
steps, then cosine to 0 (or linear to 0, or constant), all counted in optimizer steps."""

from __future__ import annotations

import math
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import TrainingSpec

WARMUP_START_FACTOR = 1e-5  # XTuner's LinearLR start_factor


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * step / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


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


def build_scheduler(optimizer: Any, total_steps: int, spec: TrainingSpec) -> Any:
    import torch

    warmup = int(round(spec.warmup_ratio * total_steps))
    kind = spec.lr_schedule.value
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, warmup, kind))
