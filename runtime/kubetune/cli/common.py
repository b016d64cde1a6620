"""Helpers shared by the modes: resolving a CONFIG argument, common flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import UserError
from .paths import resolve_relative_paths


def load_config(config: str, overrides: list[str] | None = None, kind: str | None = "FineTuneJob") -> Any:
    """CONFIG is a manifest/spec file or a predefined config name; returns the validated object (`kind` None: the
    manifest's own kind, a bare spec a FineTuneJob)."""
    from kubetune.api import ManifestError, catalog, load_manifest, parse_manifest

    if config.endswith(".py"):  # an XTuner config: imported from its syntax tree, never run
        return _xtuner(config, overrides, kind)
    try:
        if Path(config).exists() or not _looks_like_name(config):
            return with_storage(resolve_relative_paths(load_manifest(config, kind=kind, overrides=overrides or ()),
                                                       Path(config).resolve().parent))
        if config in catalog.catalog():
            return with_storage(parse_manifest(catalog.get(config), source=config, kind=kind,
                                               overrides=overrides or ()))
        catalog.get(config)  # raises with close matches
    except ManifestError as exc:
        if exc.errors == [("", "no such file")]:
            raise UserError(f"{config}: no such file, and no predefined config has that name "
                            "(see `kubetune list-cfg`)") from None
        raise UserError(str(exc)) from None
    except KeyError as exc:
        raise UserError(f"{config}: no such file, and {exc.args[0]}") from None
    raise AssertionError("unreachable")


def _xtuner(config: str, overrides: list[str] | None, kind: str | None) -> Any:
    from kubetune.api import ManifestError, parse_manifest

    from .xtuner import imported

    if kind not in (None, "FineTuneJob"):
        raise UserError(f"{config}: an XTuner config describes a FineTuneJob, not a {kind}")
    try:
        job = parse_manifest(imported(config), source=config, overrides=overrides or ())
    except ManifestError as exc:
        raise UserError(str(exc)) from None
    # XTuner resolves a config's relative paths from the working directory, not from the config's folder.
    return with_storage(resolve_relative_paths(job, Path.cwd()))


def with_storage(obj: Any) -> Any:
    """Honour the spec's `storage` endpoint, region and path style here as the operator does in a cluster. Its
    `secretRef` names a cluster Secret that a laptop cannot read: said once, never silently dropped."""
    import os
    import sys

    from kubetune.storage import s3

    storage = getattr(obj.spec, "storage", None)
    if storage is None:
        return obj
    s3.configure(storage.endpoint, storage.region, storage.path_style)
    if storage.secret_ref and "KUBERNETES_SERVICE_HOST" not in os.environ:  # in a pod the operator mounts it
        print(f"note: storage.secretRef {storage.secret_ref} is a cluster Secret and is not read here; S3 credentials "
              "come from the environment, ~/.aws or KUBETUNE_S3_SECRET_DIR", file=sys.stderr)
    return obj


def announce_local_differences(obj: Any) -> None:
    """Fields set for a cluster that a run here does not use, said once (docs/local-vs-cluster.md)."""
    import os
    import sys

    if "KUBERNETES_SERVICE_HOST" in os.environ or os.environ.get("RANK", "0") != "0":
        return  # in the operator's pods these fields were applied when the pods were built
    from kubetune.api.parity import cluster_only_settings

    ignored = cluster_only_settings(obj)
    if ignored:
        print("ignored here: " + ", ".join(f"{path.removeprefix('spec.')}={_short(value)} (cluster only)"
                                           for path, value in ignored), file=sys.stderr)


def _short(value: Any) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def _looks_like_name(config: str) -> bool:
    return "/" not in config and not config.endswith((".yaml", ".yml", ".json"))


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg-options", nargs="+", metavar="KEY=VALUE", default=[],
        help="override fields of the config, e.g. training.optimizer.lr=1e-4 dataset.maxLength=4096 "
             "'method.lora.targetModules=[q_proj,v_proj]'; values are YAML and are validated like the CRD "
             "(`kubetune explain finetunejob.spec` lists the fields)")
