"""The optimisation loop: micro-batches, token-weighted loss over the accumulation window, clipping, AMP, hooks."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

IGNORE_INDEX = -100
STOP_AFTER = os.environ.get("KUBETUNE_STOP_AFTER_STEP")


@dataclass
class Run:
    """Everything the loop and the hooks share."""

    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    batches: Any  # ResumableBatches
    dataset: Any
    collate: Callable[[list[dict]], dict]
    device: Any
    autocast: Any
    accum: int
    max_norm: float
    total_steps: int
    rank: int = 0
    world: int = 1
    step: int = 0
    consumed: int = 0  # micro-batches taken from the stream by this rank
    hooks: list[Any] = field(default_factory=list)
    save: Callable[[int], None] = lambda step: None
    should_save: Callable[[int], bool] = lambda step: False
    all_reduce: Callable[[Any], Any] = lambda t: t

    @property
    def epoch(self) -> float:
        return self.consumed / self.batches.batches_per_epoch()


def micro_batches(run: Run):
    """The stream of collated batches from the current position on, rolling over epochs."""
    per_epoch = run.batches.batches_per_epoch()
    while True:
        epoch, start = divmod(run.consumed, per_epoch)
        for indices in run.batches.epoch(epoch, start):
            run.consumed += 1
            yield run.collate([run.dataset[i] for i in indices])


def token_loss_sum(logits: Any, labels: Any) -> Any:
    import torch

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


def train(run: Run, forward: Callable[[Any, dict], Any]) -> None:
    import contextlib

    import torch

    for hook in run.hooks:
        getattr(hook, "before_train", lambda ctx: None)(run)
    stream = micro_batches(run)
    started = time.perf_counter()
    first_step = run.step
    run.model.train()
    while run.step < run.total_steps:
        t0 = time.perf_counter()
        window = [next(stream) for _ in range(run.accum)]
        batches = [{k: v.to(run.device) if hasattr(v, "to") else v for k, v in b.items()} for b in window]
        # Every labelled token of the window weighs the same, across micro-batches and ranks.
        tokens = run.all_reduce(torch.tensor(float(sum(b["num_tokens"] for b in batches)), device=run.device))
        total_loss = torch.zeros((), device=run.device)
        for i, batch in enumerate(batches):
            sync = contextlib.nullcontext() if i == len(batches) - 1 or not hasattr(run.model, "no_sync") \
                else run.model.no_sync()
            with sync, _autocast(run):
                logits = forward(run.model, batch).logits
                loss = token_loss_sum(logits, batch["labels"]) * run.world / tokens.clamp(min=1)
            (run.scaler.scale(loss) if run.scaler else loss).backward()
            total_loss += loss.detach()
        if run.scaler:
            run.scaler.unscale_(run.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]],
                                                   run.max_norm)
        lr = run.optimizer.param_groups[0]["lr"]
        if run.scaler:
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        run.step += 1
        loss_value = float(run.all_reduce(total_loss) / run.world)
        if run.should_save(run.step):
            run.save(run.step)
        elapsed = time.perf_counter() - t0
        done = run.step - first_step
        rate = (time.perf_counter() - started) / done
        metrics = {"step": run.step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                   "epoch": run.epoch, "step_time": elapsed, "tokens_per_second": float(tokens) / max(elapsed, 1e-9),
                   "eta": _eta(rate * (run.total_steps - run.step))}
        for hook in run.hooks:
            getattr(hook, "after_step", lambda ctx, m: None)(run, metrics)
        if STOP_AFTER and run.step == int(STOP_AFTER):
            # Fault injection for tests and drills: die as a preempted pod would, right after this step.
            os._exit(143)
    for hook in run.hooks:
        getattr(hook, "after_train", lambda ctx: None)(run)


def _autocast(run: Run):
    import contextlib

    import torch

    if run.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=run.device.type, dtype=run.autocast)


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
