"""`kubetune fetch CONFIG`: download a FineTuneJob's models and datasets into the cache volume before training (the
operator runs it as every trainer pod's init container when `resources.cacheVolume` is set), or a ChatEndpoint's
model and adapters before its server starts (every server pod's init container): `--into DIR` then lays them out
as `DIR/model`, `DIR/adapters/NAME` and `DIR/endpoint.yaml` (the endpoint with those local paths), so the server,
kubetune's or vLLM's, reads local paths only and holds no storage credentials."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from .common import load_config
from .errors import UserError


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description="Download what a FineTuneJob reads from hf:// and s3:// "
                       "into the cache ($HF_HOME, $KUBETUNE_CACHE) once, under a lock that pods sharing the cache "
                       "volume take in turn.")
    p.add_argument("config", help="FineTuneJob or ChatEndpoint YAML/JSON (manifest, or a FineTuneJob's bare spec), "
                   "or a predefined config name")
    p.add_argument("--into", default=None, metavar="DIR", help="ChatEndpoint: where the local layout is written "
                   "(DIR/model, DIR/adapters/NAME, DIR/endpoint.yaml)")
    p.set_defaults(func=run)


def sources(spec: Any) -> list[tuple[str, str]]:
    """Every URI training reads, with the hub repository type it is fetched as."""
    vision = spec.model.vision
    models = [spec.model.uri] + ([vision.encoder, vision.projector] if vision else [])
    data = [spec.dataset.uri, spec.dataset.image_folder] + [c.uri for c in spec.dataset.concat]
    return [(u, "model") for u in models if u] + [(u, "dataset") for u in data if u]


def endpoint_sources(spec: Any) -> list[tuple[str, str]]:
    return [(spec.model.uri, "model")] + [(a.uri, "model") for a in spec.adapters]


def run(args: argparse.Namespace) -> int:
    from kubetune.api.chat import ChatEndpoint

    obj = load_config(args.config, kind=None)
    if isinstance(obj, ChatEndpoint):
        return _endpoint(obj, args.into)
    if args.into:
        raise UserError(f"--into lays out a ChatEndpoint's models; {args.config} is a {obj.kind}")
    return _job(obj)


def _job(job: Any) -> int:
    from kubetune.storage import cache_root, fetch
    from kubetune.train.report import StatusReporter

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


def _endpoint(endpoint: Any, into: str | None) -> int:
    from kubetune.storage import cache_root, fetch, local_path

    if not into:
        raise UserError("a ChatEndpoint is fetched --into DIR (where its server reads the model and adapters)")
    for adapter in endpoint.spec.adapters:
        if not adapter.uri:  # the operator resolves every reference before it mounts the spec
            raise UserError(f"adapters[{adapter.name}].fineTuneJobRef: set its uri (the job's exported adapter)")
    uris = endpoint_sources(endpoint.spec)
    root = Path(os.environ.get("KUBETUNE_CACHE_VOLUME") or cache_root())
    start = time.monotonic()
    fetch.fetch(uris, root, lambda size: None)
    out = Path(into)
    local = {"model": local_path(endpoint.spec.model.uri)}
    local |= {f"adapters/{a.name}": local_path(str(a.uri)) for a in endpoint.spec.adapters}
    for name, path in local.items():
        _link(out / name, path)
    _write_local(endpoint, out)
    print(f"kubetune: {', '.join(u for u, _ in uris)} ready under {out} ({time.monotonic() - start:.0f} s)",
          flush=True)
    return 0


def _link(link: Path, target: Path) -> None:
    """`link` → `target`, replaced atomically (a restarted init container finds the last run's links)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    fresh = link.with_name(f".{link.name}.new")
    fresh.unlink(missing_ok=True)
    fresh.symlink_to(target.resolve(), target_is_directory=True)
    fresh.replace(link)


def _write_local(endpoint: Any, out: Path) -> None:
    import yaml

    doc = endpoint.to_dict()
    doc["spec"]["model"]["uri"] = str(out / "model")
    for adapter in doc["spec"].get("adapters", []):
        adapter["uri"] = str(out / "adapters" / adapter["name"])
    (out / "endpoint.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
