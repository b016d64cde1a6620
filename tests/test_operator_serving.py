"""A ChatEndpoint end to end on the test control plane: the operator renders it; its pod's init container fetches the
model and two adapters from the test S3 server (kubetune's storage layer, the endpoint's Secret); with the S3 server
then stopped, the server container serves from the local layout alone, answering for the base and each adapter as
`peft` does, with the keys enforced on every route but /health and /metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai

from . import podrun
from .chatkit import free_port, http
from .test_operator import NS, _status, operator  # noqa: F401 (the operator fixture)
from .test_serve_adapters import QUESTION, TOKENS, adapters, prompt_ids, wants  # noqa: F401 (fixtures)

KEY = "sk-e2e-0123456789"


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
    except OSError:
        return False


def _upload(s3, bucket: str, prefix: str, directory: Path) -> None:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory)}")


def _endpoint(endpoint_url: str) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint", "metadata": {"name": "e2e", "namespace": NS},
            "spec": {"model": {"uri": "s3://models/base"},
                     "adapters": [{"name": "sql", "uri": "s3://models/sql"}, {"name": "emo", "uri": "s3://models/emo"}],
                     "promptTemplate": "internlm2_chat", "generation": {"temperature": 0},
                     "auth": {"apiKeySecretRef": "e2e-keys"},
                     "storage": {"secretRef": "e2e-s3", "endpoint": endpoint_url, "region": "us-east-1",
                                 "pathStyle": True}}}


def test_an_endpoint_fetches_from_s3_and_serves_the_base_and_each_adapter(
        cluster, operator, tiny_dir, adapters, wants, tmp_path):  # noqa: F811 (fixtures imported above)
    import boto3

    from .s3server import ACCESS, SECRET, start_versitygw

    # The operator watches before the endpoint exists, so its creation is an event it must see.
    cluster.wait_for(lambda: _healthy(operator.health_port), "the operator's /healthz", 120)
    s3_server, endpoint_url = start_versitygw(tmp_path / "s3")
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                          region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        _upload(s3, "models", "base", tiny_dir)
        for name, path in adapters.items():
            _upload(s3, "models", name, path)
        cluster.kubectl("create", "secret", "generic", "e2e-s3", "-n", NS, f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS}",
                        f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}")
        cluster.kubectl("create", "secret", "generic", "e2e-keys", "-n", NS, f"--from-literal=api-keys={KEY}")
        cluster.kubectl("apply", "-f", "-", input=json.dumps(_endpoint(endpoint_url)))
        try:
            cluster.wait_for(lambda: cluster.kubectl("get", "-n", NS, "deployment", "e2e",
                                                     check=False).returncode == 0, "the endpoint's Deployment", 120)
        except Exception:
            status = cluster.get_json("-n", NS, "chatendpoint", "e2e").get("status")
            raise AssertionError(f"no Deployment; endpoint status {status}; operator log:\n"
                                 f"{operator.log.read_text()[-4000:]}") from None
        pod = cluster.get_json("-n", NS, "deployment", "e2e")["spec"]["template"]["spec"]
        config = tmp_path / "etc" / "endpoint.yaml"
        config.parent.mkdir()
        config.write_text(cluster.get_json("-n", NS, "configmap", "e2e-endpoint")["data"]["endpoint.yaml"])
        secret = cluster.get_json("-n", NS, "secret", "e2e-s3")["data"]
        models, home = tmp_path / "work" / "models", tmp_path / "work"
        local = {"HOME": str(home), "KUBETUNE_CACHE": str(home / ".cache"), "HF_HOME": str(home / "hf")}
        fetched = podrun.start(pod["initContainers"][0], secret, {"/etc/kubetune/endpoint.yaml": config,
                                                                  "/work/models": models}, local)
        output = fetched.communicate(timeout=300)[0]
        assert fetched.returncode == 0, output[-3000:]
        assert sorted(p.name for p in (models / "adapters").iterdir()) == ["emo", "sql"]
    finally:
        s3_server.kill()  # from here on, nothing remote is reachable: the server must read local paths only
        s3_server.wait()

    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    port = free_port()
    server = pod["containers"][0]
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in server["env"])  # no storage credentials
    serving = podrun.start(server, {}, {"/work/models": models, "/etc/kubetune/keys/api-keys": keys,
                                        "0.0.0.0": "127.0.0.1", "8000": str(port)}, local)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and serving.poll() is None:
            try:
                if http("GET", f"{url}/health", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        assert serving.poll() is None, serving.stdout.read()[-3000:]
        assert http("GET", f"{url}/metrics")[0] == 200  # open, as documented
        for method, route in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/invocations"),
                              ("GET", "/anything")):
            assert http(method, f"{url}{route}", {"model": "e2e", "messages": QUESTION})[0] == 401, route
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["e2e", "sql", "emo"]
        for name, want in (("e2e", wants["base"]), ("sql", wants["sql"]), ("emo", wants["emo"])):
            answer = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=TOKENS)
            assert answer.choices[0].message.content == want, name
    finally:
        serving.terminate()
        serving.wait(30)
    assert _status(cluster, "chat", "e2e")["servedModel"] == "e2e,sql,emo"
    cluster.kubectl("delete", "-n", NS, "chatendpoint", "e2e", "--wait=false")
