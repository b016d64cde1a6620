"""Third-party clients as the judges of `kubetune serve`, through its API keys: EleutherAI's lm-eval (its
`local-chat-completions` model on a small generate task over local data, tests/data/lm_eval) runs to completion with
a score, and GuideLLM, a real load generator, completes its concurrent profile with no failed request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .chatkit import Server, http

KEY = "sk-judge-0123456789"
TASKS = Path(__file__).parent / "data" / "lm_eval"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("judge-keys") / "api-keys"
    keys.write_text(KEY + "\n")
    s = Server(tiny_dir, tmp_path_factory.mktemp("judge") / "serve.log", "--served-model-name", "tiny",
               "--prompt-template", "internlm2_chat", "--api-key-file", str(keys), "--max-batch", "4")
    yield s
    assert s.stop() == 0


def _served(server, route: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = http("GET", f"{server.url}/metrics")[2]
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "kubetune:http_requests_total" and s.labels == {"handler": route, "status": "200"})


def test_lm_eval_runs_a_generate_task_to_a_score(server, tmp_path):
    before = _served(server, "/v1/chat/completions")
    args = ["run", "--model", "local-chat-completions", "--model_args",
            f"model=tiny,base_url={server.url}/v1/chat/completions,num_concurrent=4,max_retries=1,"
            "tokenized_requests=False", "--tasks", "kubetune_capitals", "--include_path", str(TASKS),
            "--apply_chat_template", "--output_path", str(tmp_path / "out")]
    run = subprocess.run([str(BIN / "lm-eval"), *args], cwd=TASKS, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OPENAI_API_KEY": KEY})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    score = results["kubetune_capitals"]["exact_match,none"]
    assert 0 <= score <= 1
    assert _served(server, "/v1/chat/completions") - before == 8  # every document answered by the server
    print(f"lm-eval kubetune_capitals exact_match {score} (tiny random model)")
    refused = subprocess.run([str(BIN / "lm-eval"), *args], cwd=TASKS, capture_output=True, text=True,
                             timeout=600, env={**os.environ, "OPENAI_API_KEY": "sk-wrong"})
    assert refused.returncode != 0  # the harness cannot score without a key


def test_guidellm_completes_its_concurrent_profile(server, tiny_dir, tmp_path):
    out = tmp_path / "guidellm.json"
    run = subprocess.run([str(BIN / "guidellm"), "run", "--backend",
                          f"kind=openai_http,target={server.url},model=tiny,api_key={KEY}",
                          "--profile", "kind=concurrent,streams=4", "--constraint", "kind=max_requests,count=12",
                          "--tokenizer", f"kind=huggingface_auto,model={tiny_dir}",
                          "--data", "kind=synthetic_text,prompt_tokens=48,output_tokens=16",
                          "--output", f"kind=json,path={out}", "--disable-console"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    metrics = json.loads(out.read_text())["benchmarks"][0]["metrics"]
    assert metrics["request_totals"]["successful"] == 12 and metrics["request_totals"]["errored"] == 0
    ttft = metrics["time_to_first_token_ms"]["successful"]
    assert ttft["count"] == 12 and ttft["median"] > 0
    print(f"guidellm: TTFT p50 {ttft['median']:.1f} ms, ITL p50 "
          f"{metrics['inter_token_latency_ms']['successful']['median']:.1f} ms")
