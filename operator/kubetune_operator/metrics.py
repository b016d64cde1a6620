"""Operator metrics on /metrics (the Helm chart's ServiceMonitor scrapes them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
FINETUNEJOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs by phase.", ["phase"], registry=REGISTRY)
RECONCILES = Counter("kubetune_reconcile", "Reconciles by kind and result.", ["kind", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("kubetune_reconcile_duration_seconds", "Reconcile duration.", ["kind"],
                              registry=REGISTRY)
RESTARTS = Counter("kubetune_job_restarts", "Whole-gang restarts of FineTuneJobs.", registry=REGISTRY)
QUEUE_SECONDS = Histogram("kubetune_job_queue_seconds", "FineTuneJob creation to its pods running.",
                          buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600), registry=REGISTRY)
DURATION_SECONDS = Histogram("kubetune_job_duration_seconds", "FineTuneJob start to finish.",
                             buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200), registry=REGISTRY)

_phases: dict[str, str] = {}


def track_phase(uid: str, phase: str | None) -> None:
    """Keep the per-phase gauge exact: each job counts once, in its latest phase."""
    old = _phases.get(uid)
    if old == phase:
        return
    if old:
        FINETUNEJOBS.labels(old).dec()
    if phase:
        FINETUNEJOBS.labels(phase).inc()
        _phases[uid] = phase
    else:
        _phases.pop(uid, None)
