"""What each handler does, as plain async functions over the client: read, build, apply, patch status."""

from __future__ import annotations

import json
import time
from typing import Any

from kubetune.api import API_VERSION, ManifestError, parse_manifest
from kubetune.api.convert import export_specs

from . import labels as label_keys, metrics, status as st
from .builders import chat as chat_b, convert as convert_b, finetune as ftj_b
from .builders.common import created_suspended
from .client import ApiError, Kube, NotOwned
from .failures import classify
from .settings import Settings

KUEUE_API = "kueue.x-k8s.io/v1beta2"


class Waiting(Exception):
    """A dependency is not there yet (a checkpoint, an adapter); retry later."""


def parse(body: dict, kind: str) -> Any:
    raw = {"apiVersion": body.get("apiVersion", API_VERSION), "kind": kind,
           "metadata": {"name": body["metadata"]["name"]}, "spec": dict(body.get("spec") or {})}
    return parse_manifest(raw, f"{kind}/{body['metadata']['name']}", kind=kind).spec


# The resolved spec goes into a ConfigMap (1 MiB) and kopf's last-handled copy into an annotation (all annotations:
# 256 KiB); a spec near those limits can never be applied, so it fails at once instead of retrying forever. Real
# specs are a few KiB.
MAX_SPEC_BYTES = 128 << 10


def spec_bytes(body: dict) -> int:
    return len(json.dumps(body.get("spec") or {}, separators=(",", ":")))


def parse_or_reject(body: dict, kind: str) -> tuple[Any, tuple[dict, list] | None]:
    """(spec, None), or (None, (status patch, events)) that fail the resource and name every bad field."""
    size = spec_bytes(body)
    if size > MAX_SPEC_BYTES:
        return None, fail(body, "SpecTooLarge", f"spec is {size / 1024:.0f} KiB; at most {MAX_SPEC_BYTES >> 10} KiB "
                                                "fits what the operator must store (a ConfigMap, annotations)")
    try:
        return parse(body, kind), None
    except ManifestError as error:
        message = "; ".join(f"{p}: {m}" for p, m in error.errors) or str(error)
        return None, fail(body, "InvalidSpec", message, str(error))


def fail(body: dict, reason: str, message: str, event: str | None = None) -> tuple[dict, list]:
    """The status patch and Warning event that fail a resource for a reason its owner must fix."""
    generation = body["metadata"].get("generation", 1)
    conditions = st.set_condition([], "Failed", True, reason, message, st.now_iso(), generation)
    status = {"phase": st.Phase.FAILED, "message": message, "observedGeneration": generation, "conditions": conditions}
    return status, [("Warning", reason, event or message)]


def not_owned(body: dict, exc: NotOwned) -> tuple[dict, list]:
    return fail(body, "NotOwned", str(exc))


# --- FineTuneJob ------------------------------------------------------------------------------------------------
async def finetune(kube: Kube, body: dict, settings: Settings) -> tuple[dict, list]:
    """Apply the current attempt's children (or delete them when suspended); return (status patch, events)."""
    meta, status = body["metadata"], dict(body.get("status") or {})
    generation = meta.get("generation", 1)
    spec, rejected = parse_or_reject(body, "FineTuneJob")
    if rejected:
        return rejected
    attempt = st.attempt(status)
    jname = ftj_b.job_name(meta["name"], attempt)
    if status.get("phase") in st.FINISHED:
        return {"observedGeneration": generation}, []
    if spec.run_policy.suspend:  # no Job, so no Job events: this handler reports the phase itself
        await kube.delete("batch/v1", "Job", meta["namespace"], jname)
        outcome = st.finetune(None, status, spec, generation, st.now_iso())
        return outcome.patch, outcome.events
    *supporting, job_manifest = ftj_b.children(body, spec, attempt, settings)
    await apply_in_order(kube, supporting)
    try:
        await apply_job(kube, job_manifest)  # last, once what it mounts exists
    except ApiError as exc:
        if not exc.refused:
            raise
        job = await kube.get("batch/v1", "Job", meta["namespace"], jname)
        if job is None:  # nothing runs: the spec asks for a Job Kubernetes will not take
            return fail(body, "Rejected", f"the training Job {jname} was refused: {exc.message}")
        # A running Job's pod template is immutable: the change waits for the next attempt, and says so.
        outcome = st.finetune(job, status, spec, generation, st.now_iso())
        message = (f"the spec changed while the job runs; its pods keep the old spec until the next attempt "
                   f"(suspend and resume to apply it now); the apiserver said: {exc.message}")
        outcome.patch["conditions"] = st.set_condition(outcome.patch.get("conditions", []), "SpecApplied", False,
                                                       "RunningWithPreviousSpec", message, st.now_iso(), generation)
        return outcome.patch, outcome.events + [("Warning", "RunningWithPreviousSpec", message)]
    # The phase is the Job watch's to write (finetune_job_event): a phase computed here could land after a newer one.
    return {"observedGeneration": generation}, []


async def apply_job(kube: Kube, job: dict) -> None:
    """A Job is created once with what only its creation may set (a queued Job's `suspend`, then Kueue's), and
    otherwise applied like every child."""
    await kube.apply(job, initial=created_suspended(job))


async def apply_in_order(kube: Kube, children: list[dict]) -> None:
    """One after another, in the builders' order: a RoleBinding applied while its Role is still being created is
    answered 404 by the RBAC escalation check, which a concurrent apply (now one read slower) ran into."""
    for child in children:
        await kube.apply(child)


async def finetune_job_event(kube: Kube, job: dict, settings: Settings) -> tuple[dict | None, dict, list]:
    """A child Job changed: recompute the parent's status; restart the gang on failure. Returns (parent, patch,
    events), parent None when the event is stale (an older attempt, a deleted parent)."""
    labels = job["metadata"].get("labels", {})
    parent = await _owner(kube, job, "FineTuneJob")
    if parent is None:
        return None, {}, []
    ns = parent["metadata"]["namespace"]
    status = dict(parent.get("status") or {})
    if labels.get(ftj_b.ATTEMPT_LABEL) != str(st.attempt(status)):
        return None, {}, []
    try:
        spec = parse(parent, "FineTuneJob")
    except ManifestError:
        return None, {}, []
    generation = parent["metadata"].get("generation", 1)
    observed = await observe(kube, job, spec)
    outcome = st.finetune(job, status, spec, generation, st.now_iso(), observed)
    if outcome.restart:
        metrics.RESTARTS.labels(ns, parent["metadata"]["name"]).inc()
        await kube.delete("batch/v1", "Job", ns, job["metadata"]["name"])
        parent_next = {**parent, "status": {**status, **outcome.patch}}
        *supporting, job_manifest = ftj_b.children(parent_next, spec, st.attempt(parent_next["status"]), settings)
        await apply_in_order(kube, supporting)
        await apply_job(kube, job_manifest)
    phase = outcome.patch.get("phase")
    if phase == st.Phase.RUNNING and status.get("phase") != st.Phase.RUNNING:
        created = st.timestamp(parent["metadata"].get("creationTimestamp"))
        if created:
            metrics.QUEUE_SECONDS.observe(max(0.0, time.time() - created))
    if phase in st.FINISHED and status.get("phase") != phase:
        started = st.timestamp(status.get("startTime") or job.get("status", {}).get("startTime"))
        if started:
            metrics.DURATION_SECONDS.observe(max(0.0, time.time() - started))
        if phase == st.Phase.SUCCEEDED:
            outcome.events.extend(await export(kube, parent, spec, settings))
    return parent, outcome.patch, outcome.events


async def observe(kube: Kube, job: dict, spec: Any) -> st.Observed:
    """What the status logic needs besides the Job: why its pods failed (read before the Job and its pods are
    deleted for the next attempt), or why Kueue suspended it (its Workload, found by the Job's uid)."""
    ns = job["metadata"]["namespace"]
    if st.job_condition(job, "Failed") is not None:
        pods = await kube.list("v1", "Pod", ns, selector=f"batch.kubernetes.io/job-name={job['metadata']['name']}")
        return st.Observed(failure=classify(pods))
    if spec.run_policy.queue_name and (job.get("spec") or {}).get("suspend"):
        try:
            workloads = await kube.list(KUEUE_API, "Workload", ns,
                                        selector=f"kueue.x-k8s.io/job-uid={job['metadata']['uid']}")
        except ApiError as exc:  # Kueue installed after the chart (no rule to read it): say Queued, not why
            if exc.status != 403:
                raise
            workloads = []
        evicted = [c for w in workloads for c in (w.get("status") or {}).get("conditions") or []
                   if c.get("type") == "Evicted" and c.get("status") == "True"]
        return st.Observed(eviction=evicted[0] if evicted else None)
    return st.Observed()


async def pods_refused(kube: Kube, body: dict) -> tuple[dict, list] | None:
    """Why the current attempt's Job cannot create its pods (Pod Security, a quota, a webhook), as a condition and a
    Warning event on the FineTuneJob; None when nothing is refused or it is already reported. The Job controller
    keeps retrying, so the phase stays and the condition clears when pods appear."""
    meta, status = body["metadata"], dict(body.get("status") or {})
    jname = ftj_b.job_name(meta["name"], st.attempt(status))
    refused = await kube.list("v1", "Event", meta["namespace"],
                              fields=f"involvedObject.kind=Job,involvedObject.name={jname},reason=FailedCreate")
    if not refused:
        return None
    latest = max(refused, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    message = f"the Job {jname} cannot create its pods: {latest.get('message', 'FailedCreate')}"
    current = next((c for c in status.get("conditions", []) if c["type"] == "PodsCreated"), None)
    if current and current.get("status") == "False" and current.get("message") == message:
        return None
    generation = meta.get("generation", 1)
    conditions = st.set_condition(list(status.get("conditions", [])), "PodsCreated", False, "FailedCreate", message,
                                  st.now_iso(), generation)
    return {"message": message, "conditions": conditions}, [("Warning", "PodsRefused", message)]


async def export(kube: Kube, parent: dict, spec: Any, settings: Settings) -> list:
    """After success, the ConvertJob `export` asks for first (pth_to_hf into checkpoints.uri/export/hf); the merge
    follows when the adapter is there (convert_job_event)."""
    if not (spec.export.adapter or spec.export.merge):
        return []
    if not export_specs(parent["metadata"]["name"], spec):
        return [("Warning", "ExportSkipped", "export needs checkpoints.uri (where the artifacts go)")]
    name = await _export_job(kube, parent, spec, "adapter")
    return [("Normal", "Exporting", f"ConvertJob {name} created")]


async def delete_after_ttl(kube: Kube, body: dict) -> None:
    """Delete a finished FineTuneJob once runPolicy.ttlSecondsAfterFinished has passed, but not while its exports
    run (deleting the job would garbage-collect them)."""
    done = st.timestamp((body.get("status") or {}).get("completionTime"))
    if done is None or time.time() < done + body["spec"]["runPolicy"]["ttlSecondsAfterFinished"]:
        return
    if not await exports_running(kube, body):
        meta = body["metadata"]
        await kube.delete(body["apiVersion"], "FineTuneJob", meta["namespace"], meta["name"])


async def endpoints_serving(kube: Kube, body: dict) -> list[dict]:
    """The ChatEndpoints whose adapters name this FineTuneJob (they roll when it exports a new adapter)."""
    meta = body["metadata"]
    return [e for e in await kube.list(body["apiVersion"], "ChatEndpoint", meta["namespace"])
            if any(a.get("fineTuneJobRef") == meta["name"] for a in e["spec"].get("adapters", []))]


async def report(kube: Kube, kind: str, parent: dict, status: dict, always: bool = False) -> bool:
    """Write a child's news into its parent's status; False when there is nothing new (the apiserver is spared a
    write) or the parent went away meanwhile."""
    current = parent.get("status") or {}
    if not always and all(current.get(k) == v for k, v in status.items()):
        return False
    meta = parent["metadata"]
    try:
        await kube.patch_status(parent["apiVersion"], kind, meta["namespace"], meta["name"], status)
    except ApiError as exc:
        if exc.status != 404:
            raise
        return False
    return True


async def exports_running(kube: Kube, parent: dict) -> bool:
    """Whether one of the job's export ConvertJobs is still converting (they are its children)."""
    meta = parent["metadata"]
    for which in ("adapter", "merged"):
        export_job = await kube.get(API_VERSION, "ConvertJob", meta["namespace"], f"{meta['name']}-export-{which}")
        if export_job and (export_job.get("status") or {}).get("phase") not in st.FINISHED:
            return True
    return False


async def _export_job(kube: Kube, parent: dict, spec: Any, which: str) -> str:
    from .builders.common import metadata

    name = parent["metadata"]["name"]
    manifest: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "ConvertJob",
                "metadata": metadata(parent, f"{name}-export-{which}", "export"),
                "spec": export_specs(name, spec)[which]}
    await kube.apply(manifest)
    return manifest["metadata"]["name"]


# --- ConvertJob -------------------------------------------------------------------------------------------------
async def convert(kube: Kube, body: dict, settings: Settings) -> tuple[dict, list]:
    meta, status = body["metadata"], dict(body.get("status") or {})
    generation = meta.get("generation", 1)
    spec, rejected = parse_or_reject(body, "ConvertJob")
    if rejected:
        return rejected
    if status.get("phase") in st.FINISHED:
        return {"observedGeneration": generation}, []
    source, base, config_map = spec.source.checkpoint_uri, spec.base_model.uri if spec.base_model else None, None
    if spec.source.fine_tune_job_ref:
        ref = await kube.get(API_VERSION, "FineTuneJob", meta["namespace"], spec.source.fine_tune_job_ref)
        checkpoint = ((ref or {}).get("status") or {}).get("latestCheckpoint") or {}
        if not checkpoint.get("uri"):
            raise Waiting(f"FineTuneJob {spec.source.fine_tune_job_ref} has no checkpoint yet")
        source = checkpoint["uri"]
        base = base or (ref or {}).get("spec", {}).get("model", {}).get("uri")
        config_map = ftj_b.names(spec.source.fine_tune_job_ref)["config"]
    *claims, job = convert_b.children(body, spec, source, base, config_map, settings)
    await apply_in_order(kube, claims)
    await apply_job(kube, job)
    return {"observedGeneration": generation}, []  # the Job watch writes the phase (convert_job_event)


async def _owner(kube: Kube, child: dict, kind: str) -> dict | None:
    """The parent a child's `kubetune.io/<kind>` label names, if it still exists."""
    name = child["metadata"].get("labels", {}).get(label_keys.owner(kind))
    return await kube.get(API_VERSION, kind, child["metadata"]["namespace"], name) if name else None


async def convert_job_event(kube: Kube, job: dict) -> tuple[dict | None, dict, list]:
    parent = await _owner(kube, job, "ConvertJob")
    if parent is None:
        return None, {}, []
    ns = parent["metadata"]["namespace"]
    outcome = st.convert(job, dict(parent.get("status") or {}), parent["spec"]["output"]["uri"],
                         parent["metadata"].get("generation", 1), st.now_iso())
    exported_by = parent["metadata"].get("labels", {}).get(label_keys.owner("FineTuneJob"))
    if outcome.patch.get("phase") == st.Phase.SUCCEEDED and exported_by:  # an export: the FineTuneJob shows the artifact
        which = "merged" if parent["metadata"]["name"].endswith("-export-merged") else "adapter"
        await kube.patch_status(API_VERSION, "FineTuneJob", ns, exported_by,
                                {"artifacts": {which: outcome.patch["outputUri"]}})
        owner = await kube.get(API_VERSION, "FineTuneJob", ns, exported_by)
        if which == "adapter" and owner and (owner.get("spec", {}).get("export") or {}).get("merge"):
            name = await _export_job(kube, owner, parse(owner, "FineTuneJob"), "merged")
            outcome.events.append(("Normal", "Exporting", f"adapter exported; ConvertJob {name} merges it"))
    return parent, outcome.patch, outcome.events


# --- ChatEndpoint -----------------------------------------------------------------------------------------------
async def chat(kube: Kube, body: dict, settings: Settings) -> tuple[dict, list]:
    meta = body["metadata"]
    generation = meta.get("generation", 1)
    spec, rejected = parse_or_reject(body, "ChatEndpoint")
    if rejected:
        return rejected
    adapters = {}
    for a in spec.adapters:
        uri = a.uri
        if a.fine_tune_job_ref:
            ref = await kube.get(API_VERSION, "FineTuneJob", meta["namespace"], a.fine_tune_job_ref)
            uri = (((ref or {}).get("status") or {}).get("artifacts") or {}).get("adapter")
            if not uri:
                raise Waiting(f"FineTuneJob {a.fine_tune_job_ref} has not exported an adapter yet")
        adapters[a.name] = uri
    for child in chat_b.children(body, spec, adapters, settings):
        if child["kind"] == "Deployment":
            await replace_if_reselected(kube, child)
        await kube.apply(child)
    # The Deployment watch writes the phase (chat_deployment_event); this only says where and what is served.
    return {"observedGeneration": generation, "url": _url(meta), "servedModel": ",".join([meta["name"], *adapters])}, []


async def replace_if_reselected(kube: Kube, deployment: dict) -> None:
    """A Deployment's selector cannot change: one made by an operator that selected pods by other labels (before
    kubetune 0.1.0 selected app.kubernetes.io/instance) is deleted, and the apply that follows creates it anew."""
    meta = deployment["metadata"]
    current = await kube.get("apps/v1", "Deployment", meta["namespace"], meta["name"])
    ours = {o["uid"] for o in meta["ownerReferences"]}
    theirs = {o.get("uid") for o in ((current or {}).get("metadata") or {}).get("ownerReferences", ())}
    # Only our own: someone else's Deployment of that name is left for the apply to refuse (NotOwned).
    if current and ours & theirs and current["spec"]["selector"] != deployment["spec"]["selector"]:
        await kube.delete("apps/v1", "Deployment", meta["namespace"], meta["name"])


def _url(meta: dict) -> str:
    return f"http://{meta['name']}.{meta['namespace']}.svc/v1"


async def chat_deployment_event(kube: Kube, deployment: dict) -> tuple[dict | None, dict, list]:
    parent = await _owner(kube, deployment, "ChatEndpoint")
    if parent is None:
        return None, {}, []
    name = parent["metadata"]["name"]
    try:
        spec = parse(parent, "ChatEndpoint")
    except ManifestError:
        return None, {}, []
    adapters = {a.name: a.uri or "" for a in spec.adapters}
    status = dict(parent.get("status") or {})
    url = status.get("url") or _url(parent["metadata"])
    outcome = st.chat(deployment, status, url, ",".join([name, *adapters]), parent["metadata"].get("generation", 1),
                      st.now_iso())
    return parent, outcome.patch, outcome.events
