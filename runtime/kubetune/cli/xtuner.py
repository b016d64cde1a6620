"""`kubetune import-xtuner CONFIG.py`: an XTuner config as a FineTuneJob (read as a syntax tree, never run); and the
same importer behind every command that takes a CONFIG (`train`, `check-custom-dataset`, `log-dataset`...)."""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from .errors import UserError


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description="Turn an XTuner config (.py) into a FineTuneJob manifest. The "
                       "file is read as a syntax tree and never executed. What cannot be mapped is listed by line "
                       "and refused unless --allow-partial.")
    p.add_argument("config", help="an XTuner config file (.py)")
    p.add_argument("-o", "--output", default=None, help="write the manifest here (default: standard output)")
    p.add_argument("--allow-partial", action="store_true",
                   help="write the manifest even when some settings could not be mapped (they are listed)")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override FineTuneJob spec fields, e.g. training.optimizer.lr=1e-4")
    p.set_defaults(func=run)


def imported(path: str, allow_partial: bool = False) -> dict[str, Any]:
    """The manifest of an XTuner config; its notes said on stderr; its problems refused (named by line)."""
    from kubetune.api.xtuner import import_config

    try:
        result = import_config(path)
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    except SyntaxError as exc:
        raise UserError(f"{path}:{exc.lineno}: not Python: {exc.msg}") from None
    for line, note in result.notes:
        print(f"{path}:{line}: note: {note}", file=sys.stderr)
    if result.problems:
        listed = "\n".join(f"  {path}:{line}: {message}" for line, message in sorted(result.problems))
        if not allow_partial or not result.manifest:
            raise UserError(f"{path}: {len(result.problems)} setting(s) cannot be mapped to a FineTuneJob:\n{listed}")
        print(f"{path}: not mapped (--allow-partial):\n{listed}", file=sys.stderr)
    return result.manifest


def _rebase_paths(spec: dict[str, Any], folder: Path) -> None:
    from .paths import rebase

    cwd = Path.cwd()
    for section, key in (("model", "uri"), ("dataset", "uri"), ("checkpoints", "uri"), ("dataset", "imageFolder")):
        part = spec.get(section) or {}
        if isinstance(part.get(key), str):
            part[key] = rebase(part[key], cwd, folder)
    for source in (spec.get("dataset") or {}).get("concat") or []:
        if isinstance(source.get("uri"), str):
            source["uri"] = rebase(source["uri"], cwd, folder)
    vision = (spec.get("model") or {}).get("vision") or {}
    for key in ("encoder", "projector"):
        if isinstance(vision.get(key), str):
            vision[key] = rebase(vision[key], cwd, folder)


def run(args: argparse.Namespace) -> int:
    import yaml

    from kubetune.api import ManifestError, parse_manifest

    from kubetune.api.loader import apply_overrides

    manifest = imported(args.config, args.allow_partial)
    try:  # validated as a run would see it, overrides included
        parse_manifest(copy.deepcopy(manifest), source=args.config, overrides=args.cfg_options)
    except ManifestError as exc:
        raise UserError(str(exc)) from None
    apply_overrides(manifest["spec"], args.cfg_options)
    if args.output:  # XTuner's paths are the working directory's; a manifest's are its own folder's
        _rebase_paths(manifest["spec"], Path(args.output).resolve().parent)
    text = yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
