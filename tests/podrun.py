"""Running a rendered container the way a kubelet would, as a local process: its command with the pod's paths mapped
to test directories, its environment with Secret keys resolved."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path


def container_env(container: dict, secret: dict[str, str]) -> dict[str, str]:
    """The container's env: plain values, and `secretKeyRef`s read from `secret` (a Secret's base64 `data`)."""
    out = {}
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if "value" in e:
            out[e["name"]] = e["value"]
        elif ref and ref["key"] in secret:
            out[e["name"]] = base64.b64decode(secret[ref["key"]]).decode()
    return out


def start(container: dict, secret: dict[str, str], paths: dict[str, Path], env: dict[str, str]) -> subprocess.Popen:
    """`kubetune ...` of the container, each pod path in `paths` (a prefix of an argument) replaced by its test
    directory; `env` last (what the test plays: NODE_RANK, ADDR...). Its own session, like a container's PID 1."""
    argv = list(container["command"])
    assert argv[0] == "kubetune", argv
    for pod_path, local in paths.items():
        argv = [str(local) + a[len(pod_path):] if a.startswith(pod_path) else a for a in argv]
    return subprocess.Popen([sys.executable, "-m", "kubetune", *argv[1:]],
                            env={**os.environ, **container_env(container, secret), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def tiny_lora_spec(model: Path, tmp: Path, rows: int, **training) -> dict:
    """A FineTuneJob spec that trains `model` (the tiny Llama) with LoRA on `rows` alpaca rows written under `tmp`:
    fp32, one sample a step, a log line every step; `training` overrides."""
    import json

    from .test_train import alpaca_rows

    data = tmp / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in alpaca_rows(rows)) + "\n")
    return {"model": {"uri": str(model)},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}},
            "dataset": {"uri": str(data), "format": "alpaca", "promptTemplate": "default", "maxLength": 64,
                        "packToMaxLength": False},
            "training": {"batchSize": 1, "accumulativeCounts": 1, "precision": "fp32", "gradientCheckpointing": False,
                         "logEverySteps": 1, **training}}
