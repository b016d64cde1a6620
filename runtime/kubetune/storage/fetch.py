"""Filling a shared cache volume once: every pod of a gang runs this before training, the first to take the lock
downloads, the others wait on it and then find everything there (so do later jobs sharing the claim).

A POSIX record lock (fcntl), not a lock file: it works across the nodes of an NFS, CephFS or Lustre claim, and the
kernel drops it when its holder dies, so a pod killed mid-download never leaves the others waiting for ever. What is
downloaded is verified the way every read is (s3:// listings, hf:// snapshots), so a cut download is resumed, never
trusted."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Callable

from . import local_path

LOCK = ".kubetune-fetch.lock"
REMOTE = ("hf://", "s3://")


def disk_bytes(root: Path) -> int:
    total = 0
    for base, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:  # removed while counting (a rename into place)
                pass
    return total


def fetch(uris: list[tuple[str, str]], root: Path, progress: Callable[[int], None],
          every_seconds: float = 10.0) -> bool:
    """`(uri, repo_type)` pairs into the cache under `root`, under the volume's lock; `progress` hears the bytes
    there every few seconds. Returns whether anything was downloaded."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("a") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # blocks while another pod downloads
        before = disk_bytes(root)
        done = threading.Event()
        reporter = threading.Thread(target=_report, args=(root, progress, done, every_seconds), daemon=True)
        reporter.start()
        try:
            for uri, repo_type in uris:
                if uri.startswith(REMOTE):
                    local_path(uri, repo_type=repo_type)
        finally:
            done.set()
            reporter.join()
        return disk_bytes(root) > before


def _report(root: Path, progress: Callable[[int], None], done: threading.Event, every: float) -> None:
    while not done.wait(every):
        progress(disk_bytes(root))
