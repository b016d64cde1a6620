"""kopf handlers: read the event, call reconcile (pure builders + status logic underneath), patch status, post
events. Every kopf setting is in `configure`."""

from __future__ import annotations

import os
import time
from typing import Any

import kopf

from kubetune.api import GROUP, VERSION

from . import labels as label_keys, metrics, reconcile, status as st
from .client import ApiError, Connection, Kube, NotOwned
from .settings import Settings



class BoundedDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled copy of a resource, kept only when it fits an annotation: for a spec over the limit the
    patch carrying it (and the status with it) would be refused forever, so such a resource is failed as
    SpecTooLarge (reconcile.parse_or_reject) with nothing stored."""

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        if reconcile.spec_bytes(dict(essence)) <= reconcile.MAX_SPEC_BYTES:
            super().store(body=body, patch=patch, essence=essence)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Handler progress and the last-handled spec go to annotations under our own prefix, not into `status`, which
    # belongs to our status model (the CRD would prune kopf's fields anyway).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = BoundedDiffBase(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Watches that go quiet are re-established: the apiserver sends bookmarks every minute, so 5 min of silence
    # means a dead connection (kopf#585: handlers silently stop without timeouts).
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 30
    # Many jobs at once (bench: 500): a resource's worker lingers `idle_timeout` after its last event and holds a
    # slot of `worker_limit` meanwhile; with a limit of 64 and the default 5 s that capped creation at ~13 jobs/s.
    # Workers are asyncio tasks (cheap): no limit, and idle ones go after 1 s.
    settings.batching.worker_limit = None
    settings.batching.idle_timeout = 1.0
    # Kubernetes events for our own transitions are posted explicitly; kopf's per-handler chatter is noise.
    settings.posting.level = 30  # WARNING
    # One operator per cluster under a Deployment with one replica and Recreate: peering adds a CRD and API calls.
    settings.peering.standalone = True
    # The TTL timer deletes its own FineTuneJob; the deletion then waits for that timer to exit, and a timer still in
    # its handler is re-checked only every `cancellation_polling` seconds (default 60: the job outlived its TTL by a
    # minute, seen in test_ttl_waits_for_the_exports). Timers here return in milliseconds: check every second.
    settings.background.cancellation_polling = 1.0
    memo.settings = Settings.from_env()
    memo.setdefault("connection", Connection())  # login may have made it already
    port = int(os.environ.get("KUBETUNE_OPERATOR_METRICS_PORT", "8080"))
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, registry=metrics.REGISTRY)


@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        memo.setdefault("connection", Connection()).info = info
    return info


def _kube(memo: kopf.Memo) -> Kube:
    return memo.connection.kube(memo.settings.field_manager)


def _post(body: dict, events: list) -> None:
    for type_, reason, message in events:
        kopf.event(body, type=type_, reason=reason, message=message[:1000])


async def _run(kind: str, work: Any, body: dict | None = None) -> Any:
    started = time.monotonic()
    try:
        result = await work
    except NotOwned as exc:
        metrics.RECONCILES.labels(kind, "not_owned").inc()
        if body is None:  # a child's event: nothing of the parent's to fail here, so the error is logged, once
            raise kopf.PermanentError(str(exc)) from None
        return reconcile.not_owned(body, exc)
    except reconcile.Waiting as exc:
        metrics.RECONCILES.labels(kind, "waiting").inc()
        raise kopf.TemporaryError(str(exc), delay=15) from None
    except ApiError as exc:
        metrics.RECONCILES.labels(kind, "error").inc()
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=5 if exc.status == 409 else 15) from None
    metrics.RECONCILES.labels(kind, "ok").inc()
    metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)
    return result


# --- FineTuneJob ------------------------------------------------------------------------------------------------
@kopf.on.resume(GROUP, VERSION, "finetunejobs")
@kopf.on.create(GROUP, VERSION, "finetunejobs")
@kopf.on.update(GROUP, VERSION, "finetunejobs", field="spec")
async def finetunejob(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    status, events = await _run("FineTuneJob", reconcile.finetune(_kube(memo), dict(body), memo.settings),
                                dict(body))
    patch.status.update(status)
    metrics.track_phase(body["metadata"], status.get("phase") or (body.get("status") or {}).get("phase"))
    _post(dict(body), events)


@kopf.on.delete(GROUP, VERSION, "finetunejobs", optional=True)
def finetunejob_deleted(body: kopf.Body, **_: Any) -> None:
    metrics.track_phase(body["metadata"], None)


@kopf.timer(GROUP, VERSION, "finetunejobs", interval=5, idle=None,
            when=lambda spec, status, **_: bool((spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished") is not None
                                                and status.get("phase") in st.FINISHED))
async def finetunejob_ttl(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await reconcile.delete_after_ttl(_kube(memo), dict(body))


@kopf.timer(GROUP, VERSION, "finetunejobs", interval=10, initial_delay=5, idle=None,
            when=lambda spec, status, **_: status.get("phase") in (st.Phase.PENDING, st.Phase.INITIALIZING)
            and not (spec.get("runPolicy") or {}).get("suspend"))
async def finetunejob_pods_refused(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """A Job whose pods are refused (Pod Security, quota) changes nothing the Job watch sees: look for the refusal."""
    found = await _run("FineTuneJob", reconcile.pods_refused(_kube(memo), dict(body)), dict(body))
    if found:
        status, events = found
        patch.status.update(status)
        _post(dict(body), events)


# --- ConvertJob and ChatEndpoint --------------------------------------------------------------------------------
def _reconciler(kind: str, plural: str, work: Any) -> None:
    """Create/resume/spec-update handlers for a kind whose reconcile needs nothing beyond (client, body, settings)."""

    async def handler(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        status, events = await _run(kind, work(_kube(memo), dict(body), memo.settings), dict(body))
        patch.status.update(status)
        _post(dict(body), events)

    handler.__name__ = handler.__qualname__ = plural  # kopf ids handlers by name: one id per kind
    for register in (kopf.on.resume, kopf.on.create):
        register(GROUP, VERSION, plural, id=plural)(handler)
    kopf.on.update(GROUP, VERSION, plural, field="spec", id=plural)(handler)


_reconciler("ConvertJob", "convertjobs", reconcile.convert)
_reconciler("ChatEndpoint", "chatendpoints", reconcile.chat)


@kopf.on.delete(GROUP, VERSION, "chatendpoints", optional=True)
def chatendpoint_deleted(body: kopf.Body, **_: Any) -> None:
    metrics.track_endpoint(body["metadata"], None)


@kopf.on.field(GROUP, VERSION, "finetunejobs", field="status.artifacts.adapter")
async def adapter_exported(body: kopf.Body, new: Any, memo: kopf.Memo, **_: Any) -> None:
    """Endpoints that serve this job's adapter roll to the newly exported one."""
    if not new:
        return
    kube = _kube(memo)
    for endpoint in await reconcile.endpoints_serving(kube, dict(body)):
        status, events = await _run("ChatEndpoint", reconcile.chat(kube, endpoint, memo.settings), endpoint)
        await reconcile.report(kube, "ChatEndpoint", endpoint, status, always=True)
        _post(endpoint, events + [("Normal", "AdapterUpdated", f"serving {new}")])


# --- children ---------------------------------------------------------------------------------------------------
async def _child_event(kind: str, memo: kopf.Memo, work: Any) -> None:
    parent, status, events = await _run(kind, work)
    if parent is None or not status or not await reconcile.report(_kube(memo), kind, parent, status):
        return
    meta = parent["metadata"]
    if kind == "FineTuneJob":
        metrics.track_phase(meta, status.get("phase") or (parent.get("status") or {}).get("phase"))
    elif kind == "ChatEndpoint":
        metrics.track_endpoint(meta, status.get("phase") or (parent.get("status") or {}).get("phase"))
    _post(parent, events)


@kopf.on.event("batch", "v1", "jobs", labels=label_keys.MANAGED)
async def job_event(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        return
    kube, parent_kind = _kube(memo), label_keys.parent_of_job(body["metadata"].get("labels", {}))
    if parent_kind == "FineTuneJob":
        await _child_event(parent_kind, memo, reconcile.finetune_job_event(kube, dict(body), memo.settings))
    elif parent_kind == "ConvertJob":
        await _child_event(parent_kind, memo, reconcile.convert_job_event(kube, dict(body)))


@kopf.on.event("apps", "v1", "deployments", labels=label_keys.MANAGED)
async def deployment_event(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    if type != "DELETED":
        await _child_event("ChatEndpoint", memo, reconcile.chat_deployment_event(_kube(memo), dict(body)))


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    if "connection" in memo:
        await memo.connection.close()
