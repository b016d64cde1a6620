"""Every example and every predefined config is a valid object; defaults and baseConfig resolve as documented."""

import json

import pytest
import yaml

from kubetune.api import (ChatEndpoint, ConvertJob, FineTuneJob, FineTuneJobSpec, ManifestError, catalog,
                          load_manifest, parse_manifest)
from kubetune.api.loader import merge_base_config

from .conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_there_are_examples_of_every_kind():
    kinds = {yaml.safe_load(p.read_text()).get("kind", "FineTuneJob") for p in EXAMPLES}
    assert kinds == {"FineTuneJob", "ConvertJob", "ChatEndpoint"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    obj = load_manifest(path)
    # Round trip: what we write back loads to the same object.
    assert parse_manifest(obj.to_dict()).to_dict() == obj.to_dict()


def test_every_catalogue_entry_validates():
    entries = catalog.catalog()
    assert len(entries) > 1000
    for name, manifest in entries.items():
        job = parse_manifest(manifest, source=name)
        assert isinstance(job, FineTuneJob)
        # kubetune's own names say the method; a LLaVA pretrain stage trains the projector alone: its name carries
        # the stage. (XTuner's names are XTuner's: POLAR_1_8B_full_varlenattn_custom_dataset trains a reward model.)
        own = name not in catalog.xtuner_table()
        assert not own or job.spec.method.type.value in name or job.spec.method.stage == "pretrain"


def test_catalogue_lists_the_seed_llava_configs():
    for name in ("llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain",
                 "llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune"):
        job = parse_manifest(catalog.get(name), source=name)
        assert job.spec.model.vision.encoder == "hf://openai/clip-vit-large-patch14-336"
        assert job.spec.dataset.format.value == "llava" and not job.spec.dataset.pack_to_max_length
    pretrain, finetune = (parse_manifest(catalog.get(n)).spec for n in catalog.names("llava_internlm2_chat_1_8b"))
    assert pretrain.method.stage == "pretrain" and pretrain.method.type.value == "full"
    assert finetune.method.stage == "finetune" and finetune.method.vision.encoder_lora.r == 64
    assert finetune.dataset.pad_image_to_square and finetune.dataset.group_by_modality_length


def test_catalogue_covers_the_xtuner_families_and_datasets():
    names = list(catalog.catalog())
    for family in ("internlm2_chat_7b", "internlm2_5_chat_7b", "llama2_7b", "llama3_8b_instruct", "qwen1_5_7b_chat",
                   "qwen2_7b_instruct", "qwen2_5_7b_instruct", "mistral_7b", "mixtral_8x7b_instruct", "gemma_2b",
                   "chatglm3_6b", "baichuan2_7b_chat", "deepseek_coder_6_7b_instruct", "yi_6b",
                   "phi3_mini_4k_instruct"):
        assert any(n.startswith(family + "_") for n in names), family
    for dataset in ("alpaca", "alpaca_zh", "alpaca_enzh", "oasst1", "code_alpaca", "arxiv_gentitle", "colorist",
                    "lawyer", "medical", "sql", "tiny_codes", "open_platypus", "openorca", "wizardlm"):
        assert any(f"_{dataset}_e" in n for n in names), dataset
    for method in ("full", "lora", "qlora"):
        assert any(f"_{method}_" in n for n in names)


def test_catalogue_entry_contents():
    job = parse_manifest(catalog.get("internlm2_chat_1_8b_qlora_alpaca_e3"))
    spec = job.spec
    assert spec.model.uri == "hf://internlm/internlm2-chat-1_8b"
    assert spec.model.trust_remote_code is True
    # XTuner's config names no target modules: LoRA goes on every linear layer but the head (kubetune's []).
    assert spec.method.lora.target_modules == [] and spec.method.lora.r == 64 and spec.method.lora.alpha == 16
    assert (spec.method.quantization.bits, spec.method.quantization.type) == (4, "nf4")
    assert spec.dataset.prompt_template == "internlm2_chat"
    # XTuner's alpaca configs use SYSTEM in their EvaluateChatHook only: no system prompt in the training rows.
    assert spec.dataset.system_template is None and spec.dataset.system is None
    assert spec.evaluation.system_template == "alpaca" and not spec.evaluation.greedy
    assert spec.training.max_epochs == 3 and spec.training.optimizer.lr == 2e-4
    full = parse_manifest(catalog.get("internlm2_chat_1_8b_full_alpaca_e3")).spec
    assert full.method.lora is None and full.training.optimizer.lr == 2e-5
    enzh = parse_manifest(catalog.get("qwen2_5_7b_instruct_lora_alpaca_enzh_e3")).spec
    assert enzh.dataset.concat[0].format == "alpaca_zh"


def test_defaults_are_filled_once():
    spec = FineTuneJobSpec.model_validate({"model": {"uri": "m"}, "dataset": {"uri": "d.json"},
                                           "method": {"type": "qlora"}})
    assert spec.method.lora.r == 64 and spec.method.lora.alpha == 16
    assert spec.method.quantization.bits == 4 and spec.method.quantization.double_quant
    assert spec.training.max_epochs == 3 and spec.training.max_steps is None
    assert spec.checkpoints.every_steps == 500
    assert spec.dataset.prompt_template == "auto" and spec.dataset.max_length == 2048
    steps = FineTuneJobSpec.model_validate({"model": {"uri": "m"}, "dataset": {"uri": "d"},
                                            "training": {"maxSteps": 7}, "checkpoints": {"byEpoch": True}})
    assert steps.training.max_epochs is None and steps.training.max_steps == 7
    assert steps.checkpoints.every_steps is None


def test_bare_spec_and_json(tmp_path):
    spec = {"model": {"uri": "hf://a/b"}, "dataset": {"uri": "file:///d.jsonl", "format": "openai"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    for name in ("spec.json", "spec.yaml"):
        job = load_manifest(tmp_path / name)
        assert isinstance(job, FineTuneJob) and job.spec.dataset.format == "openai"
    conv = {"operation": "split", "source": {"checkpointUri": "/m"}, "output": {"uri": "/o"}}
    (tmp_path / "conv.yaml").write_text(yaml.safe_dump(conv))
    assert isinstance(load_manifest(tmp_path / "conv.yaml", kind="ConvertJob"), ConvertJob)


def test_yaml_float_spelling_like_kubectl(tmp_path):
    (tmp_path / "s.yaml").write_text("model: {uri: m}\ndataset: {uri: d}\ntraining: {optimizer: {lr: 1e-4}}\n")
    assert load_manifest(tmp_path / "s.yaml").spec.training.optimizer.lr == 1e-4


def test_base_config_is_overridden_field_by_field():
    job = load_manifest(REPO / "examples" / "finetune-baseconfig.yaml")
    spec = job.spec
    assert spec.base_config == "qwen2_5_1_5b_instruct_qlora_sql_e3"
    assert spec.model.uri == "hf://Qwen/Qwen2.5-1.5B-Instruct"      # from the base
    assert spec.dataset.uri == "pvc://datasets/sql/train.jsonl"      # overridden
    assert spec.dataset.format == "sql"                               # kept from the base
    assert spec.training.max_steps == 2000 and spec.training.max_epochs is None  # exclusive pair replaced


def test_switching_method_drops_the_base_method_block():
    merged = merge_base_config({"baseConfig": "llama2_7b_qlora_alpaca_e3", "method": {"type": "full"}})
    assert merged["method"] == {"type": "full"}
    job = parse_manifest({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                          "spec": {"baseConfig": "llama2_7b_qlora_alpaca_e3", "method": {"type": "full"}}})
    assert job.spec.method.quantization is None


def test_cfg_options_override_with_validation():
    job = parse_manifest(catalog.get("internlm2_chat_1_8b_qlora_alpaca_e3"),
                         overrides=["training.optimizer.lr=1e-4", "method.lora.targetModules=[wqkv,wo]",
                                    "spec.dataset.maxLength=4096", "training.maxSteps=10",
                                    "resources.nodeSelector.gpu=h100"])
    spec = job.spec
    assert spec.training.optimizer.lr == 1e-4
    assert spec.method.lora.target_modules == ["wqkv", "wo"]
    assert spec.dataset.max_length == 4096
    assert spec.training.max_steps == 10 and spec.training.max_epochs is None
    assert spec.resources.node_selector == {"gpu": "h100"}
    with pytest.raises(ManifestError) as err:
        parse_manifest(catalog.get("internlm2_chat_1_8b_qlora_alpaca_e3"), overrides=["training.optimizer.lr=-1"])
    assert err.value.errors[0][0] == "spec.training.optimizer.lr"


def test_cfg_options_switching_method_drops_the_blocks_that_no_longer_apply():
    qlora = catalog.get("internlm2_chat_1_8b_qlora_alpaca_e3")
    full = parse_manifest(qlora, overrides=["method.type=full"]).spec.method
    assert full.type.value == "full" and full.lora is None and full.quantization is None
    lora = parse_manifest(qlora, overrides=["method.type=lora"]).spec.method
    assert lora.lora.r == 64 and lora.quantization is None
    # Asked for on the same command line: kept, so the contradiction is reported, naming what to remove.
    with pytest.raises(ManifestError) as err:
        parse_manifest(qlora, overrides=["method.type=full", "method.lora.r=4"])
    assert "spec.method.lora" in err.value.errors[0][0] and "remove method.lora" in err.value.errors[0][1]


def test_chat_endpoint_loads():
    obj = load_manifest(REPO / "examples" / "chat-adapters-vllm.yaml")
    assert isinstance(obj, ChatEndpoint)
    assert [a.name for a in obj.spec.adapters] == ["sql", "emo"]
    assert obj.spec.generation.top_p == 0.75


def test_status_models_accept_what_the_operator_writes():
    job = parse_manifest({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x", "uid": "u-1"},
        "spec": {"model": {"uri": "m"}, "dataset": {"uri": "d"}},
        "status": {"phase": "Running", "restarts": 1, "conditions": [
            {"type": "Running", "status": "True", "reason": "PodsRunning", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "progress": {"step": 3, "totalSteps": 9, "stepDisplay": "3/9", "loss": 1.5}}})
    assert job.status.phase == "Running" and job.status.progress.total_steps == 9
    assert job.metadata.model_extra == {"uid": "u-1"}


def test_every_field_documents_itself():
    from kubetune.api.base import KubeModel

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    models = set(subclasses(KubeModel))
    assert len(models) > 25
    for model in models:
        assert model.__doc__, model
        for name, info in model.model_fields.items():
            assert info.description and len(info.description) > 3, f"{model.__name__}.{name} has no description"
