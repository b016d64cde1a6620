"""The one family of errors kubetune explains in a line: `kubetune: error: <message>` and the exit code, never a
traceback. Every layer raises its own kind (each package's errors module subclasses these); the CLI catches
`KubetuneError` once (kubetune/cli/main.py). Anything else that escapes is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from kubetune.api.errors import ExitCode, KubetuneError, UserError

__all__ = ["ExitCode", "KubetuneError", "UserError", "DataError", "StorageError", "StorageUnavailable",
           "ModelLoadError", "TrainError", "ConvertError", "OutOfMemory", "Preempted", "RANKS_ENV", "say_failure"]


class DataError(KubetuneError):
    """A dataset that cannot be read or does not fit its format (names the file and row)."""

    exit_code = ExitCode.USER_ERROR


class StorageError(KubetuneError):
    """A URI that cannot be resolved or transferred; the message names it (and never a credential)."""

    exit_code = ExitCode.USER_ERROR


class StorageUnavailable(StorageError):
    """A store that failed or could not be reached while the request itself was sound: it may pass (a restart
    retries it)."""

    exit_code = ExitCode.ERROR


class ModelLoadError(KubetuneError):
    """A model, tokenizer or adapter that cannot be loaded as asked."""

    exit_code = ExitCode.USER_ERROR


class TrainError(KubetuneError):
    """A configuration, checkpoint or run the training engine cannot go on with."""

    exit_code = ExitCode.USER_ERROR


class ConvertError(KubetuneError):
    """A checkpoint, adapter or model that cannot be converted, merged or split."""

    exit_code = ExitCode.USER_ERROR


class OutOfMemory(UserError):
    """The run does not fit the memory it was given; the message says what to lower."""

    exit_code = ExitCode.OUT_OF_MEMORY


class Preempted(KubetuneError):
    """Stopped on request (SIGTERM) at a step boundary, with a complete checkpoint of that step: resume there."""

    exit_code = ExitCode.PREEMPTED


# A torchrun worker of `kubetune.train.distributed.relaunch` finds the directory it shares with its parent here.
RANKS_ENV = "KUBETUNE_RANKS_DIR"


def say_failure(message: str, code: int) -> int:
    """End a failing command: the one line on stderr, the pod's termination message (what `kubectl describe pod`
    and the operator's failure condition show; a rank's own message comes first, so its parent's does not replace
    it) and, under torchrun, the code for the re-launching parent (torchrun reports every failure as 1)."""
    print(f"kubetune: error: {message}", file=sys.stderr, flush=True)
    ranks = os.environ.get(RANKS_ENV)
    if ranks and "LOCAL_RANK" in os.environ and Path(ranks).is_dir():
        (Path(ranks) / f"{os.environ['LOCAL_RANK']}.exit").write_text(str(int(code)))
    termination = Path(os.environ.get("KUBETUNE_TERMINATION_LOG", "/dev/termination-log"))
    with contextlib.suppress(OSError):
        if termination.is_file() and not termination.read_text().strip():
            termination.write_text(message[:4000])
    return code
