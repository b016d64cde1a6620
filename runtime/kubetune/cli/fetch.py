"""`kubetune fetch CONFIG`: download a FineTuneJob's models and datasets into the cache volume before training (the
operator runs it as every trainer pod's init container when `resources.cacheVolume` is set)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from .common import load_config


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description="Download what a FineTuneJob reads from hf:// and s3:// "
                       "into the cache ($HF_HOME, $KUBETUNE_CACHE) once, under a lock that pods sharing the cache "
                       "volume take in turn.")
    p.add_argument("config", help="FineTuneJob YAML/JSON (manifest or bare spec), or a predefined config name")
    p.set_defaults(func=run)


def sources(spec: Any) -> list[tuple[str, str]]:
    """Every URI training reads, with the hub repository type it is fetched as."""
    vision = spec.model.vision
    models = [spec.model.uri] + ([vision.encoder, vision.projector] if vision else [])
    data = [spec.dataset.uri, spec.dataset.image_folder] + [c.uri for c in spec.dataset.concat]
    return [(u, "model") for u in models if u] + [(u, "dataset") for u in data if u]


def run(args: argparse.Namespace) -> int:
    from kubetune.storage import cache_root, fetch
    from kubetune.train.report import StatusReporter

    job = load_config(args.config)
    uris = sources(job.spec)
    # One pod speaks for the gang; the others only wait on the lock.
    reporter = StatusReporter.from_env(Path("."), None) if os.environ.get("NODE_RANK", "0") == "0" else None
    root = Path(os.environ.get("KUBETUNE_CACHE_VOLUME") or cache_root())
    remote = [u for u, _ in uris if u.startswith(fetch.REMOTE)]

    def say(state: str, size: int, **extra: Any) -> None:
        if reporter:
            reporter.patch({"cache": {"state": state, "bytes": size, "uris": remote, **extra}})

    start = time.monotonic()
    say("Fetching", fetch.disk_bytes(root))
    downloaded = fetch.fetch(uris, root, lambda size: say("Fetching", size))
    size = fetch.disk_bytes(root)
    say("Ready", size, downloaded=downloaded)
    verb = "downloaded" if downloaded else "already cached:"
    print(f"kubetune: {verb} {', '.join(remote) or 'nothing remote'} ({size / 2**30:.2f} GiB in {root}, "
          f"{time.monotonic() - start:.0f} s)", flush=True)
    return 0
