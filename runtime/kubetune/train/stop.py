"""Stopping on request. SIGTERM (a Kueue preemption, an eviction, a node drain, `kubectl delete pod`) ends the run at
the next step boundary with a complete checkpoint of that step, published like any other, and the process exits
PREEMPTED (75): the next attempt resumes there and loses nothing. Every rank must stop at the same step (a
checkpoint is collective), so the request travels with the step's loss all-reduce (loop.py), which every rank runs
anyway. Before the first step there is nothing to save: the process stops at once."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from kubetune.errors import Preempted, say_failure


class StopRequest:
    """SIGTERM's handler and what it asked for. `armed` once the loop runs: from then on a signal only sets
    `requested`, and the loop finishes its step, saves and stops."""

    def __init__(self) -> None:
        self.requested = False
        self.armed = False
        self._previous: Any = None

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def uninstall(self) -> None:
        """After training: what follows (an export) stops on SIGTERM as any program does."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.armed:
            self.requested = True
            return
        # Nothing to save, and an exception raised here could land inside an import or a download: leave now
        # (downloads are staged aside, so nothing half-written is ever used).
        stop = Preempted("stopped by SIGTERM before the first training step; nothing to save (a new run with "
                         "--resume auto starts from the newest checkpoint, if any)")
        os._exit(say_failure(str(stop), stop.exit_code))


def stopped(step: int, total: int, checkpoint: str) -> Preempted:
    return Preempted(f"stopped by SIGTERM at step {step}/{total} with checkpoint {checkpoint}; rerun with --resume auto "
                     "to continue from it (the operator's next attempt does)")
