"""What Prometheus would scrape: the chart's training PodMonitor (selector and relabelings, as the Prometheus
operator turns them into a scrape config) applied to the pods a 2-node FineTuneJob really gets from the test control
plane's Job controller. Only rank 0 serves metrics, so only rank 0 may be a target."""

from __future__ import annotations

import re
import subprocess

import yaml

from .controlplane.cluster import BIN, ROOT as REPO
from .test_operator import NS, _create, _wait_phase, operator  # noqa: F401 (the operator fixture)


def _meta(pod: dict) -> dict[str, str]:
    """The pod's labels and annotations as Prometheus' Kubernetes discovery names them."""
    clean = lambda name: re.sub(r"[^a-zA-Z0-9_]", "_", name)  # noqa: E731
    meta = pod["metadata"]
    return ({f"__meta_kubernetes_pod_label_{clean(k)}": v for k, v in meta.get("labels", {}).items()}
            | {f"__meta_kubernetes_pod_annotation_{clean(k)}": v for k, v in meta.get("annotations", {}).items()})


def _targets(monitor: dict, pods: list[dict]) -> list[str]:
    """Pods the monitor selects and its `keep`/`drop` relabelings let through (regexes anchored, values joined by
    `;`, as Prometheus does)."""
    wanted = monitor["spec"]["selector"]["matchLabels"]
    kept = []
    for pod in pods:
        if any(pod["metadata"].get("labels", {}).get(k) != v for k, v in wanted.items()):
            continue
        meta = _meta(pod)
        keep = True
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for rule in endpoint.get("relabelings", []):
                value = ";".join(meta.get(label, "") for label in rule.get("sourceLabels", []))
                matched = re.fullmatch(rule.get("regex", "(.*)"), value) is not None
                if rule.get("action") == "keep" and not matched or rule.get("action") == "drop" and matched:
                    keep = False
        if keep:
            kept.append(pod["metadata"]["name"])
    return kept


def test_only_rank_0_of_a_gang_is_a_scrape_target(cluster, operator):  # noqa: F811 (the fixture imported above)
    rendered = subprocess.run(
        [str(BIN / "helm"), "template", "kt", str(REPO / "charts" / "kubetune"), "--set",
         "monitoring.podMonitor.enabled=true", "--set", "monitoring.force=true", "--show-only",
         "templates/podmonitor.yaml"], capture_output=True, text=True, check=True).stdout
    monitor = next(d for d in yaml.safe_load_all(rendered) if d and d["metadata"]["name"].endswith("-training"))
    _create(cluster, "scrape")  # 2 nodes, kept running by the test stages
    _wait_phase(cluster, "ftj", "scrape", ("Running", "Initializing"))
    pods = cluster.get_json("-n", NS, "pods", "-l", "kubetune.io/finetunejob=scrape")["items"]
    assert len(pods) == 2
    rank0 = next(p["metadata"]["name"] for p in pods
                 if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0")
    assert _targets(monitor, pods) == [rank0]
