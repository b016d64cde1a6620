"""One small URI layer for data, models, checkpoints and exports: `file://` and plain paths, `pvc://CLAIM/path` (a
claim the operator mounts under $KUBETUNE_PVC_ROOT, default /mnt/pvc), `s3://bucket/prefix` (downloaded into
$KUBETUNE_CACHE/s3, see s3.py for credentials and retries) and `hf://org/name[@revision]` (huggingface_hub's cache,
HF_HUB_OFFLINE honoured, HF_TOKEN used)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from .errors import StorageError, StorageUnavailable
from .paths import claim_path, inside

__all__ = ["StorageError", "local_path", "xtuner_checkpoint_alias", "local_destination", "is_remote", "PVC_ROOT_ENV"]

PVC_ROOT_ENV = "KUBETUNE_PVC_ROOT"


def local_path(uri: str, repo_type: str = "model") -> Path:
    """A local file or directory holding what `uri` names (downloading hf:// into the HF cache)."""
    if uri.startswith(("file://", "pvc://")):
        return _existing(_mounted(uri), uri)
    if uri.startswith("hf://"):
        return _hf(uri[len("hf://"):], repo_type)
    if uri.startswith("s3://"):
        return _s3(uri)
    if "://" in uri:
        raise StorageError(f"{uri}: unknown scheme; use hf://, s3://, pvc://, file:// or a local path")
    return _existing(Path(uri), uri)


def local_destination(uri: str) -> Path | None:
    """Where an output URI is written on this machine; None for s3:// (written locally first, then published)."""
    if uri.startswith("s3://"):
        return None
    if uri.startswith(("file://", "pvc://")):
        return _mounted(uri)
    if "://" in uri:
        raise StorageError(f"{uri}: unknown scheme for an output; use s3://, pvc://, file:// or a local path")
    return Path(uri)


def _mounted(uri: str) -> Path:
    if uri.startswith("file://"):
        path = uri[len("file://"):]
        if not path.startswith("/"):
            raise StorageError(f"{uri}: a file:// URI names an absolute path (file:///abs/path); write a relative "
                               "path without the scheme")
        return Path(path)
    # The operator mounts each claim at <root>/<claim>; outside a pod the root can point anywhere.
    return claim_path(Path(os.environ.get(PVC_ROOT_ENV, "/mnt/pvc")), uri[len("pvc://"):], uri)


def _existing(path: Path, uri: str) -> Path:
    if not path.exists():
        alias = xtuner_checkpoint_alias(path)
        if alias is not None:
            return alias
        raise StorageError(f"{uri}: no such file or directory")
    return path


def xtuner_checkpoint_alias(path: Path) -> Path | None:
    """XTuner names a checkpoint `iter_N.pth` (and, by epochs, `epoch_N.pth`); kubetune writes `iter_N/`. A missing
    `iter_N.pth` beside an existing `iter_N/` is that checkpoint, and a missing `epoch_N.pth` is the checkpoint
    written where epoch N ended (its trainer_state's epoch), so XTuner's commands (convert, pretrained_pth, --resume,
    test) run on kubetune's runs."""
    if path.suffix != ".pth":
        return None
    if path.name.startswith("iter_") and path.with_suffix("").is_dir():
        return path.with_suffix("")
    stem = path.stem
    if stem.startswith("epoch_") and stem[6:].isdigit() and path.parent.is_dir():
        for candidate in sorted(path.parent.glob("iter_*")):
            try:
                epoch = json.loads((candidate / "trainer_state.json").read_text()).get("epoch")
            except (OSError, ValueError):
                continue
            if epoch == int(stem[6:]):
                return candidate
    return None


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
        raise StorageUnavailable(f"hf://{spec}: not in the local Hugging Face cache and the hub cannot be reached "
                                 "(HF_HUB_OFFLINE is set or there is no network)") from None
    except Exception as exc:  # the hub client raises many types; the user needs the message, not the class
        kind = StorageError if type(exc).__name__ in _HUB_REFUSALS else StorageUnavailable
        raise kind(f"hf://{spec}: {type(exc).__name__}: {exc}") from None


# What the hub says about the request itself (no such repo, revision or file; gated): retrying cannot help.
_HUB_REFUSALS = {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError", "GatedRepoError"}


def is_remote(uri: str | None) -> bool:
    return uri is not None and uri.startswith("s3://")


def cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")


def _s3(uri: str) -> Path:
    """A prefix becomes a directory of its objects, a single object a file; a second call with the same listing
    (keys, sizes, ETags) reuses what is already there."""
    from . import s3

    where = s3.S3Uri.parse(uri)
    target = inside(cache_root() / "s3", f"{where.bucket}/{where.key}".rstrip("/"), uri)
    listing = {key: size for key, size in s3.list_objects(where).items() if not key.endswith("/")}  # not folders
    if not listing:  # not a prefix: maybe one object
        size = s3.list_objects(s3.S3Uri(where.bucket, where.key.rpartition("/")[0])).get(where.key.rpartition("/")[2])
        if size is None:
            raise StorageError(f"{uri}: no such object or prefix")
        if not (target.is_file() and target.stat().st_size == size):
            print(f"kubetune: downloading {uri} ({size / 2**20:.1f} MiB)", flush=True)
            s3.get_file(where, target)
        return target
    index = target / ".kubetune-s3-listing.json"
    if index.is_file() and json.loads(index.read_text()) == listing:
        return target
    total = sum(listing.values())
    print(f"kubetune: downloading {len(listing)} files ({total / 2**20:.1f} MiB) from {uri}", flush=True)
    paths = {key: inside(target, key, f"{uri}: object {key!r}") for key in listing}  # every key, before any transfer
    s3.parallel([functools.partial(s3.get_file, where.join(key), paths[key]) for key in listing])
    index.write_text(json.dumps(listing))
    return target
