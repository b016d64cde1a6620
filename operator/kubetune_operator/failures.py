"""Why a gang failed, from its pods: the exit codes the runtime gives (kubetune.api.errors.ExitCode), the kubelet's
OOMKilled, and the DisruptionTarget condition Kubernetes puts on a pod it preempts, evicts or drains. Pure: pods in,
one classified failure out. docs/operator.md ("Failures and restarts") is the table for users."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.api.finetune import FailureCause as Cause
from kubetune.api.errors import ExitCode

SIGKILLED = 137  # 128 + SIGKILL: with reason OOMKilled, the kernel's OOM killer


def _rank(failure: "Failure") -> tuple[int, str]:
    """One pod's failure can take its peers down with it (a lost rank fails the others' collectives; the Job
    controller then stops the rest, which exit 75 after their SIGTERM checkpoint): the cause is the most specific
    failure among the pods. A stop on request without a DisruptionTarget ranks last: it is what the peers of a
    crashed pod do."""
    order = [Cause.USER_ERROR, Cause.OUT_OF_MEMORY, Cause.DISRUPTION, Cause.ERROR]
    return (len(order) if failure.stopped_only else order.index(failure.cause)), failure.pod


@dataclass(frozen=True)
class Failure:
    cause: Cause
    pod: str
    message: str
    exit_code: int | None = None
    stopped_only: bool = False  # a disruption seen only as exit 75 (no DisruptionTarget): the pod was stopped

    def to_status(self, now: str) -> dict[str, Any]:
        out = {"cause": str(self.cause), "pod": self.pod, "message": self.message[:1000], "time": now}
        return out | ({"exitCode": self.exit_code} if self.exit_code is not None else {})


def pod_failure_policy() -> dict[str, Any]:
    """The gang's Job fails at its first failed pod (the operator restarts the whole gang), with one exception: a pod
    that stopped on request after checkpointing (exit 75) never fails the Job by itself. That is every pod of a Job
    that Kueue suspends to preempt it: counted as failures, they would fail the suspended Job (backoffLimit 0). A
    pod Kubernetes disrupts (DisruptionTarget) fails the Job at once, so its peers stop now instead of waiting out a
    collective's timeout; the operator then restarts the gang as a disruption."""
    return {"rules": [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                             "values": [int(ExitCode.PREEMPTED)]}},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [0]}},
    ]}


def classify(pods: list[dict[str, Any]]) -> Failure | None:
    """The failure of a gang whose Job failed, or None when no pod says why (its pods are gone)."""
    found = [f for f in map(_pod_failure, pods) if f is not None]
    if not found:
        return None
    return min(found, key=_rank)


def _pod_failure(pod: dict[str, Any]) -> Failure | None:
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    disrupted = next((c for c in status.get("conditions") or [] if c.get("type") == "DisruptionTarget"
                      and c.get("status") == "True"), None)
    terminated = next((s["state"]["terminated"] for s in status.get("containerStatuses") or []
                       if (s.get("state") or {}).get("terminated")), None)
    code = terminated.get("exitCode") if terminated else None
    said = " ".join(((terminated or {}).get("message") or "").split())
    if disrupted is not None:
        why = f"{disrupted.get('reason', 'DisruptionTarget')}: {disrupted.get('message', 'the pod was disrupted')}"
        return Failure(Cause.DISRUPTION, name, why, code)
    if terminated is None or code == 0:
        return None
    if code == ExitCode.USER_ERROR:
        return Failure(Cause.USER_ERROR, name, said or "the config, data or model was refused (exit code 2)", code)
    if code == ExitCode.OUT_OF_MEMORY or terminated.get("reason") == "OOMKilled":
        what = said or (f"the container was OOMKilled (exit {code}): raise resources.memory" if code == SIGKILLED
                        else f"out of memory (exit {code})")
        return Failure(Cause.OUT_OF_MEMORY, name, f"{what}; lower training.batchSize or dataset.maxLength, enable "
                       "training.gradientCheckpointing, use qlora or a DeepSpeed offload preset", code)
    if code == ExitCode.PREEMPTED:
        return Failure(Cause.DISRUPTION, name, said or "stopped on SIGTERM after writing a checkpoint", code,
                       stopped_only=True)
    reason = terminated.get("reason") or "Error"
    return Failure(Cause.ERROR, name, f"exit code {code} ({reason})" + (f": {said}" if said else ""), code)
