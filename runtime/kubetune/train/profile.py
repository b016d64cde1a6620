"""Where a run's time goes, when asked: `KUBETUNE_PROFILE=FILE kubetune train ...` writes wall seconds per phase of
start-up (work dir, data, model, optimizer...) and of the steps (data, forward, backward, optimizer, reduce,
checkpoint, hooks) to FILE as JSON. Off by default and then free: one shared no-op context per phase.

On a GPU the device is synchronized at every phase boundary so that the time lands in the phase that queued the
work; that costs a little, which is why it is only on when asked."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

_NOTHING = contextlib.nullcontext()


class Phases:
    """Seconds and counts per named phase; `mark(name)` times the span since the previous mark (start-up)."""

    def __init__(self, path: Path | None, device: Any = None):
        self.path = path
        self.device = device
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.last = time.perf_counter()
        self.started = self.last
        self.first_step: float | None = None  # seconds from the run's start to the end of its first step

    @classmethod
    def from_env(cls) -> Phases:
        path = os.environ.get("KUBETUNE_PROFILE")
        return cls(Path(path) if path else None)

    @property
    def on(self) -> bool:
        return self.path is not None

    def __call__(self, name: str) -> Any:
        return self._timed(name) if self.on else _NOTHING

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self._add(name, time.perf_counter() - t0)
            self.last = time.perf_counter()

    def mark(self, name: str) -> None:
        """Start-up: the time since the previous mark goes to `name`."""
        if not self.on:
            return
        self._sync()
        now = time.perf_counter()
        self._add(name, now - self.last)
        self.last = now

    def step_done(self) -> None:
        if self.on and self.first_step is None:
            self.first_step = time.perf_counter() - self.started

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    def _sync(self) -> None:
        if self.device is not None and getattr(self.device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def write(self, steps: int) -> None:
        if self.path is None:
            return
        total = time.perf_counter() - self.started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({
            "seconds_since_run_start": total, "steps": steps, "first_step_done_after": self.first_step,
            "phases": {k: {"seconds": round(v, 6), "count": self.counts[k]} for k, v in self.seconds.items()},
        }, indent=2) + "\n")
