"""`kubetune-operator [run]`: run the handlers in all namespaces (or KUBETUNE_NAMESPACE), with a liveness endpoint
for the Deployment's probe; `render FILE...` prints the children a manifest would get; `version`."""

from __future__ import annotations

import argparse
import os
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubetune-operator", description="kubetune's Kubernetes operator")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="watch FineTuneJobs, ConvertJobs and ChatEndpoints and reconcile them (the default; "
                   "settings from KUBETUNE_* environment variables, as the Helm chart sets them)")
    render = sub.add_parser("render", help="print the Jobs, Deployments, Services... the operator would create for "
                            "manifests, as YAML, without a cluster")
    render.add_argument("files", nargs="+", metavar="FILE", help="FineTuneJob, ConvertJob or ChatEndpoint manifests")
    sub.add_parser("version", help="print the version")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)  # unknown arguments: usage and exit 2
    if args.command == "version":
        from importlib.metadata import version

        print(f"kubetune-operator {version('kubetune')}")
        return 0
    if args.command == "render":
        return render(args.files)
    return run()


def render(files: list[str]) -> int:
    import yaml

    from kubetune.api import ManifestError
    from kubetune.api.loader import read_document

    from .render import render as render_manifest
    from .settings import Settings

    settings = Settings.from_env()
    out = []
    for path in files:
        try:
            out += render_manifest(read_document(path), path, settings)
        except ManifestError as exc:
            print(f"kubetune-operator: error: {exc}", file=sys.stderr)
            return 1
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False))
    return 0


def run() -> int:
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    # `kopf run` configures logging itself; kopf.run() does not, and an operator without logs cannot be debugged.
    kopf.configure(verbose=os.environ.get("KUBETUNE_OPERATOR_VERBOSE") == "1")
    namespace = os.environ.get("KUBETUNE_NAMESPACE")
    liveness = os.environ.get("KUBETUNE_OPERATOR_HEALTH", "http://0.0.0.0:8081/healthz")
    kopf.run(clusterwide=namespace is None, namespaces=[namespace] if namespace else [], standalone=True,
             liveness_endpoint=liveness or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
