"""Resolve a URI to a local path. `file://`, plain paths, `pvc://` and `hf://` work now; `s3://` lands with the
storage issue (#6) behind this same function, so callers will not change."""

from __future__ import annotations

import os
from pathlib import Path


class StorageError(Exception):
    """A URI that cannot be resolved; the message names it."""


PVC_ROOT_ENV = "KUBETUNE_PVC_ROOT"


def local_path(uri: str, repo_type: str = "model") -> Path:
    """A local file or directory holding what `uri` names (downloading hf:// into the HF cache)."""
    if uri.startswith("file://"):
        return _existing(Path(uri[len("file://"):]), uri)
    if uri.startswith("pvc://"):
        claim_and_path = uri[len("pvc://"):]
        # The operator mounts each claim at <root>/<claim>; outside a pod the root can point anywhere.
        return _existing(Path(os.environ.get(PVC_ROOT_ENV, "/mnt/pvc")) / claim_and_path, uri)
    if uri.startswith("hf://"):
        return _hf(uri[len("hf://"):], repo_type)
    if uri.startswith("s3://"):
        raise StorageError(f"{uri}: s3:// is not available yet (the storage layer lands with issue #6); "
                           "copy the data to a local path or a PVC for now")
    if "://" in uri:
        raise StorageError(f"{uri}: unknown scheme; use hf://, s3://, pvc://, file:// or a local path")
    return _existing(Path(uri), uri)


def _existing(path: Path, uri: str) -> Path:
    if not path.exists():
        raise StorageError(f"{uri}: no such file or directory")
    return path


def _hf(spec: str, repo_type: str) -> Path:
    repo_id, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - the train extra brings it
        raise StorageError(f"hf://{spec}: huggingface_hub is not installed (pip install 'kubetune[train]')") from exc
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision or None,
                                      token=os.environ.get("HF_TOKEN") or None))
    except LocalEntryNotFoundError:
        raise StorageError(f"hf://{spec}: not in the local Hugging Face cache and the hub cannot be reached "
                           "(HF_HUB_OFFLINE is set or there is no network)") from None
    except Exception as exc:  # the hub client raises many types; the user needs the message, not the class
        raise StorageError(f"hf://{spec}: {type(exc).__name__}: {exc}") from None
