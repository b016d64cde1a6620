"""The optimisation loop: micro-batches, token-weighted loss over the accumulation window, clipping, AMP, hooks."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .clock import Clock
from .errors import TrainError
from .profile import Phases



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
    prepare: Callable[[dict], dict]  # a collated batch -> what this rank feeds the model (targets.py)
    objective: Callable[[Any, dict], tuple[Any, dict]]  # (model, batch) -> (loss sum, metric sums), objectives.py
    device: Any
    autocast: Any
    clock: Clock  # the run's length, its accumulation windows and the spec's unit (clock.py)
    max_norm: float
    rank: int = 0
    world: int = 1
    step: int = 0
    consumed: int = 0  # micro-batches taken from the stream by this rank
    checkpointer: Any = None  # checkpoint.Checkpointer; None saves nothing (tests, benchmarks)
    saves: Callable[[int], list[int]] = lambda step: []  # optimizer step -> the checkpoints due, named in the unit
    hooks: list[Any] = field(default_factory=list)  # hooks.Hook
    all_reduce: Callable[[Any], Any] = lambda t: t
    engine: Any = None  # a DeepSpeed engine: it accumulates, reduces, clips and steps
    stop: Any = None  # stop.StopRequest: SIGTERM asks every rank to end after the current step
    stopped: bool = False  # the loop ended early on that request (main.py saves and exits PREEMPTED)
    phases: Phases = field(default_factory=lambda: Phases(None))  # KUBETUNE_PROFILE's per-phase times (profile.py)

    @property
    def epoch(self) -> float:
        return self.consumed / self.batches.batches_per_epoch()

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the run."""
        return self.clock.steps

    def save(self, step: int) -> None:
        """The checkpoints due at optimizer step `step` (one per name: several fall to one step only when the
        interval is shorter than an accumulation window, as XTuner writes them)."""
        if self.checkpointer is None:
            return
        for count in self.saves(step):
            with self.phases("checkpoint"):
                self.checkpointer.save(self, count)


def micro_batches(run: Run):
    """The stream of collated batches from the current position on, rolling over epochs."""
    per_epoch = run.batches.batches_per_epoch()
    while True:
        epoch, start = divmod(run.consumed, per_epoch)
        for indices in run.batches.epoch(epoch, start):
            run.consumed += 1
            yield run.collate([run.dataset[i] for i in indices])


def backward(run: Run, loss: Any, last: bool) -> None:
    if run.engine is not None:
        # The window may be shorter than DeepSpeed's gradient_accumulation_steps (the run's last step): the
        # boundary is ours, not its micro-step counter's.
        run.engine.set_gradient_accumulation_boundary(last)
        run.engine.backward(loss, scale_wrt_gas=False)  # the loss is already weighted over the window
        if not last:
            run.engine.step()  # DeepSpeed counts micro-steps; it only updates on the window's last one
        return
    (run.scaler.scale(loss) if run.scaler else loss).backward()


def optimizer_step(run: Run) -> Any:
    """Clip and update; returns the gradient norm before clipping, as a tensor (read with the loss, once a step)."""
    import torch

    if run.engine is not None:
        run.engine.step()
        norm = run.engine.get_global_grad_norm()
        return torch.tensor(float(norm) if norm is not None else float("nan"), device=run.device)
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    # maxNorm 0 measures the norm without clipping (an infinite bound scales by 1).
    norm = torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]],
                                          run.max_norm or float("inf"))
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return norm


def train(run: Run) -> None:
    import contextlib

    import torch

    with run.phases("hooks"):
        for hook in run.hooks:
            hook.before_train(run)
    if run.stop is not None:
        run.stop.armed = True
    stream = micro_batches(run)
    started = time.perf_counter()
    first_step = run.step
    if run.step == 0:
        run.save(0)  # points before the first step's end (an interval shorter than the window): the initial weights
    run.model.train()
    while run.step < run.total_steps:
        t0 = time.perf_counter()
        with run.phases("data"):
            window = [run.prepare({k: v.to(run.device) if hasattr(v, "to") else v for k, v in next(stream).items()})
                      for _ in range(run.clock.window(run.step))]
        data_time = time.perf_counter() - t0
        # Every unit (labelled token, or preference pair) of the window weighs the same, across micro-batches and
        # ranks.
        counts = run.all_reduce(torch.tensor([float(sum(b["num_units"] for b in window)),
                                              float(sum(b["num_tokens"] for b in window))], device=run.device))
        units = counts[0].clamp(min=1)
        total_loss = torch.zeros((), device=run.device)
        extra: dict[str, Any] = {}
        lr = run.optimizer.param_groups[0]["lr"]
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            sync = contextlib.nullcontext() if last or run.engine is not None or not hasattr(run.model, "no_sync") \
                else run.model.no_sync()
            with sync:
                with run.phases("forward"), _autocast(run):
                    loss_sum, metric_sums = run.objective(run.model, batch)
                    loss = loss_sum * run.world / units
                with run.phases("backward"):
                    backward(run, loss, last)
            total_loss += loss.detach()
            for key, value in metric_sums.items():
                extra[key] = extra.get(key, 0) + value.detach().float()
        with run.phases("optimizer"):
            grad_norm = optimizer_step(run)
            run.scheduler.step()
        run.step += 1
        with run.phases("reduce"):
            # One reduction and one read from the device per step: the loss, the gradient norm, the token count and
            # any rank's stop request (all ranks stop after the same step).
            asked = torch.tensor(float(run.stop is not None and run.stop.requested), device=run.device)
            reduced = run.all_reduce(torch.stack([total_loss, asked]))
            loss_sum, stop_votes, norm, tokens = torch.cat(
                [reduced, torch.stack([grad_norm.float().to(run.device), counts[1]])]).tolist()
        loss_value = loss_sum / run.world
        if not math.isfinite(loss_value):  # before any save: a diverged model must never become a checkpoint
            raise TrainError(f"step {run.step}: the loss is {loss_value}; training stopped without saving. Lower "
                             "training.optimizer.lr, keep training.maxNorm, or use precision bf16 instead of fp16; "
                             "resume from the last checkpoint with --resume auto")
        run.save(run.step)
        elapsed = time.perf_counter() - t0
        done = run.step - first_step
        run.phases.step_done()
        rate = (time.perf_counter() - started) / done
        with run.phases("hooks"):
            metrics = {"step": run.step, "loss": loss_value, "lr": lr, "grad_norm": norm, "epoch": run.epoch,
                       "step_time": elapsed, "data_time": data_time, "tokens_per_second": tokens / max(elapsed, 1e-9),
                       "eta": _eta(rate * (run.total_steps - run.step)), "peak_memory_bytes": peak_memory(run.device)}
            metrics |= {key: float(run.all_reduce(value) / units) for key, value in sorted(extra.items())}
            for hook in run.hooks:
                hook.after_step(run, metrics)
        if stop_votes > 0 and run.step < run.total_steps:
            run.stopped = True
            return  # no after_train: the final evaluation and reports belong to the run that finishes
    with run.phases("hooks"):
        for hook in run.hooks:
            hook.after_train(run)


def _autocast(run: Run):
    import contextlib

    import torch

    if run.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=run.device.type, dtype=run.autocast)


def peak_memory(device: Any) -> float:
    """Peak memory so far: the GPU allocator's (a counter on the host, no sync), else the process's RSS."""
    import resource

    import torch

    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
