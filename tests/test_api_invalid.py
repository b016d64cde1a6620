"""Invalid specs are rejected with every bad field named by its path; the CRD's CEL rules agree with Python."""

import copy

import pytest

from kubetune.api import ManifestError, catalog, parse_manifest
from kubetune.api.crds import openapi_schema
from kubetune.api.finetune import FineTuneJob
from kubetune.api.chat import ChatEndpoint
from kubetune.api.convert import ConvertJob
from kubetune.api.loader import deep_merge, rule_errors
from kubetune.api.finetune import FineTuneJobSpec
from kubetune.api.convert import ConvertJobSpec
from kubetune.api.chat import ChatEndpointSpec

from . import celcheck

FTJ = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "t"},
       "spec": {"model": {"uri": "hf://org/model"}, "dataset": {"uri": "s3://b/d.jsonl"}}}
CVJ = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ConvertJob", "metadata": {"name": "c"},
       "spec": {"operation": "merge", "source": {"fineTuneJobRef": "t"}, "output": {"uri": "s3://b/o"}}}
CHAT = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ChatEndpoint", "metadata": {"name": "e"},
        "spec": {"model": {"uri": "s3://b/m"}}}
BASES = {"ftj": FTJ, "cvj": CVJ, "chat": CHAT}
SPECS = {"ftj": (FineTuneJob, FineTuneJobSpec), "cvj": (ConvertJob, ConvertJobSpec),
         "chat": (ChatEndpoint, ChatEndpointSpec)}

# (id, base, patch merged into the manifest, paths that must be named, is it a cross-field rule?)
CASES = [
    ("method-type-enum", "ftj", {"spec": {"method": {"type": "prefix"}}}, ["spec.method.type"], False),
    ("seed-past-32-bits", "ftj", {"spec": {"training": {"seed": 2**32}}}, ["spec.training.seed"], False),
    ("quantization-without-qlora", "ftj", {"spec": {"method": {"type": "lora", "quantization": {"bits": 4}}}},
     ["spec.method.quantization"], True),
    ("lora-block-with-full", "ftj", {"spec": {"method": {"type": "full", "lora": {"r": 8}}}}, ["spec.method.lora"], True),
    ("dpo-on-sft-data", "ftj", {"spec": {"method": {"type": "dpo"}}}, ["spec.dataset.format"], True),
    ("preference-data-with-sft", "ftj", {"spec": {"dataset": {"format": "preference"}}}, ["spec.dataset.format"],
     True),
    ("parameters-with-sft-type", "ftj", {"spec": {"method": {"type": "lora", "parameters": "full"}}},
     ["spec.method.parameters"], True),
    ("dpo-block-with-orpo", "ftj", {"spec": {"method": {"type": "orpo", "dpo": {"beta": 0.1}},
                                             "dataset": {"format": "preference"}}}, ["spec.method.dpo"], True),
    ("quantization-with-full-dpo", "ftj", {"spec": {"method": {"type": "dpo", "parameters": "full",
                                                               "quantization": {"bits": 4}},
                                                    "dataset": {"format": "preference"}}},
     ["spec.method.quantization"], True),
    ("full-dpo-zero3", "ftj", {"spec": {"method": {"type": "dpo", "parameters": "full"},
                                        "dataset": {"format": "preference"}, "training": {"deepspeed": "zero3"}}},
     ["spec.training.deepspeed"], True),
    ("qlora-8bit-zero3", "ftj", {"spec": {"method": {"type": "qlora", "quantization": {"bits": 8}},
                                          "training": {"deepspeed": "zero3"}}},
     ["spec.training.deepspeed", "spec.method.quantization.bits"], True),
    ("dpo-loss-type", "ftj", {"spec": {"method": {"type": "dpo", "dpo": {"lossType": "dpop"}},
                                       "dataset": {"format": "preference"}}}, ["spec.method.dpo.lossType"], False),
    ("dpo-label-smoothing", "ftj", {"spec": {"method": {"type": "dpo", "dpo": {"labelSmoothing": 0.5}},
                                             "dataset": {"format": "preference"}}},
     ["spec.method.dpo.labelSmoothing"], False),
    ("reward-penalty", "ftj", {"spec": {"method": {"type": "reward", "reward": {"penalty": "l1"}},
                                        "dataset": {"format": "preference"}}}, ["spec.method.reward.penalty"], False),
    ("quant-bits", "ftj", {"spec": {"method": {"type": "qlora", "quantization": {"bits": 3}}}},
     ["spec.method.quantization.bits"], False),
    ("lora-rank-zero", "ftj", {"spec": {"method": {"lora": {"r": 0}}}}, ["spec.method.lora.r"], False),
    ("lora-dropout-one", "ftj", {"spec": {"method": {"lora": {"dropout": 1.0}}}}, ["spec.method.lora.dropout"], False),
    ("lora-bias", "ftj", {"spec": {"method": {"lora": {"bias": "some"}}}}, ["spec.method.lora.bias"], False),
    ("both-epochs-and-steps", "ftj", {"spec": {"training": {"maxEpochs": 3, "maxSteps": 10}}},
     ["spec.training.maxEpochs", "spec.training.maxSteps"], True),
    ("deepspeed-enum", "ftj", {"spec": {"training": {"deepspeed": "zero4"}}}, ["spec.training.deepspeed"], False),
    ("sp-not-dividing", "ftj", {"spec": {"dataset": {"maxLength": 1000}, "training": {
        "sequenceParallelSize": 3, "deepspeed": "zero2"}, "resources": {"gpusPerNode": 3}}},
     ["spec.training.sequenceParallelSize", "spec.dataset.maxLength"], True),
    ("sp-without-deepspeed", "ftj", {"spec": {"training": {"sequenceParallelSize": 2},
                                              "resources": {"gpusPerNode": 2}}},
     ["spec.training.deepspeed"], True),
    ("sp-vs-world-size", "ftj", {"spec": {"training": {"sequenceParallelSize": 4, "deepspeed": "zero2"},
                                          "resources": {"nodes": 1, "gpusPerNode": 2}}},
     ["spec.resources.gpusPerNode"], True),
    ("sp-reward-model", "ftj", {"spec": {"method": {"type": "reward"}, "dataset": {"format": "preference"},
                                         "training": {"sequenceParallelSize": 2, "deepspeed": "zero2"},
                                         "resources": {"gpusPerNode": 2}}},
     ["spec.training.sequenceParallelSize", "spec.method.type"], True),
    ("varlen-without-packing", "ftj", {"spec": {"dataset": {"varlenAttention": True, "packToMaxLength": False}}},
     ["spec.dataset.varlenAttention"], True),
    ("packed-budget-below-max-length", "ftj", {"spec": {"dataset": {"maxLength": 512, "maxPackedLength": 256}}},
     ["spec.dataset.maxPackedLength"], True),
    ("packed-budget-without-packing", "ftj", {"spec": {"dataset": {"maxPackedLength": 4096,
                                                                   "packToMaxLength": False}}},
     ["spec.dataset.maxPackedLength"], True),
    ("weights-only-checkpoints-with-deepspeed", "ftj", {"spec": {"checkpoints": {"saveOptimizer": False},
                                                                 "training": {"deepspeed": "zero2"}}},
     ["spec.checkpoints.saveOptimizer"], True),
    ("varlen-batch", "ftj", {"spec": {"dataset": {"varlenAttention": True}, "training": {"batchSize": 2}}},
     ["spec.training.batchSize"], True),
    ("system-and-template", "ftj", {"spec": {"dataset": {"system": "x", "systemTemplate": "coder"}}},
     ["spec.dataset.system", "spec.dataset.systemTemplate"], True),
    ("concat-system-and-template", "ftj", {"spec": {"dataset": {"concat": [
        {"uri": "d2", "system": "x", "systemTemplate": "sql"}]}}}, ["spec.dataset.concat[0].system"], True),
    ("prompt-template-enum", "ftj", {"spec": {"dataset": {"promptTemplate": "chatml"}}},
     ["spec.dataset.promptTemplate"], False),
    ("dataset-format-enum", "ftj", {"spec": {"dataset": {"format": "csv"}}}, ["spec.dataset.format"], False),
    ("system-template-enum", "ftj", {"spec": {"dataset": {"systemTemplate": "pirate"}}},
     ["spec.dataset.systemTemplate"], False),
    ("max-length-small", "ftj", {"spec": {"dataset": {"maxLength": 4}}}, ["spec.dataset.maxLength"], False),
    ("uri-with-spaces", "ftj", {"spec": {"model": {"uri": "hf://a b"}}}, ["spec.model.uri"], False),
    ("uri-unknown-scheme", "ftj", {"spec": {"dataset": {"uri": "gs://bucket/x"}}}, ["spec.dataset.uri"], False),
    ("lr-negative", "ftj", {"spec": {"training": {"optimizer": {"lr": -0.1}}}}, ["spec.training.optimizer.lr"], False),
    ("betas-three", "ftj", {"spec": {"training": {"optimizer": {"betas": [0.9, 0.99, 0.999]}}}},
     ["spec.training.optimizer.betas"], False),
    ("warmup-ratio-one", "ftj", {"spec": {"training": {"warmupRatio": 1.0}}}, ["spec.training.warmupRatio"], False),
    ("batch-size-zero", "ftj", {"spec": {"training": {"batchSize": 0}}}, ["spec.training.batchSize"], False),
    ("precision-enum", "ftj", {"spec": {"training": {"precision": "fp8"}}}, ["spec.training.precision"], False),
    ("keep-zero", "ftj", {"spec": {"checkpoints": {"keep": 0}}}, ["spec.checkpoints.keep"], True),
    ("every-steps-and-by-epoch", "ftj", {"spec": {"checkpoints": {"everySteps": 10, "byEpoch": True}}},
     ["spec.checkpoints.everySteps"], True),
    ("unknown-field", "ftj", {"spec": {"training": {"learningRate": 1e-4}}}, ["spec.training.learningRate"], False),
    ("unknown-section", "ftj", {"spec": {"trainer": {}}}, ["spec.trainer"], False),
    ("nodes-zero", "ftj", {"spec": {"resources": {"nodes": 0}}}, ["spec.resources.nodes"], False),
    ("memory-not-quantity", "ftj", {"spec": {"resources": {"memory": "lots"}}}, ["spec.resources.memory"], False),
    ("queue-name", "ftj", {"spec": {"runPolicy": {"queueName": "Bad_Queue"}}}, ["spec.runPolicy.queueName"], False),
    ("max-restarts-negative", "ftj", {"spec": {"runPolicy": {"maxRestarts": -1}}}, ["spec.runPolicy.maxRestarts"],
     False),
    ("merge-with-full", "ftj", {"spec": {"method": {"type": "full"}, "export": {"merge": True}}},
     ["spec.export.merge"], True),
    ("unknown-base-config", "ftj", {"spec": {"baseConfig": "llama9_qlora_alpaca_e3"}}, ["spec.baseConfig"], False),
    ("wrong-kind", "ftj", {"kind": "TrainJob"}, ["kind"], False),
    ("wrong-api-version", "ftj", {"apiVersion": "kubetune.io/v1"}, ["apiVersion"], False),
    ("bad-name", "ftj", {"metadata": {"name": "Not_A_Name"}}, ["metadata.name"], False),
    ("convert-operation", "cvj", {"spec": {"operation": "quantize"}}, ["spec.operation"], False),
    ("convert-two-sources", "cvj", {"spec": {"source": {"checkpointUri": "s3://b/c"}}},
     ["spec.source.fineTuneJobRef", "spec.source.checkpointUri"], True),
    ("convert-clip-not-merge", "cvj", {"spec": {"operation": "split", "isClip": True}}, ["spec.isClip"], True),
    ("convert-base-not-merge", "cvj", {"spec": {"operation": "pth_to_hf", "baseModel": {"uri": "m"}}},
     ["spec.baseModel"], True),
    ("convert-shard-size", "cvj", {"spec": {"maxShardSize": "2 gigs"}}, ["spec.maxShardSize"], False),
    ("convert-no-output", "cvj", {"spec": {"output": None}}, ["spec.output"], False),
    ("llava-without-vision", "ftj", {"spec": {"dataset": {"format": "llava", "packToMaxLength": False}}},
     ["spec.dataset.format"], True),
    ("vision-without-llava-data", "ftj", {"spec": {"model": {"vision": {"encoder": "hf://o/clip"}}}},
     ["spec.dataset.format"], True),
    ("llava-packed", "ftj", {"spec": {"model": {"vision": {"encoder": "hf://o/clip"}},
                                      "dataset": {"format": "llava"}}}, ["spec.dataset.packToMaxLength"], True),
    ("image-folder-without-llava", "ftj", {"spec": {"dataset": {"imageFolder": "s3://b/img"}}},
     ["spec.dataset.imageFolder"], True),
    ("method-vision-without-model-vision", "ftj", {"spec": {"method": {"type": "full",
                                                                         "vision": {"stage": "pretrain"}}}},
     ["spec.method.vision"], True),
    ("pretrain-stage-with-lora", "ftj", {"spec": {"model": {"vision": {"encoder": "hf://o/clip"}},
                                                  "dataset": {"format": "llava", "packToMaxLength": False},
                                                  "method": {"type": "lora", "vision": {"stage": "pretrain"}}}},
     ["spec.method.vision.stage"], True),
    ("encoder-lora-in-pretrain", "ftj", {"spec": {"model": {"vision": {"encoder": "hf://o/clip"}},
                                                  "dataset": {"format": "llava", "packToMaxLength": False},
                                                  "method": {"type": "full", "vision": {
                                                      "stage": "pretrain", "encoderLora": {"r": 8}}}}},
     ["spec.method.vision.encoderLora"], True),
    ("llava-zero3", "ftj", {"spec": {"model": {"vision": {"encoder": "hf://o/clip"}},
                                     "dataset": {"format": "llava", "packToMaxLength": False},
                                     "training": {"deepspeed": "zero3"}}}, ["spec.training.deepspeed"], True),
    ("llava-export-merge", "ftj", {"spec": {"model": {"vision": {"encoder": "hf://o/clip"}},
                                            "dataset": {"format": "llava", "packToMaxLength": False},
                                            "export": {"merge": True}}}, ["spec.export.merge"], True),
    ("convert-save-format-with-merge", "cvj", {"spec": {"saveFormat": "huggingface"}}, ["spec.saveFormat"], True),
    ("projector-depth", "ftj", {"spec": {"model": {"vision": {"encoder": "hf://o/clip", "projectorDepth": 0}},
                                         "dataset": {"format": "llava", "packToMaxLength": False}}},
     ["spec.model.vision.projectorDepth"], False),
    ("chat-bits", "chat", {"spec": {"bits": 3}}, ["spec.bits"], False),
    ("chat-engine", "chat", {"spec": {"engine": "tgi"}}, ["spec.engine"], False),
    ("chat-autoscaling", "chat", {"spec": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
     ["spec.autoscaling.minReplicas"], True),
    ("chat-adapter-both", "chat", {"spec": {"adapters": [{"name": "a", "uri": "s3://b/a", "fineTuneJobRef": "t"}]}},
     ["spec.adapters[0].fineTuneJobRef"], True),
    ("chat-adapter-duplicate", "chat", {"spec": {"adapters": [{"name": "a", "uri": "x"}, {"name": "a", "uri": "y"}]}},
     ["spec.adapters"], True),
    ("chat-vllm-block-on-builtin", "chat", {"spec": {"vllm": {"maxModelLen": 4096}}}, ["spec.vllm"], True),
    ("chat-vllm-prompt-template", "chat", {"spec": {"engine": "vllm", "promptTemplate": "qwen_chat"}},
     ["spec.promptTemplate"], True),
    ("chat-vllm-system", "chat", {"spec": {"engine": "vllm", "system": "be brief"}}, ["spec.system"], True),
    ("chat-vllm-system-template", "chat", {"spec": {"engine": "vllm", "systemTemplate": "alpaca"}},
     ["spec.systemTemplate"], True),
    ("chat-vllm-8-bits", "chat", {"spec": {"engine": "vllm", "bits": 8}}, ["spec.bits"], True),
    ("chat-vllm-stop-words", "chat", {"spec": {"engine": "vllm", "generation": {"stopWords": ["<end>"]}}},
     ["spec.generation.stopWords"], True),
    ("chat-vllm-lora-rank", "chat", {"spec": {"engine": "vllm", "vllm": {"maxLoraRank": 48}}},
     ["spec.vllm.maxLoraRank"], False),
    # A rule of the kind's root (it reads metadata.name): the apiserver evaluates it, celcheck walks specs only.
    ("chat-adapter-named-like-endpoint", "chat", {"spec": {"adapters": [{"name": "e", "uri": "s3://b/a"}]}},
     ["spec.adapters"], False),
    ("chat-top-p", "chat", {"spec": {"generation": {"topP": 0}}}, ["spec.generation.topP"], False),
    ("chat-temperature", "chat", {"spec": {"generation": {"temperature": 3}}}, ["spec.generation.temperature"], False),
]


def _doc(base: str, patch: dict) -> dict:
    doc = deep_merge(copy.deepcopy(BASES[base]), patch)
    if patch.get("spec", {}).get("output", 1) is None:
        doc["spec"].pop("output")
    return doc


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case_id,base,patch,paths,is_rule", CASES, ids=[c[0] for c in CASES])
def test_invalid_spec_names_each_bad_field(case_id, base, patch, paths, is_rule):
    with pytest.raises(ManifestError) as err:
        parse_manifest(_doc(base, patch), source="case.yaml")
    named = [p for path, _ in err.value.errors for p in path.split(", ")]
    for path in paths:
        assert path in named, f"{path} not in {err.value.errors}"
    assert str(err.value).startswith("case.yaml:")


@pytest.mark.parametrize("case_id,base,patch,paths,is_rule", [c for c in CASES if c[4]],
                         ids=[c[0] for c in CASES if c[4]])
def test_cel_rules_agree_with_python(case_id, base, patch, paths, is_rule):
    doc = _doc(base, patch)
    kind_model, spec_model = SPECS[base]
    spec_schema = openapi_schema(kind_model)["properties"]["spec"]
    cel = {msg for _, msg in celcheck.failures(celcheck.apply_defaults(doc["spec"], spec_schema), spec_schema)}
    python = {msg for _, msg in rule_errors(spec_model, doc["spec"], "spec.")}
    assert python, "the case must break a cross-field rule"
    assert cel == python


def test_valid_documents_pass_every_cel_rule():
    from pathlib import Path

    import yaml

    docs = [yaml.safe_load(p.read_text()) for p in sorted(Path(__file__).parents[1].glob("examples/*.yaml"))]
    docs = [d for d in docs if "kind" in d]
    docs += [catalog.get(n) for n in list(catalog.catalog())[::37]]
    kinds = {"FineTuneJob": FineTuneJob, "ConvertJob": ConvertJob, "ChatEndpoint": ChatEndpoint}
    for doc in docs:
        schema = openapi_schema(kinds[doc["kind"]])["properties"]["spec"]
        assert celcheck.failures(celcheck.apply_defaults(doc["spec"], schema), schema) == set(), doc["metadata"]


def test_acceptance_example_names_each_field():
    doc = _doc("ftj", {"spec": {"method": {"type": "qlora", "quantization": {"bits": 8}}, "training": {
        "deepspeed": "zero3_offload", "maxEpochs": 3, "maxSteps": 100}}})
    with pytest.raises(ManifestError) as err:
        parse_manifest(doc)
    text = str(err.value)
    for field in ("spec.method.quantization.bits", "spec.training.deepspeed", "spec.training.maxEpochs",
                  "spec.training.maxSteps"):
        assert field in text
