"""Checkpoints in S3 (or on a mounted volume: `pvc://`, `file://`) that survive preemption.

Every saved `iter_N/` is uploaded in the background by rank 0 to `<uri>/iter_N/`, files first and `manifest.json`
(every file's size and sha256) last: a checkpoint counts only when its manifest exists and every listed object is
there with its size, so an upload cut anywhere is never resumed from. `keep` is applied remotely after each upload
(manifest deleted first). Training waits for an upload only when the next save would overlap it, and at the end.
A checkpoint whose upload finally fails is logged and counted (`kubetune_checkpoint_upload_failures_total`), and
training goes on; the last one failing fails the run (`CheckpointSync.finish`). A mounted destination gets the same
layout and manifest, copied and renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Callable

from . import s3
from .errors import StorageError, StorageUnavailable
from .paths import inside

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(directory: Path) -> dict:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p != directory / MANIFEST)
    return {"files": {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256(p)} for p in files}}


def publish(directory: Path, uri: str, log: Callable[[str], None] = print) -> None:
    """A directory to `uri`: its files (a few at a time), then the manifest. Checkpoints and exported artifacts
    (adapter, merged model) alike."""
    remote = s3.S3Uri.parse(uri)
    written = directory / MANIFEST  # a checkpoint's own, computed when it was saved
    content = json.loads(written.read_text()) if written.is_file() else manifest(directory)
    s3.parallel([functools.partial(s3.put_file, directory / rel, remote.join(rel), log) for rel in content["files"]])
    s3.put_bytes(json.dumps(content, indent=1).encode(), remote.join(MANIFEST), log)


def remote_checkpoints(remote: s3.S3Uri) -> list[int]:
    """Steps of the complete checkpoints under `remote`, oldest first."""
    listing = s3.list_objects(remote)
    steps = []
    for key in listing:
        name, _, rest = key.partition("/")
        if rest == MANIFEST and name.startswith("iter_") and name[5:].isdigit():
            content = json.loads(s3.get_bytes(remote.join(key)) or b"{}")
            files = content.get("files", {})
            if all(listing.get(f"{name}/{rel}") == meta["size"] for rel, meta in files.items()):
                steps.append(int(name[5:]))
    return sorted(steps)


def download_checkpoint(remote: s3.S3Uri, step: int, work_dir: Path) -> Path:
    """`<remote>/iter_N` → `work_dir/iter_N`, every file checked against the manifest, published by a rename."""
    source = remote.join(f"iter_{step}")
    content = json.loads(s3.get_bytes(source.join(MANIFEST)) or b"{}")
    tmp = work_dir / f".iter_{step}.download"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    paths = {rel: inside(tmp, rel, f"{source.join(MANIFEST)}: entry {rel!r}") for rel in content["files"]}
    s3.parallel([functools.partial(s3.get_file, source.join(rel), paths[rel]) for rel in content["files"]])
    for rel, meta in content["files"].items():
        if sha256(paths[rel]) != meta["sha256"]:
            raise StorageError(f"{source.join(rel)}: sha256 does not match the manifest; not resuming from it")
    (tmp / MANIFEST).write_text(json.dumps(content, indent=1))  # the local copy vouches for itself as the remote did
    final = work_dir / f"iter_{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def prune_remote(remote: s3.S3Uri, keep: int) -> None:
    if keep < 1:
        return
    listing = s3.list_objects(remote)
    for step in remote_checkpoints(remote)[:-keep]:
        name = f"iter_{step}"
        s3.delete(remote, [f"{name}/{MANIFEST}"])  # first: from here on it no longer counts
        s3.delete(remote, [k for k in listing if k.startswith(name + "/") and k != f"{name}/{MANIFEST}"])


class S3Store:
    def __init__(self, uri: str):
        self.remote = s3.S3Uri.parse(uri)

    def __str__(self) -> str:
        return str(self.remote)

    def publish(self, directory: Path, log: Callable[[str], None]) -> None:
        publish(directory, str(self.remote.join(directory.name)), log)

    def steps(self) -> list[int]:
        return remote_checkpoints(self.remote)

    def fetch(self, step: int, work_dir: Path) -> Path:
        return download_checkpoint(self.remote, step, work_dir)

    def prune(self, keep: int) -> None:
        prune_remote(self.remote, keep)


class DirStore:
    """A mounted volume: `iter_N/` copied in under a temporary name, its manifest written, then renamed."""

    def __init__(self, root: Path):
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def publish(self, directory: Path, log: Callable[[str], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{directory.name}.copy"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(directory, tmp)
        if not (tmp / MANIFEST).is_file():
            (tmp / MANIFEST).write_text(json.dumps(manifest(directory), indent=1))
        final = self.root / directory.name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def steps(self) -> list[int]:
        found = []
        for path in self.root.glob("iter_*"):
            if path.name[5:].isdigit() and (path / MANIFEST).is_file() and verify(path, quick=True):
                found.append(int(path.name[5:]))
        return sorted(found)

    def fetch(self, step: int, work_dir: Path) -> Path:
        source, tmp = self.root / f"iter_{step}", work_dir / f".iter_{step}.download"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        if not verify(tmp):
            raise StorageError(f"{source}: files differ from its {MANIFEST} (sizes or sha256); not resuming from it")
        final = work_dir / f"iter_{step}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def prune(self, keep: int) -> None:
        if keep >= 1:
            for step in self.steps()[:-keep]:
                (self.root / f"iter_{step}" / MANIFEST).unlink()  # first: from here on it no longer counts
                shutil.rmtree(self.root / f"iter_{step}", ignore_errors=True)


def store(uri: str) -> S3Store | DirStore:
    from . import local_destination

    root = local_destination(uri)
    return S3Store(uri) if root is None else DirStore(root)


def verify(directory: Path, quick: bool = False) -> bool:
    """Every file the manifest lists is there with its size (and, unless `quick`, its sha256); a checkpoint without
    a manifest (written before manifests existed) passes."""
    path = directory / MANIFEST
    if not path.is_file():
        return True
    files = json.loads(path.read_text()).get("files", {})
    for rel, meta in files.items():
        local = inside(directory, rel, f"{path}: entry {rel!r}")
        if not local.is_file() or local.stat().st_size != meta.get("size") or \
                (not quick and sha256(local) != meta.get("sha256")):
            return False
    return True


class CheckpointSync:
    """Background uploads of one rank, one at a time."""

    def __init__(self, uri: str, keep: int, log: Callable[[str], None]):
        self.store = store(uri)
        self.keep, self.log = keep, log
        self.thread: threading.Thread | None = None
        self.failures = _failure_counter()
        self.last_failed: str | None = None

    def submit(self, directory: Path) -> None:
        self.wait()  # the previous upload must be done before the next starts (and before `keep` prunes it)
        self.thread = threading.Thread(target=self._upload, args=(directory,), name="checkpoint-upload", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def finish(self) -> None:
        """Wait for the last upload; if it failed, the run's only copy is on a volume that goes with the pod."""
        self.wait()
        if self.last_failed:
            raise StorageUnavailable(f"the final checkpoint was not saved to {self.store}: {self.last_failed}")

    def _upload(self, directory: Path) -> None:
        try:
            self._check_complete_locally(directory)
            self.store.publish(directory, self.log)
            self.store.prune(self.keep)
            self.last_failed = None
            self.log(f"checkpoint {directory.name} saved to {self.store}/{directory.name}")
        except (StorageError, OSError) as exc:
            self.last_failed = str(exc)
            if self.failures is not None:
                self.failures.inc()
            self.log(f"checkpoint {directory.name}: upload failed, training goes on: {exc}")

    def _check_complete_locally(self, directory: Path) -> None:
        """Every rank's RNG state is written by rank 0; DeepSpeed's optimizer partitions are written by each rank
        where it runs, so on per-node disks (each pod its own emptyDir) rank 0 holds only its node's: such a
        checkpoint could not be resumed, and is not published."""
        state = json.loads((directory / "trainer_state.json").read_text())
        partitions = directory / "deepspeed"
        if partitions.is_dir():
            found = {int(m.group(1)) for p in partitions.rglob("*optim_states.pt")
                     if (m := re.search(r"zero_pp_rank_(\d+)_", p.name))}
            missing = [r for r in range(int(state.get("world_size", 1))) if r not in found]
            if missing:
                raise StorageError(f"the DeepSpeed partitions of ranks {missing} are not in {directory} (they are on "
                                   "other nodes' disks): a multi-node DeepSpeed run publishes checkpoints only with "
                                   "its work dir on one shared volume (resources.workVolume, a ReadWriteMany claim)")


def _failure_counter():
    try:
        from prometheus_client import REGISTRY, Counter
    except ImportError:
        return None
    existing = REGISTRY._names_to_collectors.get("kubetune_checkpoint_upload_failures_total")
    return existing or Counter("kubetune_checkpoint_upload_failures", "Checkpoints whose upload finally failed")
