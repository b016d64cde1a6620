"""Serving metrics under vLLM's names with `kubetune:` where vLLM has `vllm:` (`kubetune:time_to_first_token_seconds`
beside `vllm:time_to_first_token_seconds`), labelled `model_name`: one dashboard query covers both engines, and no
bare name (`num_requests_running`, `http_requests_total`) collides with another exporter in a shared Prometheus.
Intervals use `time.monotonic()` from arrival, as vLLM's design notes ask."""

from __future__ import annotations

import time
from typing import Any

_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
            80.0)
PREFIX = "kubetune:"
_TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


class ServingMetrics:
    """Engine observer: fed by the engine thread, read by /metrics."""

    def __init__(self, model_name: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        label = ["model_name"]

        def hist(name: str, doc: str, buckets: tuple) -> Any:
            return Histogram(PREFIX + name, doc, label, buckets=buckets, registry=self.registry).labels(model_name)

        self.ttft = hist("time_to_first_token_seconds", "Time from arrival to the first generated token.", _LATENCY)
        self.itl = hist("inter_token_latency_seconds", "Time between consecutive generated tokens.", _LATENCY)
        self.e2e = hist("e2e_request_latency_seconds", "Time from arrival to the last token.", _LATENCY)
        self.queue = hist("request_queue_time_seconds", "Time a request waited before joining the batch.", _LATENCY)
        self.prompt_hist = hist("request_prompt_tokens", "Prompt length of finished requests.", _TOKENS)
        self.gen_hist = hist("request_generation_tokens", "Generated tokens of finished requests.", _TOKENS)
        self.running = Gauge(PREFIX + "num_requests_running", "Requests in the running batch.", label,
                             registry=self.registry).labels(model_name)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Requests waiting to join the batch.", label,
                             registry=self.registry).labels(model_name)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prefilled prompt tokens.", label,
                                     registry=self.registry).labels(model_name)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Generated tokens.", label,
                                         registry=self.registry).labels(model_name)
        self.success = Counter(PREFIX + "request_success", "Finished requests by reason.", label + ["finished_reason"],
                               registry=self.registry)
        self.http = Counter(PREFIX + "http_requests", "HTTP requests by route and status.", ["handler", "status"],
                            registry=self.registry)
        self.model_name = model_name
        for reason in ("stop", "length", "abort"):  # present from the start, so rate() works on the first request
            self.success.labels(model_name, reason)

    # --- engine observer ----------------------------------------------------------------------------------------
    def queued(self, r: Any) -> None:
        self.waiting.inc()

    def scheduled(self, r: Any) -> None:
        self.waiting.dec()
        self.running.inc()
        self.queue.observe(time.monotonic() - r.arrival)
        self.prompt_tokens.inc(len(r.prompt))

    def token(self, r: Any, now: float) -> None:
        if r.last_token_at is None:
            self.ttft.observe(now - r.arrival)
        else:
            self.itl.observe(now - r.last_token_at)

    def finished(self, r: Any, reason: str) -> None:
        if r.scheduled_at is None:  # aborted while waiting
            self.waiting.dec()
        else:
            self.running.dec()
        self.generation_tokens.inc(len(r.generated))
        self.e2e.observe(time.monotonic() - r.arrival)
        self.prompt_hist.observe(len(r.prompt))
        self.gen_hist.observe(len(r.generated))
        self.success.labels(self.model_name, reason if reason in ("stop", "length") else "abort").inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
