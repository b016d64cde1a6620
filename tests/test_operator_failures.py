"""Failures by cause, as pure logic: a failed gang's pods in, one cause out (failures.classify); the cause decides
between a restart that uses maxRestarts, one that uses maxDisruptions, and failing at once (status.finetune)."""

from __future__ import annotations

from kubetune_operator import status as st
from kubetune_operator.failures import Failure, classify, pod_failure_policy

from .test_operator_builders import BASE, _parent


def _pod(name: str, code: int | None = None, reason: str = "Error", message: str = "",
         disruption: str | None = None) -> dict:
    status: dict = {"phase": "Failed"}
    if code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": code, "reason": reason, "message": message}}}]
    if disruption:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": disruption,
                                 "message": "evicting"}]
    return {"metadata": {"name": name}, "status": status}


def test_the_most_specific_pod_failure_is_the_gangs_cause():
    # A crash takes its peer down: the peer was stopped by the Job controller (exit 75 after its checkpoint).
    crash = classify([_pod("j-a0-1", 75), _pod("j-a0-0", 1, message="CUDA error: an illegal memory access")])
    assert (crash.cause, crash.pod, crash.exit_code) == ("Error", "j-a0-0", 1)
    assert "illegal memory access" in crash.message
    # A drained node's pod (DisruptionTarget) makes its peers' lost-collective crashes a disruption.
    drained = classify([_pod("j-a0-0", 1), _pod("j-a0-1", 137, disruption="EvictionByEvictionAPI")])
    assert (drained.cause, drained.pod) == ("Disruption", "j-a0-1")
    # The runtime's own verdicts win over everything: they say what to fix.
    user = classify([_pod("j-a0-0", 75, disruption="PreemptionByScheduler"), _pod("j-a0-1", 2, message="row 3")])
    assert (user.cause, user.message) == ("UserError", "row 3")
    oom = classify([_pod("j-a0-0", 137, reason="OOMKilled"), _pod("j-a0-1", 1)])
    assert oom.cause == "OutOfMemory" and "resources.memory" in oom.message
    assert classify([_pod("j-a0-0", 3, message="out of memory (CUDA)")]).cause == "OutOfMemory"
    stopped = classify([_pod("j-a0-0", 75), _pod("j-a0-1", 75)])
    assert stopped.cause == "Disruption" and stopped.stopped_only
    assert classify([_pod("j-a0-0"), {"metadata": {"name": "x"}}]) is None


def test_the_pod_failure_policy_ignores_only_a_stop_on_request():
    rules = pod_failure_policy()["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "Ignore", "FailJob"]
    assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert rules[1]["onExitCodes"]["values"] == [75]


FAILED = {"metadata": {"name": "s-a0"}, "status": {"conditions": [
    {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "a pod failed"}]}}


def test_restarts_by_cause():
    _, spec = _parent("FineTuneJob", "s", {**BASE, "runPolicy": {"maxRestarts": 1, "maxDisruptions": 2}})
    disruption = st.Observed(Failure("Disruption", "s-a0-1", "EvictionByEvictionAPI: evicting", 75))
    out = st.finetune(FAILED, {"phase": "Running", "restarts": 1}, spec, 1, "t1", disruption)
    assert out.restart and out.patch["disruptions"] == 1 and "restarts" not in out.patch
    assert out.patch["lastFailure"]["cause"] == "Disruption" and "maxRestarts untouched" in out.patch["message"]
    assert st.attempt({"restarts": 1, **out.patch}) == 2
    out = st.finetune(FAILED, {"phase": "Running", "restarts": 0, "disruptions": 2}, spec, 1, "t2", disruption)
    assert not out.restart and out.patch["phase"] == "Failed" and "maxDisruptions (2)" in out.patch["message"]
    user = st.Observed(Failure("UserError", "s-a0-0", "row 3: not valid JSON", 2))
    out = st.finetune(FAILED, {"phase": "Running", "restarts": 0}, spec, 1, "t3", user)
    assert not out.restart and out.patch["phase"] == "Failed"
    failed = next(c for c in out.patch["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "UserError" and "row 3: not valid JSON" in failed["message"]
    assert out.patch["lastFailure"] == {"cause": "UserError", "pod": "s-a0-0", "exitCode": 2,
                                        "message": "row 3: not valid JSON", "time": "t3"}
    crash = st.Observed(Failure("Error", "s-a0-0", "exit code 1 (Error)", 1))
    out = st.finetune(FAILED, {"phase": "Running", "restarts": 0}, spec, 1, "t4", crash)
    assert out.restart and out.patch["restarts"] == 1


def test_a_kueue_eviction_is_preempted_and_readmission_clears_it():
    _, spec = _parent("FineTuneJob", "q", {**BASE, "runPolicy": {"queueName": "team"}})
    suspended = {"metadata": {"name": "q-a0"}, "spec": {"suspend": True}, "status": {}}
    out = st.finetune(suspended, {"phase": "Running"}, spec, 1, "t1")
    assert out.patch["phase"] == "Queued" and "queue team" in out.patch["message"]
    evicted = {"type": "Evicted", "status": "True", "reason": "Preempted",
               "message": "Preempted to accommodate a workload due to prioritization in the ClusterQueue"}
    out = st.finetune(suspended, {"phase": "Running", "restarts": 0}, spec, 1, "t2", st.Observed(eviction=evicted))
    assert out.patch["phase"] == "Preempted" and not out.restart and "restarts" not in out.patch
    assert out.events[0][:2] == ("Warning", "Preempted")
    preempted = next(c for c in out.patch["conditions"] if c["type"] == "Preempted")
    assert (preempted["status"], preempted["reason"]) == ("True", "Preempted")
    running = {"metadata": {"name": "q-a0"}, "spec": {"suspend": False}, "status": {"ready": 2}}
    again = st.finetune(running, {"phase": "Preempted", "conditions": out.patch["conditions"]}, spec, 1, "t3")
    cleared = next(c for c in again.patch["conditions"] if c["type"] == "Preempted")
    assert again.patch["phase"] == "Running" and (cleared["status"], cleared["reason"]) == ("False", "Readmitted")


def test_what_the_apiserver_said_is_kept_without_the_value_it_repeats():
    from kubetune_operator.client import ApiError

    body = ('{"kind":"Status","message":"Job.batch \\"c-a0\\" is invalid: spec.template: Invalid value: '
            'core.PodTemplateSpec{ObjectMeta: {...}}: field is immutable","reason":"Invalid","details":{"causes":'
            '[{"reason":"FieldValueInvalid","message":"Invalid value: core.PodTemplateSpec{ObjectMeta: {...}}: '
            'field is immutable","field":"spec.template"}]},"code":422}')
    error = ApiError(422, body)
    assert error.refused and error.message == 'Job.batch "c-a0" is invalid: spec.template: field is immutable'
    denied = ApiError(403, '{"message":"admission webhook \\"vjob.kb.io\\" denied the request: queue-name is '
                           'immutable"}')
    assert denied.refused and denied.message.startswith("admission webhook")
    assert not ApiError(500, "etcdserver: request timed out").refused
