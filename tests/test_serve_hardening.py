"""Attacks on `kubetune serve` from the red-team pass (issue 26: H1, H2, M2, M3 and the low items), each reproduced
against a real server process: one request must never break its batch, a huge or trickling body must never stall the
server, a client that hangs up must free its slot, and the gauges must stay true."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import socket
import time

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.chat.prompt import Prompter

from .chatkit import Server, http

KEY = "sk-hardening-0123"
QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text("  # an indented comment is not a key\n" + KEY + "\n")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # H1: a server-wide repetition penalty answered 500 to every request.
    s = Server(tiny_dir, log, "--prompt-template", "internlm2_chat", "--served-model-name", "tiny",
               "--api-key-file", str(keys), "--max-batch", "4", "--max-waiting", "16", "--max-prompt-tokens", "256",
               "--temperature", "0", "--repetition-penalty", "1.1", "--read-timeout", "2")
    yield s
    assert s.stop() == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def penalised_reference(tiny_dir, tokenizer, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    prompter = Prompter(tokenizer, "internlm2_chat")
    ids = prompter.render(QUESTION)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    eos = sorted(prompter.eos_ids())
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.1, eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id)
    new = out[0, len(ids):].tolist()
    new = new[:next((i for i, t in enumerate(new) if t in eos), len(new))]
    return tokenizer.decode(new, skip_special_tokens=True)


def metric(server, name: str, **labels: str) -> float:
    text = http("GET", f"{server.url}/metrics")[2]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def test_repetition_penalty_works_and_equals_transformers(client, tiny_dir, tokenizer):
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=16)
    assert reply.choices[0].message.content == penalised_reference(tiny_dir, tokenizer, 16)


def test_one_bad_sampling_request_never_breaks_its_batch(server, client):
    plain = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=12,
                                           extra_body={"repetition_penalty": 1.0}).choices[0].message.content
    odd = [{"temperature": 1e-300}, {"temperature": 1.0, "top_p": 1e-300}, {"temperature": 2.0, "top_k": 1},
           {"temperature": 0.9, "top_p": 0.5, "seed": 2**63 - 1}]

    def ask(i: int) -> tuple[int, str]:
        extra = {"repetition_penalty": 1.0, **odd[i % len(odd)]} if i % 2 else {"repetition_penalty": 1.0}
        code, _, reply = http("POST", f"{server.url}/v1/chat/completions",
                              {"model": "tiny", "messages": QUESTION, "max_tokens": 12, **extra}, AUTH, timeout=120)
        return code, reply["choices"][0]["message"]["content"] if code == 200 else reply

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert [code for code, _ in answers] == [200] * 8, answers
    assert all(text == plain for i, (_, text) in enumerate(answers) if not i % 2)
    assert metric(server, "kubetune:num_requests_running", model_name="tiny") == 0


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "prompt": ""}, "prompt"),
    ({"model": "tiny", "prompt": [""]}, "prompt"),
])
def test_an_empty_completion_prompt_is_a_400(server, body, param):
    code, _, reply = http("POST", f"{server.url}/v1/completions", body, AUTH)
    assert code == 400 and reply["error"]["param"] == param, reply
    assert "empty" in reply["error"]["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "messages": QUESTION, "seed": 2**64}, "seed"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": 123}]}]},
     "messages.0.content"),
    ({"model": "tiny", "messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"model": "tiny", "messages": QUESTION, "functions": [{"name": "f"}]}, "functions"),
    # Issue 42 R14: what changes the answer's shape or content is refused, not ignored with a 200.
    ({"model": "tiny", "messages": QUESTION, "logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"model": "tiny", "messages": QUESTION, "response_format": {"type": "json_object"}}, "response_format"),
    ({"model": "tiny", "messages": QUESTION, "tool_choice": "required"}, "tool_choice"),
    ({"model": "tiny", "messages": QUESTION, "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"model": "tiny", "messages": QUESTION, "repetition_penalty": 1e30}, "repetition_penalty"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', None),
    (b'{"model": "tiny", "x": ' + b"[" * 200000 + b"]" * 200000 + b"}", None),
])
def test_odd_bodies_are_400s_not_tracebacks(server, body, param):
    code, _, reply = http("POST", f"{server.url}/v1/chat/completions", body, AUTH)
    assert code == 400, reply
    assert isinstance(reply, dict) and (reply["error"]["param"] or "").startswith(param or ""), reply
    assert http("GET", f"{server.url}/health")[0] == 200


def test_a_huge_body_is_refused_before_it_is_read(server):
    # H2: a 20 MB prompt froze /health for 26 s and held 2 GB. Content-Length alone decides now.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {20 << 20}\r\n\r\n".encode())
        head = conn.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert time.monotonic() - started < 5
    # A chunked body (no Content-Length) is cut once it passes the limit.
    prompt = "word " * 230000
    code, _, reply = http("POST", f"{server.url}/v1/completions",
                          iter([json.dumps({"model": "tiny", "prompt": prompt}).encode()]), AUTH)
    assert code == 413 and reply["error"]["code"] == "body_too_large"


def test_a_long_prompt_is_tokenized_off_the_event_loop(server):
    prompt = "word " * 190000  # just under the body limit: ~190k tokens to encode, far past the prompt limit
    with cf.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(http, "POST", f"{server.url}/v1/completions", {"model": "tiny", "prompt": prompt}, AUTH)
        time.sleep(0.05)
        health = [http("GET", f"{server.url}/health", timeout=5)[0] for _ in range(5)]
        code, _, reply = slow.result()
    assert code == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert health == [200] * 5


def test_a_trickling_body_gets_408(server):
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"".encode())
        conn.settimeout(20)
        started = time.monotonic()
        head = conn.recv(65536).decode()
    assert head.startswith("HTTP/1.1 408"), head
    assert 1.5 < time.monotonic() - started < 10


def test_trickled_headers_are_cut_off(server):
    """Slowloris: uvicorn waited for request headers forever."""
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        conn.settimeout(20)
        started = time.monotonic()
        assert conn.recv(65536) == b""  # closed by the server
    assert 1.5 < time.monotonic() - started < 10
    assert http("GET", f"{server.url}/health")[0] == 200


def test_a_disconnected_non_streaming_client_frees_its_slot(server):
    aborted = metric(server, "kubetune:request_success_total", model_name="tiny", finished_reason="abort")
    body = json.dumps({"model": "tiny", "messages": QUESTION, "max_tokens": 3000, "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(1.0)
        assert http("GET", f"{server.url}/health")[2]["running"] == 1
    deadline = time.monotonic() + 3  # the whole answer takes far longer
    while http("GET", f"{server.url}/health")[2]["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert http("GET", f"{server.url}/health")[2]["running"] == 0
    assert metric(server, "kubetune:request_success_total", model_name="tiny", finished_reason="abort") == aborted + 1


def test_bearer_is_case_insensitive_and_comments_are_not_keys(server):
    ok = {"model": "tiny", "messages": QUESTION, "max_tokens": 2}
    assert http("POST", f"{server.url}/v1/chat/completions", ok, {"Authorization": f"bearer {KEY}"})[0] == 200
    for key in ("# an indented comment is not a key", "  # an indented comment is not a key"):
        assert http("POST", f"{server.url}/v1/chat/completions", ok, {"Authorization": f"Bearer {key}"})[0] == 401


def test_a_failing_forward_counts_each_request_once(tiny_dir, tokenizer):
    """M3: the error path finished a request twice (it was in both `joining` and `running`), so the running gauge
    went negative and the autoscaler scaled on it."""
    import functools
    import threading

    import torch
    from transformers import AutoModelForCausalLM

    from kubetune.chat.engine import Engine, Request
    from kubetune.chat.metrics import ServingMetrics
    from kubetune.chat.sampling import Sampling

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    forward, calls = model.forward, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # prefill, prefill, then the first decode of the joined batch
            raise RuntimeError("device lost")
        return forward(*args, **kwargs)

    model.forward = functools.wraps(forward)(failing)
    metrics = ServingMetrics("tiny")
    engine = Engine(model, tokenizer, max_batch=4, observer=metrics)
    events: list = []
    done = threading.Event()

    def emit(event):
        events.append(event)
        if sum(e.finished is not None for e in events) == 2:
            done.set()

    ids = tokenizer.encode("hello there")
    with engine.cv:  # both join in one step, so the failing decode sees them in `joining` and `running`
        for _ in range(2):
            engine.submit(Request(ids, Sampling(max_tokens=50), emit))
    assert done.wait(60)
    engine.shutdown(timeout=10)
    assert [e.finished for e in events if e.finished] == ["error", "error"]
    assert metrics.running._value.get() == 0 and metrics.waiting._value.get() == 0
    assert engine.stats() == (0, 0)


def test_serve_listens_on_loopback_by_default_and_warns_when_open(tiny_dir, tmp_path):
    import subprocess
    import sys

    from .chatkit import free_port

    def started(*flags: str) -> str:
        log = tmp_path / f"serve-{len(flags)}.log"
        with log.open("w") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "kubetune", "serve", str(tiny_dir), "--port",
                                     str(free_port()), *flags], stdout=handle, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", "KUBETUNE_API_KEYS": ""})
            try:
                deadline = time.monotonic() + 120
                while "serving on" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.3)
            finally:
                proc.terminate()
                proc.wait(30)
        return log.read_text()

    quiet = started()
    assert "serving on http://127.0.0.1:" in quiet and "warning" not in quiet
    open_to_all = started("--host", "0.0.0.0")
    assert "warning: listening on 0.0.0.0 with no API key" in open_to_all


def test_a_seed_past_32_bits_is_refused_before_training(tiny_dir, tmp_path):
    from .test_train import alpaca_rows, kubetune, write_job

    job = write_job(tmp_path, tiny_dir, alpaca_rows(4))
    out = kubetune("train", str(job), "--seed", "4294967296")
    assert out.returncode == 2 and "training.seed" in out.stderr and "Traceback" not in out.stderr
