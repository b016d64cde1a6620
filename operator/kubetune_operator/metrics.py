"""Operator metrics on /metrics (the Helm chart's ServiceMonitor scrapes them; its alerts and dashboards use them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubetune.api.chat import ChatPhase

REGISTRY = CollectorRegistry()
FINETUNEJOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs by phase.", ["phase"], registry=REGISTRY)
# One series per job with value 1 in its current phase (kube-state-metrics' style): alerts name the failed job.
FINETUNEJOB_PHASE = Gauge("kubetune_finetunejob_phase", "1 for each FineTuneJob's current phase.",
                          ["namespace", "name", "phase"], registry=REGISTRY)
CHATENDPOINT_READY = Gauge("kubetune_chatendpoint_ready", "1 when a ChatEndpoint has all its replicas ready, else 0.",
                           ["namespace", "name"], registry=REGISTRY)
RECONCILES = Counter("kubetune_reconcile", "Reconciles by kind and result.", ["kind", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("kubetune_reconcile_duration_seconds", "Reconcile duration.", ["kind"],
                              registry=REGISTRY)
RESTARTS = Counter("kubetune_job_restarts", "Whole-gang restarts of FineTuneJobs.", ["namespace", "name"],
                   registry=REGISTRY)
QUEUE_SECONDS = Histogram("kubetune_job_queue_seconds", "FineTuneJob creation to its pods running.",
                          buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600), registry=REGISTRY)
DURATION_SECONDS = Histogram("kubetune_job_duration_seconds", "FineTuneJob start to finish.",
                             buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200), registry=REGISTRY)

_phases: dict[str, tuple[str, str, str]] = {}


def track_phase(meta: dict, phase: str | None) -> None:
    """Keep the phase gauges exact: each job counts once, in its latest phase; a deleted job's series go away."""
    uid, key = meta["uid"], (meta.get("namespace", ""), meta["name"])
    old = _phases.get(uid)
    if (old and old[2]) == phase:
        return
    if old:
        FINETUNEJOBS.labels(old[2]).dec()
        FINETUNEJOB_PHASE.remove(*old)
    if phase:
        FINETUNEJOBS.labels(phase).inc()
        FINETUNEJOB_PHASE.labels(*key, phase).set(1)
        _phases[uid] = (*key, phase)
    else:
        _phases.pop(uid, None)


def track_endpoint(meta: dict, phase: str | None) -> None:
    key = (meta.get("namespace", ""), meta["name"])
    if phase is None:
        try:
            CHATENDPOINT_READY.remove(*key)
        except KeyError:
            pass
    else:
        CHATENDPOINT_READY.labels(*key).set(1 if phase == ChatPhase.READY else 0)
