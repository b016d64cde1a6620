"""One YAML, two places (docs/local-vs-cluster.md): every field of the three kinds has a verdict for a run here, the
cluster-only ones are said once, `spec.export` runs after a local training run, ConvertJob and ChatEndpoint
manifests run here as their pods run them. The end-to-end comparison with the operator is in
tests/test_operator_parity.py."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import yaml

from kubetune.api import ChatEndpoint, ConvertJob, FineTuneJob, FineTuneJobSpec, parity

from .test_train import alpaca_rows, kubetune, write_job

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", [FineTuneJob, ConvertJob, ChatEndpoint], ids=lambda k: k.__name__)
def test_every_field_has_a_verdict(kind):
    walked = list(parity.fields(kind))
    table = parity.TABLES[kind.__name__]
    assert len(walked) == len(set(walked)) > 30
    assert sorted(set(walked) - set(table)) == [], "fields with no row in kubetune.api.parity"
    assert sorted(set(table) - set(walked)) == [], "rows for fields the API no longer has"
    assert {verdict for verdict, _ in table.values()} <= {parity.HONOURED, parity.EQUIVALENT, parity.CLUSTER,
                                                          parity.REFUSED}
    assert all(len(note) > 10 for _, note in table.values())


def test_a_new_field_without_a_verdict_is_found():
    spec = pydantic.create_model("Spec", __base__=FineTuneJobSpec, shiny=(int, 0))
    kind = pydantic.create_model("Job", __base__=FineTuneJob, spec=(spec, ...))
    assert set(parity.fields(kind)) - set(parity.FINETUNE) == {"spec.shiny"}


def test_the_table_in_the_docs_is_generated():
    assert (REPO / "docs" / "local-vs-cluster.md").read_text() == parity.render(), \
        "docs/local-vs-cluster.md is stale: run `kubetune crds --parity docs/local-vs-cluster.md`"


def test_cluster_only_settings_are_the_ones_set():
    job = FineTuneJob.model_validate({"metadata": {"name": "x", "namespace": "team"}, "spec": {
        "model": {"uri": "m"}, "dataset": {"uri": "d"}, "resources": {"nodes": 2, "gpusPerNode": 8},
        "runPolicy": {"queueName": "gpus"}, "storage": {"secretRef": "s3"}}})
    assert parity.cluster_only_settings(job) == [("metadata.namespace", "team"), ("spec.resources.nodes", 2),
                                                 ("spec.resources.gpusPerNode", 8), ("spec.runPolicy.queueName", "gpus")]
    plain = FineTuneJob.model_validate({"spec": {"model": {"uri": "m"}, "dataset": {"uri": "d"}}})
    assert parity.cluster_only_settings(plain) == []


def test_a_local_run_says_what_it_ignores_and_exports_like_the_cluster(tmp_path, tiny_dir):
    """`kubetune train` with a cluster's resources and export.merge: the ignored fields once on stderr, then the
    adapter and merged model where the operator's ConvertJobs put them (<checkpoints.uri>/export/hf, /merged)."""
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8))
    spec = yaml.safe_load(job.read_text())
    spec["training"]["maxSteps"] = 2
    spec["checkpoints"] = {"everySteps": 2, "keep": 1, "uri": str(tmp_path / "store")}
    spec["resources"] = {"nodes": 2, "gpusPerNode": 1, "memory": "64Gi"}
    spec["export"] = {"adapter": True, "merge": True}
    job.write_text(yaml.safe_dump(spec))
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "work"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("ignored here:") == 1
    assert "ignored here: resources.memory=64Gi (cluster only), resources.nodes=2 (cluster only), " \
           "resources.gpusPerNode=1 (cluster only)" in out.stderr
    export = tmp_path / "store" / "export"
    assert (export / "hf" / "adapter_config.json").is_file()
    assert (export / "merged" / "config.json").is_file() and list((export / "merged").glob("*.safetensors"))
    assert f"exported: adapter {export}/hf, merged {export}/merged" in out.stdout

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(export / "merged"), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(export / "hf")).merge_and_unload()
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-3)

    again = kubetune("train", str(job), "--work-dir", str(tmp_path / "work2"), "--no-export",
                     "--cfg-options", f"checkpoints.uri={tmp_path / 'store2'}")
    assert again.returncode == 0 and not (tmp_path / "store2" / "export").exists()


def test_export_without_a_checkpoints_uri_is_skipped_and_said(tmp_path, tiny_dir):
    job = write_job(tmp_path, tiny_dir, alpaca_rows(4), training__maxSteps=1)
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "work"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "spec.export skipped: it needs checkpoints.uri" in out.stderr
    assert "ignored here" not in out.stderr


def test_a_convertjob_manifest_runs_here(tmp_path, tiny_dir):
    job = write_job(tmp_path, tiny_dir, alpaca_rows(4), training__maxSteps=1, checkpoints__everySteps=1)
    assert kubetune("train", str(job), "--work-dir", str(tmp_path / "work")).returncode == 0
    convert = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ConvertJob", "metadata": {"name": "c"},
               "spec": {"operation": "pth_to_hf", "source": {"checkpointUri": str(tmp_path / "work" / "iter_1")},
                        "output": {"uri": str(tmp_path / "hf")}, "fp32": True,
                        "resources": {"gpus": 1}}}
    path = tmp_path / "convert.yaml"
    path.write_text(yaml.safe_dump(convert))
    missing = kubetune("convert", str(path))
    assert missing.returncode == 2 and "needs the FineTuneJob the checkpoint was trained with: --config" in \
        missing.stderr and "Traceback" not in missing.stderr
    out = kubetune("convert", str(path), "--config", str(job))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ignored here: resources.gpus=1 (cluster only)" in out.stderr
    assert json.loads((tmp_path / "hf" / "adapter_config.json").read_text())["r"] == 8
    merge = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ConvertJob",
             "spec": {"operation": "merge", "source": {"checkpointUri": str(tmp_path / "hf")},
                      "baseModel": {"uri": str(tiny_dir)}, "output": {"uri": str(tmp_path / "merged")}}}
    path.write_text(yaml.safe_dump(merge))
    out = kubetune("convert", str(path))
    assert out.returncode == 0 and (tmp_path / "merged" / "config.json").is_file(), out.stderr[-3000:]
    by_ref = {**merge, "spec": {**merge["spec"], "source": {"fineTuneJobRef": "trained"}}}
    path.write_text(yaml.safe_dump(by_ref))
    out = kubetune("convert", str(path))
    assert out.returncode == 2 and "source.fineTuneJobRef names a FineTuneJob in a cluster" in out.stderr


def _endpoint(tmp_path, **spec) -> Path:
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint", "metadata": {"name": "ep"},
           "spec": {"model": {"uri": "/nonexistent/model"}, **spec}}
    path = tmp_path / "endpoint.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("spec, reason", [
    ({"engine": "vllm"}, "engine vllm runs in the cluster's vLLM image"),
    ({"adapters": [{"name": "a", "fineTuneJobRef": "job"}]}, "adapters[a].fineTuneJobRef names a FineTuneJob"),
    ({"auth": {"apiKeySecretRef": "keys"}}, "auth.apiKeySecretRef keys is a cluster Secret and is not read here"),
])
def test_what_a_chatendpoint_needs_from_a_cluster_is_refused_by_name(tmp_path, spec, reason):
    out = kubetune("serve", str(_endpoint(tmp_path, **spec)), env={"KUBETUNE_API_KEYS": ""})
    assert out.returncode == 2 and reason in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_a_chatendpoint_becomes_the_pods_serve_arguments(tmp_path):
    """The spec goes through `serve_arguments` (what the operator's pods get) and the same parser."""
    from kubetune.api import parse_manifest
    from kubetune.api.chat import serve_arguments
    from kubetune.cli.chat import route
    from kubetune.cli.main import build_parser

    path = _endpoint(tmp_path, adapters=[{"name": "emo", "uri": "/a"}, {"name": "sql", "uri": "s3://b/sql"}],
                     system="be brief", bits=4, generation={"temperature": 0.7, "stopWords": ["<end>"]}, replicas=3)
    argv = route(["serve", str(path), "--port", "9000"])
    args = build_parser().parse_args(argv)
    assert (args.model_name_or_path, args.adapter, args.served_model_name, args.system, args.bits,
            args.temperature, args.stop_words, args.port) == ("/nonexistent/model", ["emo=/a", "sql=s3://b/sql"],
                                                              "ep", "be brief", 4, 0.7, ["<end>"], 9000)
    spec = parse_manifest(yaml.safe_load(path.read_text()), kind="ChatEndpoint").spec
    assert argv[1:-2] == serve_arguments(spec, {"emo": "/a", "sql": "s3://b/sql"}, "ep")


def test_adapter_configs_are_written_in_one_order(tmp_path):
    """PEFT saves target_modules from a set (its order follows the process's hash seed); checkpoints sort it, so the
    same run gives the same bytes in every process (the operator parity test compares them)."""
    from kubetune.train.checkpoint import stable_adapter_configs

    for order in (["v_proj", "q_proj", "o_proj"], ["o_proj", "q_proj", "v_proj"]):
        target = tmp_path / "-".join(order) / "llm_adapter"
        target.mkdir(parents=True)
        (target / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": order}, indent=2,
                                                               sort_keys=True))  # as PEFT writes it
        stable_adapter_configs(target.parent)
    texts = {p.read_text() for p in tmp_path.rglob("adapter_config.json")}
    assert len(texts) == 1 and json.loads(texts.pop())["target_modules"] == ["o_proj", "q_proj", "v_proj"]


def test_a_chatendpoint_manifest_serves_here_with_its_name_and_keys(tmp_path, tiny_dir):
    """`kubetune serve ENDPOINT.yaml`: the model, template and name from the spec, auth kept (keys given here)."""
    from .chatkit import Server, http

    keys = tmp_path / "keys"
    keys.write_text("sk-local-1\n")
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint", "metadata": {"name": "ep"},
           "spec": {"model": {"uri": str(tiny_dir)}, "promptTemplate": "internlm2_chat", "replicas": 2,
                    "auth": {"apiKeySecretRef": "chat-keys"}, "generation": {"temperature": 0}}}
    path = tmp_path / "endpoint.yaml"
    path.write_text(yaml.safe_dump(doc))
    server = Server(path, tmp_path / "serve.log", "--api-key-file", str(keys))
    try:
        assert http("GET", f"{server.url}/v1/models")[0] == 401
        status, _, body = http("GET", f"{server.url}/v1/models", headers={"Authorization": "Bearer sk-local-1"})
        assert status == 200 and [m["id"] for m in body["data"]] == ["ep"], body
    finally:
        assert server.stop() == 0
    assert "ignored here: replicas=2 (cluster only)" in (tmp_path / "serve.log").read_text()
