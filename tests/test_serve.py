"""`kubetune serve` driven by the real `openai` client: answers equal `generate`, SSE streaming, 16 concurrent
requests, OpenAI-style 4xx errors that leave the server healthy, a bounded queue (429 + Retry-After), Prometheus
metrics under vLLM's names, and a SIGTERM that lets in-flight answers finish."""

from __future__ import annotations

import concurrent.futures as cf
import signal

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.chat.prompt import Prompter

from .chatkit import Server, http, reference_answer

KEY = "sk-test-0123456789"
QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text("# accepted keys\n" + KEY + "\nsk-other\n")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    s = Server(tiny_dir, log, "--prompt-template", "internlm2_chat", "--served-model-name", "tiny",
               "--api-key-file", str(keys), "--max-batch", "4", "--max-waiting", "16", "--max-prompt-tokens", "256",
               "--max-tokens-limit", "512", "--temperature", "0")
    yield s
    assert s.stop() == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def want(tiny_dir, tokenizer):
    prompter = Prompter(tokenizer, "internlm2_chat")
    return reference_answer(tiny_dir, prompter.render(QUESTION), 24, prompter.eos_ids())[0]


def test_chat_completion_equals_generate(client, want):
    r = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=24)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 24 and r.usage.prompt_tokens > 0
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_streaming_chat_and_completions(client, want):
    chunks = list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == want and len(texts) > 1, "streamed in several chunks"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].usage.completion_tokens <= 24 and not chunks[-1].choices
    plain = client.completions.create(model="tiny", prompt="The sea is", max_tokens=12)
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="tiny", prompt="The sea is",
                                                                            max_tokens=12, stream=True))
    assert plain.choices[0].text == streamed and plain.usage.completion_tokens <= 12


def test_sixteen_concurrent_requests(client, want):
    def ask(i: int) -> tuple[str, int]:
        if i % 2:
            r = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=24)
        else:  # different lengths and sampled answers share the batch
            r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"#{i} " * i}],
                                               max_tokens=8 + i, temperature=0.9, top_p=0.9, seed=i)
        return r.choices[0].message.content, r.usage.completion_tokens

    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert len(answers) == 16
    assert all(text == want for i, (text, _) in enumerate(answers) if i % 2)  # batching never changes greedy output
    assert all(0 < n <= 8 + i for i, (_, n) in enumerate(answers) if not i % 2)


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "tiny"}, 400, "messages"),
    ({"model": "tiny", "messages": QUESTION, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "messages": QUESTION, "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": "tiny", "messages": QUESTION, "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": "tiny", "messages": QUESTION, "temperature": 7}, 400, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ({"model": "gpt-9", "messages": QUESTION}, 404, "model"),
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    code, headers, reply = http("POST", f"{server.url}/v1/chat/completions", body,
                                {"Authorization": f"Bearer {KEY}"})
    assert code == status, reply
    assert set(reply["error"]) >= {"message", "type", "param", "code"} and reply["error"]["message"]
    assert reply["error"]["param"] == param
    assert http("GET", f"{server.url}/health")[0] == 200


def test_api_key(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        code, _, reply = http("POST", f"{server.url}/v1/chat/completions",
                              {"model": "tiny", "messages": QUESTION}, headers)
        assert code == 401 and reply["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert http("GET", f"{server.url}/health")[0] == 200  # probes need no key
    assert http("GET", f"{server.url}/metrics")[0] == 200


def test_full_queue_answers_429_with_retry_after(server):
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 400, "temperature": 0.7, "seed": 1}
    with cf.ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda _: http("POST", f"{server.url}/v1/chat/completions", body,
                                               {"Authorization": f"Bearer {KEY}"}, timeout=300), range(32)))
    codes = [code for code, _, _ in replies]
    assert set(codes) == {200, 429} and codes.count(200) >= 16, codes  # 4 running + 16 waiting fit
    rejected = next((h, r) for c, h, r in replies if c == 429)
    assert rejected[0]["retry-after"] == "1" and rejected[1]["error"]["type"] == "rate_limit_error"
    assert http("GET", f"{server.url}/health")[0] == 200


def test_metrics_use_vllm_names_under_kubetunes_prefix(server, client):
    client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=5)
    _, _, text = http("GET", f"{server.url}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert all(name.startswith("kubetune:") for name in families if not name.startswith(("python_", "process_")))
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds"):
        family = families["kubetune:" + name]
        assert family.type == "histogram"
        count = next(s.value for s in family.samples if s.name == f"kubetune:{name}_count")
        assert count > 0 and next(s for s in family.samples).labels["model_name"] == "tiny"
    for name in ("num_requests_running", "num_requests_waiting"):
        family = families["kubetune:" + name]
        assert family.type == "gauge" and family.samples[0].value == 0
    # prometheus-client names counter families without their _total suffix; the exposed series carry it.
    assert families["kubetune:prompt_tokens"].samples[0].name == "kubetune:prompt_tokens_total"
    assert families["kubetune:generation_tokens"].samples[0].value > 0
    reasons = {s.labels["finished_reason"]: s.value for s in families["kubetune:request_success"].samples
               if s.name == "kubetune:request_success_total"}
    assert set(reasons) == {"stop", "length", "abort"} and reasons["length"] + reasons["stop"] >= 20


def test_sigterm_drains_in_flight_requests(tiny_dir, tmp_path):
    s = Server(tiny_dir, tmp_path / "serve.log", "--served-model-name", "tiny", "--drain-timeout", "60")
    client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0, timeout=120)
    try:
        stream = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=300, temperature=0.8,
                                                seed=3, stream=True, stream_options={"include_usage": True})
        chunks = [next(stream)]
        s.proc.send_signal(signal.SIGTERM)
        chunks += list(stream)
        assert chunks[-1].usage is not None
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish in (["length"], ["stop"])  # the answer ran to its end, not cut by the shutdown
        assert s.proc.wait(60) == 0
        log = (tmp_path / "serve.log").read_text()
        assert "draining 1 in-flight request(s)" in log and "stopped" in log
    finally:
        s.stop()
