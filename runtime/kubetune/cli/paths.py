"""Relative local paths in a config: a YAML manifest's are its own folder's, an XTuner .py config's the working
directory's (as XTuner reads them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# The FineTuneJob fields that may hold a local path: (object path from the spec, attribute).
PATH_FIELDS = (("model", "uri"), ("dataset", "uri"), ("checkpoints", "uri"), ("dataset", "image_folder"),
               ("model.vision", "encoder"), ("model.vision", "projector"))


def resolve_relative_paths(obj: Any, base: Path) -> Any:
    """Relative local paths in a YAML config mean relative to that file (as in kustomize and compose files), so a
    config and its data can move together; an XTuner .py config's are relative to the working directory, as XTuner
    reads them (the caller passes the base)."""
    if getattr(obj, "kind", None) != "FineTuneJob":
        return obj
    spec = obj.spec
    for owner, attribute in PATH_FIELDS:
        targets = [spec] if owner else []
        for part in owner.split("."):
            targets = [getattr(t, part, None) for t in targets]
        if owner == "dataset":
            targets += list(spec.dataset.concat) if attribute == "uri" else []
        for target in targets:
            value = getattr(target, attribute, None) if target is not None else None
            if value:
                setattr(target, attribute, rebase(value, base))
    return obj


def rebase(uri: str, base: Path, to: Path | None = None) -> str:
    """A relative local path (or file:// URI) made absolute against `base`, or, with `to`, relative to `to`; other
    URIs as they are."""
    path = uri[len("file://"):] if uri.startswith("file://") else (None if "://" in uri else uri)
    if path is None or Path(path).is_absolute():
        return uri
    absolute = (base / path).resolve()
    return os.path.relpath(absolute, to.resolve()) if to is not None else str(absolute)
