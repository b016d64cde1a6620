"""Dashboards and alerts only query metrics the code really exports: every PromQL expression in
charts/kubetune/dashboards/*.json and in the rendered PrometheusRule is parsed, and each metric name it selects must
appear in a real /metrics exposition of the operator, a training rank 0 or the chat server, or among the metrics vLLM
0.34.0 (the default `engine: vllm` image) defines in its own source."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import promql_parser as promql
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .controlplane.cluster import BIN

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "charts" / "kubetune" / "dashboards").glob("*.json"))
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("", "_sum", "_count"), "info": ("_info",), "unknown": ("",)}
# Grafana expands these before Prometheus sees the query.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def _series_names(exposition: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + s for s in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    from kubetune.chat.metrics import ServingMetrics
    from kubetune_operator import metrics as operator_metrics

    names = _series_names(generate_latest(operator_metrics.REGISTRY).decode())
    names |= _series_names(generate_latest(ServingMetrics("tiny").registry).decode())
    # Training rank 0: the hook's own port serves the process's default registry (with the upload-failure counter).
    code = ("from kubetune.train.hooks import Metrics; from kubetune.storage.sync import _failure_counter; "
            "from prometheus_client import REGISTRY, generate_latest; Metrics(0); _failure_counter(); "
            "print(generate_latest(REGISTRY).decode())")
    names |= _series_names(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          check=True, timeout=120).stdout)
    return names | vllm_names()


def vllm_names() -> set[str]:
    """The series vLLM 0.34.0 exposes: its metric families as its stat loggers create them (read from its source, as
    .ci/vllm-parser installs it), and prometheus-fastapi-instrumentator's http_requests_total, which its server adds."""
    site = Path(subprocess.run([str(ROOT / ".ci" / "vllm-parser")], check=True, capture_output=True,
                               text=True).stdout.strip())
    text = "\n".join(p.read_text() for p in (site / "vllm" / "v1" / "metrics").glob("*.py"))
    kinds = {"_counter_cls": "counter", "_gauge_cls": "gauge", "_histogram_cls": "histogram"}
    found = re.findall(r'(_counter_cls|_gauge_cls|_histogram_cls)\(\s*name="(vllm:[a-z0-9_]+)"', text)
    assert len(found) > 30, "vLLM's metric definitions moved: read them where they are now"
    names = {"http_requests_total"}
    for kind, name in found:
        names |= {name + s for s in SUFFIXES[kinds[kind]]}
    return names


def _metric_names(node) -> set[str]:
    if isinstance(node, promql.VectorSelector):
        if node.name:
            return {node.name}
        # {__name__=~"kubetune:x|vllm:x"}: one query for both engines' names.
        return {name for m in node.matchers.matchers if m.name == "__name__" for name in m.value.split("|")}
    if isinstance(node, promql.MatrixSelector):
        return _metric_names(node.vector_selector)
    if isinstance(node, promql.BinaryExpr):
        return _metric_names(node.lhs) | _metric_names(node.rhs)
    if isinstance(node, promql.Call):
        return set().union(*(_metric_names(a) for a in node.args)) if node.args else set()
    if isinstance(node, promql.AggregateExpr):
        return _metric_names(node.expr) | (_metric_names(node.param) if node.param is not None else set())
    if isinstance(node, (promql.ParenExpr, promql.UnaryExpr, promql.SubqueryExpr)):
        return _metric_names(node.expr)
    return set()


def parse(expr: str) -> set[str]:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr.strip())
    if label_values:
        return _metric_names(promql.parse(label_values.group(1)))
    return _metric_names(promql.parse(expr))


def dashboard_queries(path: Path) -> list[str]:
    board = json.loads(path.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            queries.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return queries


def alert_queries() -> list[str]:
    out = subprocess.run([str(BIN / "helm"), "template", "kt", str(ROOT / "charts" / "kubetune"), "--set",
                          "monitoring.force=true", "--set", "monitoring.prometheusRule.enabled=true", "--show-only",
                          "templates/prometheusrule.yaml"], capture_output=True, text=True, check=True).stdout
    rule = yaml.safe_load(out)
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def test_the_three_dashboards_exist_and_are_grafana_json():
    assert [p.stem for p in DASHBOARDS] == ["operator", "serving", "training"]
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"].startswith("kubetune") and board["panels"]
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_promql_uses_only_exported_metrics(path, exported):
    used = set()
    for query in dashboard_queries(path):
        used |= parse(query)
    assert used, path
    assert used <= exported, f"{path.name} queries metrics nothing exports: {sorted(used - exported)}"


def test_alert_promql_uses_only_exported_metrics(exported):
    queries = alert_queries()
    assert len(queries) == 5
    used = set().union(*(parse(q) for q in queries))
    assert used <= exported, f"alerts query metrics nothing exports: {sorted(used - exported)}"


def test_the_checker_catches_an_unknown_metric(exported):
    assert parse('histogram_quantile(0.9, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[5m])))') \
        == {"vllm:time_to_first_token_seconds_bucket"}
    assert not parse("rate(kubetune_train_stepz[5m])") <= exported


def test_every_serving_query_covers_both_engines(exported):
    """Each serving panel and the TTFT alert select the builtin server's name and vLLM's for the same thing."""
    queries = dashboard_queries(ROOT / "charts" / "kubetune" / "dashboards" / "serving.json")
    queries += [q for q in alert_queries() if "time_to_first_token" in q]
    for query in queries:
        used = parse(query)
        ours = {n for n in used if n.startswith("kubetune:")}
        assert ours, query
        for name in ours:
            twin = "http_requests_total" if name == "kubetune:http_requests_total" else "vllm:" + name[len("kubetune:"):]
            assert twin in used and twin in exported, (query, twin)
