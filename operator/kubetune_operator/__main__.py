"""`python -m kubetune_operator` / `kubetune-operator`: run the handlers in all namespaces (or KUBETUNE_NAMESPACE),
with a liveness endpoint for the Deployment's probe."""

from __future__ import annotations

import os
import sys


def main() -> int:
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
