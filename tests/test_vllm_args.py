"""The operator's `vllm serve` command lines, parsed by vLLM 0.34.0's own argument parser (the version of the
default image, kubetune.api.chat.VLLM_IMAGE), and checked as `vllm serve` checks them before it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api import parse_manifest
from kubetune.api.chat import VLLM_IMAGE
from kubetune_operator.builders import chat
from kubetune_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "plain": {"model": {"uri": "hf://org/m"}},
    "everything": {"model": {"uri": "hf://org/m", "dtype": "bf16", "trustRemoteCode": True}, "bits": 4,
                   "adapters": [{"name": "sql", "uri": "s3://a/sql"}, {"name": "emo", "uri": "s3://a/emo"}],
                   "generation": {"temperature": 0, "topK": 0, "topP": 0.9, "repetitionPenalty": 1.1,
                                  "maxNewTokens": 256},
                   "vllm": {"maxModelLen": 4096, "gpuMemoryUtilization": 0.8, "maxLoras": 1, "maxLoraRank": 128,
                            "extraArgs": ["--enable-prefix-caching", "--max-num-seqs", "64"]},
                   "auth": {"apiKeySecretRef": "keys"}, "resources": {"gpus": 2}},
}


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict]:
    site = subprocess.run([str(ROOT / ".ci" / "vllm-parser")], check=True, capture_output=True, text=True).stdout.strip()
    argvs = {}
    for name, spec in SPECS.items():
        doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint",
               "metadata": {"name": name, "namespace": "ns", "uid": "u"}, "spec": {"engine": "vllm", **spec}}
        endpoint = parse_manifest(doc)
        adapters = {a.name: a.uri for a in endpoint.spec.adapters}
        deployment = next(m for m in chat.children(doc, endpoint.spec, adapters, Settings()) if m["kind"] == "Deployment")
        argvs[name] = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    env = {**os.environ, "PYTHONPATH": site, "VLLM_TARGET_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "vllm_parse.py")], input=json.dumps(list(argvs.values())),
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = dict(zip(argvs, json.loads(run.stdout)))
    assert all("ok" in r for r in results.values()), results
    return {name: r["ok"] for name, r in results.items()}


def test_the_default_image_is_the_version_the_parser_comes_from():
    version = subprocess.run(["grep", "-m1", "^version=", str(ROOT / ".ci" / "vllm-parser")], capture_output=True,
                             text=True).stdout.strip().split("=")[1]
    assert VLLM_IMAGE == f"vllm/vllm-openai:v{version}"


def test_a_plain_endpoint(parsed):
    p = parsed["plain"]
    assert (p["model_tag"], p["served_model_name"], p["host"], p["port"]) == ("/work/models/model", ["plain"],
                                                                              "0.0.0.0", 8000)
    assert p["tensor_parallel_size"] == 1 and not p["enable_lora"] and p["lora_modules"] == []
    assert p["generation_config"] == "vllm" and p["override_generation_config"] == {
        "temperature": 0.1, "top_p": 0.75, "top_k": 40, "repetition_penalty": 1.0, "max_new_tokens": 2048}


def test_every_field_vllm_honours(parsed):
    p = parsed["everything"]
    assert (p["host"], p["port"]) == ("127.0.0.1", 8001)  # behind the gateway, which checks the keys
    assert p["api_key"] is None  # no key on vLLM's command line
    assert (p["dtype"], p["quantization"], p["trust_remote_code"], p["tensor_parallel_size"]) == \
        ("bfloat16", "bitsandbytes", True, 2)
    assert (p["max_model_len"], p["gpu_memory_utilization"]) == (4096, 0.8)
    assert (p["enable_lora"], p["max_loras"], p["max_lora_rank"]) == (True, 1, 128)
    assert p["lora_modules"] == [
        {"name": "sql", "path": "/work/models/adapters/sql", "base_model_name": "everything"},
        {"name": "emo", "path": "/work/models/adapters/emo", "base_model_name": "everything"}]
    assert p["override_generation_config"] == {"temperature": 0, "top_p": 0.9, "top_k": 0,
                                               "repetition_penalty": 1.1, "max_new_tokens": 256}
    assert p["enable_prefix_caching"] is True
