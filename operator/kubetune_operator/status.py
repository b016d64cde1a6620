"""Pure status logic: the children's state in, the parent's status patch (and what to do next) out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from kubetune.api.chat import ChatPhase
from kubetune.api.convert import ConvertPhase
from kubetune.api.finetune import FineTunePhase as Phase

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


@dataclass
class Outcome:
    patch: dict[str, Any]
    restart: bool = False  # create the next attempt
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def finetune(job: dict | None, status: dict, spec: Any, generation: int, now: str) -> Outcome:
    """The FineTuneJob's status from its current attempt's Job."""
    conditions = list(status.get("conditions", []))
    restarts = int(status.get("restarts", 0))
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
        why = f"{failed.get('reason', 'Failed')}: {failed.get('message', 'a pod failed')}"
        left = deadline_left(spec, status, job, now)
        if failed.get("reason") == "DeadlineExceeded" or (left is not None and left <= 0):
            failed = {**failed, "reason": "DeadlineExceeded"}  # a restart would only run past it again
            why = f"runPolicy.activeDeadlineSeconds ({spec.run_policy.active_deadline_seconds} s) passed: {why}"
        elif restarts < spec.run_policy.max_restarts:
            restarts += 1
            patch["restarts"] = restarts
            if left is not None:
                patch["attemptDeadlineSeconds"] = left
            message = (f"restart {restarts}/{spec.run_policy.max_restarts} after {job['metadata']['name']} failed "
                       f"({why}); the new gang resumes from the latest checkpoint")
            moved(Phase.RESTARTING, "Restarting", message, "Warning")
            conditions = set_condition(conditions, "Running", False, "Restarting", message, now, generation)
            return Outcome(patch | {"conditions": conditions}, restart=True, events=events)
        message = f"{job['metadata']['name']} failed after {restarts} restart(s): {why}"
        moved(Phase.FAILED, "Failed", message, "Warning")
        patch["completionTime"] = failed.get("lastTransitionTime") or now
        conditions = set_condition(conditions, "Running", False, "Failed", message, now, generation)
        conditions = set_condition(conditions, "Failed", True, failed.get("reason", "Failed"), message, now,
                                   generation)
    elif job.get("spec", {}).get("suspend"):
        moved(Phase.PENDING, "Queued", "waiting for Kueue to admit the Job "
                                   f"(queue {spec.run_policy.queue_name})" if spec.run_policy.queue_name
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
        else:
            moved(Phase.INITIALIZING, "Initializing", f"{ready}/{nodes} pod(s) ready")
        if not status.get("startTime") and st.get("startTime"):
            patch["startTime"] = st["startTime"]
    if "conditions" not in patch:
        conditions = set_condition(conditions, "Created", True, "Created", "children created", now, generation) \
            if job is not None or any(c["type"] == "Created" for c in conditions) else conditions
        patch["conditions"] = conditions
    return Outcome(patch, events=events)


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
