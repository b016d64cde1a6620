"""`kubetune gateway`, the key check in front of vLLM: every route but /health and /metrics needs a key (vLLM's own
`--api-key` leaves /invocations and its admin routes open); accepted requests reach the upstream as they were sent,
minus the key; answers stream through chunk by chunk; the real `openai` client works through it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from .chatkit import Server, free_port, http

KEY = "sk-gw-0123456789"
QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]


class Echo(BaseHTTPRequestHandler):
    """An upstream that answers what it received; /stream sends three chunks 0.3 s apart."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _answer(self) -> None:
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                data = f"data: {i}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
            return
        length = int(self.headers.get("content-length") or 0)
        body = json.dumps({"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                           "body": self.rfile.read(length).decode()}).encode()
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer


def _gateway(upstream: str, tmp_path) -> tuple[subprocess.Popen, str]:
    keys = tmp_path / "keys"
    keys.write_text(f"# keys\n{KEY}\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kubetune", "gateway", "--upstream", upstream, "--port", str(port),
                             "--api-key-file", str(keys)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            http("GET", f"{url}/health", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the gateway did not start")


@pytest.fixture(scope="module")
def echo_gateway(tmp_path_factory):
    echo = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    proc, url = _gateway(f"http://127.0.0.1:{echo.server_address[1]}", tmp_path_factory.mktemp("gw"))
    yield url
    proc.terminate()
    proc.wait(10)
    echo.shutdown()


def test_every_route_but_the_probes_needs_a_key(echo_gateway):
    for method, route in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/invocations"),
                          ("POST", "/pause"), ("POST", "/update_weights"), ("GET", "/")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            code, _, body = http(method, f"{echo_gateway}{route}", {"x": 1}, headers)
            assert code == 401 and body["error"]["code"] == "invalid_api_key", (route, headers)
    for route in ("/health", "/metrics"):
        code, _, body = http("GET", f"{echo_gateway}{route}")
        assert code == 200 and body["path"] == route


def test_an_accepted_request_reaches_the_upstream_as_sent_without_its_key(echo_gateway):
    auth = {"Authorization": f"bearer {KEY}", "X-Request-Id": "r1"}
    code, _, body = http("POST", f"{echo_gateway}/v1/chat/completions?a=1&a=2", {"model": "m"}, auth)
    assert code == 200 and body["method"] == "POST" and body["path"] == "/v1/chat/completions?a=1&a=2"
    assert json.loads(body["body"]) == {"model": "m"} and body["headers"]["x-request-id"] == "r1"
    assert "authorization" not in body["headers"]
    assert http("DELETE", f"{echo_gateway}/missing", None, auth)[0] == 404  # the upstream's status, as it is


def test_answers_stream_through_chunk_by_chunk(echo_gateway):
    import urllib.request

    request = urllib.request.Request(f"{echo_gateway}/stream", headers={"Authorization": f"Bearer {KEY}"})
    start = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as response:
        first = response.readline()
        first_at = time.monotonic() - start
        rest = response.read()
    assert first == b"data: 0\n" and rest.count(b"data:") == 2
    assert first_at < 0.5, f"the first chunk came after {first_at:.2f} s: buffered, not streamed"


def test_the_openai_client_through_the_gateway(tiny_dir, tmp_path):
    upstream = Server(tiny_dir, tmp_path / "serve.log", "--served-model-name", "tiny", "--prompt-template",
                      "internlm2_chat", "--temperature", "0")
    proc, url = _gateway(upstream.url, tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["tiny"]
        plain = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=12).choices[0].message
        chunks = list(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=12, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(10)
        assert upstream.stop() == 0
