"""Shared helpers for the chat and serving tests: the reference answer plain transformers gives, and a server
process on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import functools
import json
import urllib.error
import urllib.request


def reference_answer(model_dir: Path, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> tuple[str, list[int]]:
    """What `generate` (greedy, one request alone) answers: the tokens the engine must reproduce in any batch."""
    import torch

    model, tok = _load(str(model_dir))
    out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(eos_ids),
                         pad_token_id=tok.pad_token_id)
    ids = out[0, len(prompt_ids):].tolist()
    ids = ids[:next((i for i, t in enumerate(ids) if t in eos_ids), len(ids))]
    return tok.decode(ids, skip_special_tokens=True), ids


@functools.lru_cache(maxsize=2)
def _load(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), \
        AutoTokenizer.from_pretrained(model_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`kubetune serve` as a user starts it, logging to a file the failure message points at."""

    def __init__(self, model_dir: Path, log: Path, *flags: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune", "serve", str(model_dir), "--host", "127.0.0.1", "--port",
             str(self.port), *flags], stdout=self.handle, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kubetune serve exited with {self.proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if http("GET", f"{self.url}/health", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"kubetune serve did not become healthy: {log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()
        return self.proc.returncode


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, dict[str, str], object]:
    """A raw HTTP call (status, headers, parsed JSON or text), for what the openai client hides: headers, bad bodies."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, head, json.loads(raw)
    except ValueError:
        return status, head, raw.decode()
