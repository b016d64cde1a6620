"""Pure status logic: the children's state in, the parent's status patch (and what to do next) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubetune.api.chat import ChatPhase
from kubetune.api.convert import ConvertPhase
from kubetune.api.finetune import FailureCause as Cause, FineTunePhase as Phase

from .failures import Failure

FINISHED = (Phase.SUCCEEDED, Phase.FAILED)  # the same two words end a ConvertJob


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], type_: str, status: bool, reason: str, message: str, now: str,
                  generation: int | None = None) -> list[dict]:
    """metav1.Condition semantics: lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out, found = [], False
    for c in conditions:
        if c.get("type") == type_:
            found = True
            changed = c.get("status") != value
            c = {**c, "status": value, "reason": reason, "message": message,
                 "lastTransitionTime": now if changed else c.get("lastTransitionTime", now)}
            if generation is not None:
                c["observedGeneration"] = generation
        out.append(c)
    if not found:
        c = {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": now}
        if generation is not None:
            c["observedGeneration"] = generation
        out.append(c)
    return out


def deadline_left(spec: Any, status: dict, job: dict, now: str) -> int | None:
    """What runPolicy.activeDeadlineSeconds leaves after this attempt: its share minus the time its Job was active
    (a Job's startTime restarts when it is unsuspended, as its own deadline does, so queueing after a Kueue
    preemption is not counted)."""
    deadline = spec.run_policy.active_deadline_seconds
    if not deadline:
        return None
    share = int(status.get("attemptDeadlineSeconds") or deadline)
    started = job.get("status", {}).get("startTime")
    if not started:
        return share
    ended = timestamp((job_condition(job, "Failed") or {}).get("lastTransitionTime") or now)
    begun = timestamp(started)
    if ended is None or begun is None:  # an unreadable time: give the attempt its whole share
        return share
    return int(share - (ended - begun))


def timestamp(value: str | None) -> float | None:
    """Seconds since the epoch of a Kubernetes RFC 3339 time."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def job_condition(job: dict | None, type_: str) -> dict | None:
    for c in (job or {}).get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def attempt(status: dict) -> int:
    """The current attempt's number (its Job is `<name>-a<attempt>`): every whole-gang restart, for a failure or a
    disruption, starts the next one."""
    return int(status.get("restarts", 0) or 0) + int(status.get("disruptions", 0) or 0)


@dataclass(frozen=True)
class Observed:
    """What the operator read besides the Job: why its failed pods failed, and Kueue's eviction of a suspended Job
    (its Workload's Evicted condition)."""

    failure: Failure | None = None
    eviction: dict | None = None


@dataclass
class Outcome:
    patch: dict[str, Any]
    restart: bool = False  # create the next attempt
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def finetune(job: dict | None, status: dict, spec: Any, generation: int, now: str,
             observed: Observed = Observed()) -> Outcome:
    """The FineTuneJob's status from its current attempt's Job."""
    conditions = list(status.get("conditions", []))
    phase = status.get("phase")
    patch: dict[str, Any] = {"observedGeneration": generation}
    events: list[tuple[str, str, str]] = []

    def moved(new_phase: Phase, reason: str, message: str, kind: str = "Normal") -> None:
        patch["phase"] = new_phase
        patch["message"] = message
        if new_phase != phase:
            events.append((kind, reason, message))

    if phase in FINISHED:
        return Outcome({"observedGeneration": generation})
    if spec.run_policy.suspend:
        moved(Phase.SUSPENDED, "Suspended", "runPolicy.suspend is true: the pods are deleted, status and checkpoints kept")
        patch["conditions"] = set_condition(conditions, "Suspended", True, "Suspended", patch["message"], now,
                                            generation)
        return Outcome(patch, events=events)
    conditions = set_condition(conditions, "Suspended", False, "Resumed", "not suspended", now, generation) \
        if any(c["type"] == "Suspended" for c in conditions) else conditions
    if job is None:
        moved(Phase.PENDING, "Creating", "creating the training Job")
    elif (done := job_condition(job, "Complete")) is not None:
        moved(Phase.SUCCEEDED, "Succeeded", f"training finished ({job['metadata']['name']})")
        patch["completionTime"] = done.get("lastTransitionTime") or now
        conditions = set_condition(conditions, "Running", False, "Succeeded", "training finished", now, generation)
        conditions = set_condition(conditions, "Succeeded", True, "Succeeded", patch["message"], now, generation)
    elif (failed := job_condition(job, "Failed")) is not None:
        return _failed(job, failed, status, spec, generation, now, observed.failure, conditions)
    elif job.get("spec", {}).get("suspend"):
        queue = spec.run_policy.queue_name
        if observed.eviction is not None:
            why = f"{observed.eviction.get('reason', 'Evicted')}: {observed.eviction.get('message', '')}".rstrip(": ")
            moved(Phase.PREEMPTED, "Preempted", f"preempted by Kueue ({why}); queued again in {queue}, resumes from "
                  "its newest checkpoint when admitted (no restart used)", "Warning")
            conditions = set_condition(conditions, "Preempted", True, observed.eviction.get("reason", "Evicted"),
                                       why, now, generation)
        else:
            moved(Phase.QUEUED, "Queued", f"waiting for Kueue to admit the Job (queue {queue})" if queue
                  else "the Job is suspended")
    else:
        st = job.get("status", {})
        nodes = spec.resources.nodes
        ready = int(st.get("ready", 0) or 0)
        if ready >= nodes or int(st.get("succeeded", 0) or 0) > 0:
            moved(Phase.RUNNING, "Running", f"{nodes} pod(s) running")
            conditions = set_condition(conditions, "Running", True, "Running", patch["message"], now, generation)
            if any(c["type"] == "PodsCreated" for c in conditions):  # a refusal reported earlier is over
                conditions = set_condition(conditions, "PodsCreated", True, "Created", "pods created", now,
                                           generation)
            if any(c["type"] == "Preempted" and c["status"] == "True" for c in conditions):
                conditions = set_condition(conditions, "Preempted", False, "Readmitted",
                                           "admitted again after a preemption", now, generation)
        else:
            moved(Phase.INITIALIZING, "Initializing", f"{ready}/{nodes} pod(s) ready")
        if not status.get("startTime") and st.get("startTime"):
            patch["startTime"] = st["startTime"]
    if "conditions" not in patch:
        conditions = set_condition(conditions, "Created", True, "Created", "children created", now, generation) \
            if job is not None or any(c["type"] == "Created" for c in conditions) else conditions
        patch["conditions"] = conditions
    return Outcome(patch, events=events)


def _failed(job: dict, failed: dict, status: dict, spec: Any, generation: int, now: str, failure: Failure | None,
            conditions: list[dict]) -> Outcome:
    """A failed attempt: restart the gang (a disruption, or a crash within maxRestarts) or fail the job (a user
    error, out of memory, the deadline, or out of restarts), with the cause in status.lastFailure."""
    name = job["metadata"]["name"]
    why = (f"{failure.cause} in pod {failure.pod}: {failure.message}" if failure
           else f"{failed.get('reason', 'Failed')}: {failed.get('message', 'a pod failed')}")
    last = failure.to_status(now) if failure else {"cause": str(Cause.ERROR), "message": why[:1000], "time": now}
    left = deadline_left(spec, status, job, now)
    if failed.get("reason") == "DeadlineExceeded" or (left is not None and left <= 0):
        why = f"runPolicy.activeDeadlineSeconds ({spec.run_policy.active_deadline_seconds} s) passed: {why}"
        last = {"cause": str(Cause.DEADLINE), "message": why[:1000], "time": now}
        return _fail(name, why, Cause.DEADLINE, status, failed, generation, now, last, conditions)
    cause = failure.cause if failure else Cause.ERROR
    counter, limit, verdict = _retry(cause, status, spec.run_policy)
    if counter is None:
        return _fail(name, f"{why}; {verdict}", cause, status, failed, generation, now, last, conditions)
    count = int(status.get(counter, 0) or 0) + 1
    message = (f"restart after disruption {count}/{limit} ({name}: {why}); the new gang resumes from the latest "
               "checkpoint, maxRestarts untouched" if counter == "disruptions" else
               f"restart {count}/{limit} after {name} failed ({why}); the new gang resumes from the latest checkpoint")
    patch: dict[str, Any] = {"observedGeneration": generation, counter: count, "phase": Phase.RESTARTING,
                             "message": message, "lastFailure": last,
                             "conditions": set_condition(conditions, "Running", False, "Restarting", message, now,
                                                         generation)}
    if left is not None:
        patch["attemptDeadlineSeconds"] = left
    return Outcome(patch, restart=True, events=[("Warning", "Restarting", message)])


def _retry(cause: Cause, status: dict, policy: Any) -> tuple[str | None, int, str]:
    """(the status counter a restart uses, its limit, why not) for a failure of this cause."""
    if cause in (Cause.USER_ERROR, Cause.OUT_OF_MEMORY):
        return None, 0, "not restarted: the same input fails the same way"
    if cause == Cause.DISRUPTION:
        if int(status.get("disruptions", 0) or 0) < policy.max_disruptions:
            return "disruptions", policy.max_disruptions, ""
        return None, 0, f"not restarted: runPolicy.maxDisruptions ({policy.max_disruptions}) reached"
    if int(status.get("restarts", 0) or 0) < policy.max_restarts:
        return "restarts", policy.max_restarts, ""
    return None, 0, f"runPolicy.maxRestarts ({policy.max_restarts}) reached"


def _fail(name: str, why: str, cause: Cause, status: dict, failed: dict, generation: int, now: str, last: dict,
          conditions: list[dict]) -> Outcome:
    message = f"{name} failed after {int(status.get('restarts', 0) or 0)} restart(s): {why}"
    conditions = set_condition(conditions, "Running", False, "Failed", message, now, generation)
    conditions = set_condition(conditions, "Failed", True, str(cause), message, now, generation)
    patch = {"observedGeneration": generation, "phase": Phase.FAILED, "message": message, "lastFailure": last,
             "conditions": conditions, "completionTime": failed.get("lastTransitionTime") or now}
    return Outcome(patch, events=[("Warning", "Failed", message)] if status.get("phase") != Phase.FAILED else [])


def convert(job: dict | None, status: dict, output_uri: str, generation: int, now: str) -> Outcome:
    conditions = list(status.get("conditions", []))
    if status.get("phase") in (ConvertPhase.SUCCEEDED, ConvertPhase.FAILED):
        return Outcome({"observedGeneration": generation})
    patch: dict[str, Any] = {"observedGeneration": generation}
    events = []
    if job is None:
        patch |= {"phase": ConvertPhase.PENDING, "message": "creating the conversion Job"}
    elif (done := job_condition(job, "Complete")) is not None:
        patch |= {"phase": ConvertPhase.SUCCEEDED, "message": f"written to {output_uri}", "outputUri": output_uri,
                  "completionTime": done.get("lastTransitionTime") or now}
        conditions = set_condition(conditions, "Succeeded", True, "Succeeded", patch["message"], now, generation)
        events.append(("Normal", "Succeeded", patch["message"]))
    elif (failed := job_condition(job, "Failed")) is not None:
        patch |= {"phase": ConvertPhase.FAILED, "message": f"{failed.get('reason')}: {failed.get('message')}",
                  "completionTime": failed.get("lastTransitionTime") or now}
        conditions = set_condition(conditions, "Failed", True, failed.get("reason", "Failed"), patch["message"], now,
                                   generation)
        events.append(("Warning", "Failed", patch["message"]))
    elif (job.get("spec") or {}).get("suspend"):
        patch |= {"phase": ConvertPhase.QUEUED, "message": "waiting for Kueue to admit the Job"}
    else:
        patch |= {"phase": ConvertPhase.RUNNING, "message": "converting"}
        if job.get("status", {}).get("startTime") and not status.get("startTime"):
            patch["startTime"] = job["status"]["startTime"]
    patch["conditions"] = conditions
    if patch.get("phase") != status.get("phase") and not events:
        events.append(("Normal", patch["phase"], patch["message"]))
    return Outcome(patch, events=events)


def chat(deployment: dict | None, status: dict, url: str, served: str, generation: int, now: str) -> Outcome:
    conditions = list(status.get("conditions", []))
    patch: dict[str, Any] = {"observedGeneration": generation, "url": url, "servedModel": served}
    pods = ((deployment or {}).get("spec", {}).get("selector") or {}).get("matchLabels")
    if pods:  # the scale subresource's labelSelectorPath: what an HPA or KEDA counts the replicas by
        patch["selector"] = ",".join(f"{k}={v}" for k, v in sorted(pods.items()))
    st = (deployment or {}).get("status", {})
    want = (deployment or {}).get("spec", {}).get("replicas", 1)
    ready = int(st.get("readyReplicas", 0) or 0)
    stuck = next((c for c in st.get("conditions", []) or [] if c.get("type") == "Progressing"
                  and c.get("reason") == "ProgressDeadlineExceeded"), None)
    if deployment is None:
        phase, message = ChatPhase.PENDING, "creating the Deployment"
    elif stuck:
        phase, message = ChatPhase.FAILED, stuck.get("message", "the rollout did not progress")
    elif ready >= max(want, 1) and st.get("updatedReplicas", 0) >= want:
        phase, message = ChatPhase.READY, f"{ready}/{want} replica(s) ready at {url}"
    else:
        phase, message = ChatPhase.PROGRESSING, f"{ready}/{want} replica(s) ready"
    patch |= {"phase": phase, "message": message, "replicas": want, "readyReplicas": ready,
              "ready": f"{ready}/{want}",
              "conditions": set_condition(conditions, "Ready", phase == ChatPhase.READY, phase, message, now,
                                          generation)}
    events = [("Warning" if phase == ChatPhase.FAILED else "Normal", str(phase), message)] if phase != status.get("phase") else []
    return Outcome(patch, events=events)
