"""Modes over the API and the catalogue: list-cfg, copy-cfg, validate, explain, crds, version."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import load_config
from .errors import KubetuneError, UserError


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description=summary)
    if mode == "list-cfg":
        p.add_argument("-p", "--pattern", default=None, help="Pattern for fuzzy matching")
        p.set_defaults(func=list_cfg)
    elif mode == "copy-cfg":
        p.add_argument("config_name", help="config name")
        p.add_argument("save_dir", help="save directory for copied config")
        p.set_defaults(func=copy_cfg)
    elif mode == "validate":
        p.add_argument("files", nargs="+", metavar="FILE", help="manifests or bare specs (YAML or JSON)")
        p.add_argument("--kind", choices=["FineTuneJob", "ConvertJob", "ChatEndpoint"], default=None,
                       help="kind of bare specs (default FineTuneJob); manifests carry their own")
        p.add_argument("--show", action="store_true", help="print the resolved spec (baseConfig merged, defaults)")
        p.set_defaults(func=validate)
    elif mode == "explain":
        p.add_argument("path", nargs="?", default="finetunejob",
                       help="KIND[.FIELD...], e.g. finetunejob.spec.training.optimizer or ftj.spec.dataset")
        p.add_argument("--recursive", action="store_true", help="print every field below PATH")
        p.set_defaults(func=explain)
    elif mode == "crds":
        p.add_argument("-o", "--output-dir", default="crds", help="directory to write to (default: crds)")
        p.add_argument("--docs", default=None, metavar="FILE",
                       help="also write the Markdown API reference to FILE (docs/api-reference.md)")
        p.add_argument("--parity", default=None, metavar="FILE",
                       help="also write the local-vs-cluster table to FILE (docs/local-vs-cluster.md)")
        p.add_argument("--chart", default=None, metavar="DIR",
                       help="also write the Helm chart's copies into DIR/templates/crds (charts/kubetune)")
        p.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 when the files differ from what the models generate")
        p.set_defaults(func=crds)
    elif mode == "version":
        p.set_defaults(func=version)


def list_cfg(args: argparse.Namespace) -> int:
    from kubetune.api import catalog

    print("==========================CONFIGS===========================")
    if args.pattern is not None:
        print(f"PATTERN: {args.pattern}")
        print("-------------------------------")
    for name in catalog.names(args.pattern):
        print(name)
    print("=============================================================")
    return 0


def _copy_deepspeed(name: str, save_dir: Path) -> int:
    """XTuner's DeepSpeed files: the preset's JSON as `<name>_copy.json`, for `--deepspeed FILE`."""
    import json

    from kubetune.configs import deepspeed_preset

    if save_dir.exists() and not save_dir.is_dir():
        raise UserError(f"{save_dir}: exists and is not a directory")
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / f"{name}_copy.json"
    path.write_text(json.dumps(deepspeed_preset(name), indent=2) + "\n")
    print(f"Copy to {path}")
    return 0


def copy_cfg(args: argparse.Namespace) -> int:
    from kubetune.api import catalog
    from kubetune.api.yamlgen import commented_manifest

    if args.config_name in catalog.DEEPSPEED_NAMES:
        return _copy_deepspeed(args.config_name, Path(args.save_dir))
    try:
        manifest = catalog.get(args.config_name)
    except KeyError as exc:
        raise UserError(exc.args[0]) from None
    save_dir = Path(args.save_dir)
    if save_dir.exists() and not save_dir.is_dir():
        raise UserError(f"{args.save_dir}: exists and is not a directory")
    save_dir.mkdir(parents=True, exist_ok=True)
    save_path = os.path.join(args.save_dir, f"{args.config_name}_copy.yaml")
    header = (f"Predefined config {args.config_name}, copied by `kubetune copy-cfg`.\nRun it here with `kubetune "
              f"train {Path(save_path).name}` or in a cluster with `kubectl apply -f`.")
    differences = catalog.notes(args.config_name)
    if differences:
        header += "\nImported from XTuner's file; where it differs on purpose:\n" + "\n".join(
            f"  {n}" for n in differences)
    text = commented_manifest(manifest, header=header)
    Path(save_path).write_text(text, encoding="utf-8")
    print(f"Copy to {save_path}")
    if manifest.get("spec", {}).get("model", {}).get("trustRemoteCode"):
        print(TRUSTS_REMOTE_CODE, file=sys.stderr)  # stdout stays XTuner's one line
    return 0


TRUSTS_REMOTE_CODE = ("note: model.trustRemoteCode is true in this config: the model repository's own Python code "
                      "runs when the model loads, if the repository ships any (XTuner's configs turn it on for every "
                      "model); set it to false to refuse")


def validate(args: argparse.Namespace) -> int:
    import yaml

    from kubetune.api import ManifestError, load_manifest
    from kubetune.api.pods import pod_warnings

    failed = 0
    for file in args.files:
        try:
            # An XTuner .py config validates as what `train` would run: its import (refused settings by line).
            obj = load_config(file, kind=args.kind) if file.endswith(".py") else load_manifest(file, kind=args.kind)
        except (ManifestError, UserError) as exc:
            print(str(exc), file=sys.stderr)
            failed += 1
            continue
        name = obj.metadata.name or "(unnamed)"
        print(f"{file}: valid {obj.kind} {name}")
        if getattr(getattr(getattr(obj, "spec", None), "model", None), "trust_remote_code", False):
            print(TRUSTS_REMOTE_CODE, file=sys.stderr)
        for warning in pod_warnings(obj.spec):
            print(f"{file}: warning: {warning}", file=sys.stderr)
        if args.show:
            print(yaml.safe_dump(obj.to_dict(), sort_keys=False, allow_unicode=True), end="")
    if failed:
        raise UserError(f"{failed} of {len(args.files)} file(s) invalid")
    return 0


def explain(args: argparse.Namespace) -> int:
    from kubetune.api.explain import explain as render

    try:
        print(render(args.path, recursive=args.recursive))
    except KeyError as exc:
        raise UserError(exc.args[0]) from None
    return 0


def crds(args: argparse.Namespace) -> int:
    from kubetune.api import crds as gen
    from kubetune.api import docs

    out = Path(args.output_dir)
    wanted = {out / gen.filename(k): gen.render(k) for k in gen.KINDS}
    if args.docs:
        wanted[Path(args.docs)] = docs.render()
    if args.parity:
        from kubetune.api import parity

        wanted[Path(args.parity)] = parity.render()
    if args.chart:
        wanted.update(gen.chart_files(args.chart))
    if args.check:
        stale = [str(p) for p, text in wanted.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        if stale:
            flags = "".join(f" --{flag} {value}" for flag, value in
                            (("docs", args.docs), ("parity", args.parity), ("chart", args.chart)) if value)
            # A check that finds differences exits 1, as diff and linters do; a wrong argument would be 2.
            raise KubetuneError(f"out of date: {', '.join(stale)} (regenerate with `kubetune crds{flags}`)")
        print(f"up to date: {', '.join(str(p) for p in wanted)}")
        return 0
    for path, text in wanted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path)
    return 0


def version(args: argparse.Namespace) -> int:
    from kubetune import __version__

    print(__version__)
    return 0
