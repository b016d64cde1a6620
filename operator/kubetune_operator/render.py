"""`kubetune-operator render FILE`: the children the operator would create for a FineTuneJob, ConvertJob or
ChatEndpoint manifest, with the operator's settings from the environment, without a cluster. The builders are pure
(spec in, manifests out), so this is what the operator applies; only what it would read from other resources at
run time (a referenced FineTuneJob's checkpoint or adapter) is shown as a `<placeholder>`."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from kubetune.api import ConvertJob, FineTuneJob, parse_manifest

from .builders import chat as chat_b, convert as convert_b, finetune as ftj_b
from .builders.common import Manifest
from .settings import Settings

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"  # the apiserver assigns the real one


def render(doc: dict[str, Any], source: str, settings: Settings) -> list[Manifest]:
    job = parse_manifest(doc, source)  # the CRD's rules, as the apiserver would enforce them
    body = copy.deepcopy(job.to_dict())
    meta = body.setdefault("metadata", {})
    if not meta.get("name"):  # a bare spec: named after its file, as `kubetune train` names its run
        meta["name"] = re.sub(r"[^a-z0-9-]+", "-", Path(source).stem.lower()).strip("-")[:63] or "unnamed"
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", PLACEHOLDER_UID)
    meta.setdefault("generation", 1)
    if isinstance(job, FineTuneJob):
        return ftj_b.children(body, job.spec, 0, settings)
    if isinstance(job, ConvertJob):
        spec = job.spec
        source_uri = spec.source.checkpoint_uri or ""
        base = spec.base_model.uri if spec.base_model else None
        config_map = None
        if spec.source.fine_tune_job_ref:
            ref = spec.source.fine_tune_job_ref
            source_uri = f"<status.latestCheckpoint.uri of FineTuneJob {ref}>"
            base = base or f"<spec.model.uri of FineTuneJob {ref}>"
            config_map = ftj_b.names(ref)["config"]
        return convert_b.children(body, spec, source_uri, base, config_map, settings)
    adapters = {a.name: a.uri or f"<status.artifacts.adapter of FineTuneJob {a.fine_tune_job_ref}>"
                for a in job.spec.adapters}
    return chat_b.children(body, job.spec, adapters, settings)
