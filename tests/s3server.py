"""A real S3 server for the tests (versitygw over a temp directory) and a fault-injecting HTTP proxy in front of it."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCESS, SECRET = "kubetune-test-access", "kubetune-test-secret-4f1c9a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_versitygw(root: Path) -> tuple[subprocess.Popen, str]:
    binary = REPO / ".ci" / ".tools" / "bin" / "versitygw"
    if not binary.exists():
        subprocess.run([str(REPO / ".ci" / "tools")], check=True)
    port = free_port()
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "sidecar").mkdir(exist_ok=True)
    env = dict(os.environ, ROOT_ACCESS_KEY=ACCESS, ROOT_SECRET_KEY=SECRET)
    log = (root / "versitygw.log").open("w")
    proc = subprocess.Popen([str(binary), "--port", f"127.0.0.1:{port}", "posix", "--sidecar", str(root / "sidecar"),
                             str(root / "data")], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"versitygw exited: {(root / 'versitygw.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("versitygw did not start listening within 30 s")


class Faults:
    """What the proxy does to the next requests that match: `plan` is a list of (predicate, action) consumed in
    order; action 503 answers SlowDown, "drop" closes the connection without an answer, a function rewrites the
    upstream answer's body. `always` applies forever."""

    def __init__(self):
        self.lock = threading.Lock()
        self.plan: list[tuple] = []
        self.always: list[tuple] = []
        self.seen: list[str] = []

    def take(self, method: str, path: str):
        with self.lock:
            self.seen.append(f"{method} {path}")
            for i, (match, action) in enumerate(self.plan):
                if match(method, path):
                    del self.plan[i]
                    return action
            for match, action in self.always:
                if match(method, path):
                    return action
        return None


def start_proxy(upstream: str, faults: Faults) -> tuple[ThreadingHTTPServer, str]:
    host, port = upstream.removeprefix("http://").split(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b""):
                            pass
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

        def _handle(self):
            body = self._body()
            action = faults.take(self.command, self.path)
            if action == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action == 503:
                payload = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if callable(action):  # a rewrite of the answer: what a bucket someone else writes can hold
                data = action(data)
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
