"""The contract a kubetune process and the operator share about failure: what an exit code means, and the roots of
the error family (kubetune/errors.py holds the rest and how a command says a failure). Here, in the API package,
because the operator classifies pods by these codes and imports nothing of the runtime but the API."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a `kubetune` process's exit code means. One table for both ends: the runtime exits with these; the
    operator's podFailurePolicy and restart logic classify a failed pod by them (docs/operator.md, "Failures and
    restarts")."""

    OK = 0
    # Anything not classified below: a crash, a storage outage, a lost peer. The operator restarts the whole gang
    # from its newest checkpoint, up to runPolicy.maxRestarts.
    ERROR = 1
    # The command, config, data, model or checkpoint is wrong, or the run cannot go on as configured (a diverged
    # loss): the same input fails the same way, so the operator fails the job at once with the message instead of
    # retrying it. argparse's usage errors are 2 too. Every KubetuneError but StorageUnavailable (an outage may pass).
    USER_ERROR = 2
    # Out of memory as the runtime sees it (CUDA or host allocation); a retry would run out again. The kernel's OOM
    # kill (the container's 137 with reason OOMKilled) is classified the same way.
    OUT_OF_MEMORY = 3
    # Stopped on SIGTERM after finishing the step and writing (and publishing) a checkpoint: a preemption, eviction
    # or drain; the next attempt resumes there. sysexits' EX_TEMPFAIL ("try again later").
    PREEMPTED = 75


class KubetuneError(Exception):
    """A failure the user can act on, said in one line that names the field, file or row."""

    exit_code: int = ExitCode.ERROR


class UserError(KubetuneError):
    """A mistake in the command line, a config or a manifest."""

    exit_code = ExitCode.USER_ERROR
