"""XTuner's own Python configs (the 0.2.0 wheel's, .ci/xtuner-configs) read by `kubetune import-xtuner` as syntax
trees, never run: every one becomes a valid FineTuneJob or names, by line, what it cannot map; `kubetune train
CONFIG.py` trains from them; a config with its own Python map fn is refused at that line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api import parse_manifest
from kubetune.api.xtuner import import_config

from .test_preference_train import pair
from .test_train import alpaca_rows

ROOT = Path(__file__).resolve().parents[1]
# Why a config may be refused: kinds kubetune does not import yet, each named in the message.
KNOWN_GAPS = ("type=InternVL_V1_5", "type=MOSSSFTDataset", "type=build_packed_dataset", "type=process_ms_dataset",
              "not a training config", "framework = \"huggingface\"", "do_dataset_tokenization=False",
              "different image folders", "freeze_visual_encoder=False", "trains from LLaVADataset",
              "encode_special_tokens=True", "dataset.name", "dataset.data_dir", "is_reference=True", "val_dataloader",
              "val_evaluator", "val_cfg", "test_dataloader", "test_evaluator", "test_cfg", "phases by_epoch=True",
              "a setting the import does not map", "another tokenizer than the model")


@pytest.fixture(scope="module")
def configs() -> Path:
    out = subprocess.run([str(ROOT / ".ci" / "xtuner-configs")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def kubetune(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**os.environ, **(env or {})})


def test_every_xtuner_config_becomes_a_job_or_names_what_it_cannot_map(configs):
    files = sorted(p for p in configs.rglob("*.py") if p.name != "__init__.py")
    assert len(files) == 593
    imported, refused = [], {}
    for path in files:
        result = import_config(path)  # never raises on a real config: problems are data
        if result.problems:
            refused[path.name] = result.problems
            continue
        parse_manifest(result.manifest, source=str(path))  # a valid FineTuneJob
        imported.append(path)
    assert len(imported) == 477, len(imported)
    for name, problems in refused.items():
        for line, message in problems:
            assert any(gap in message for gap in KNOWN_GAPS), (name, line, message)
    print(f"{len(imported)} of {len(files)} XTuner configs import; {len(refused)} name what they cannot map")


def test_an_imported_config_keeps_xtuners_settings(configs):
    path = configs / "internlm" / "internlm2_chat_7b" / "internlm2_chat_7b_qlora_alpaca_e3.py"
    spec = import_config(path).manifest["spec"]
    assert spec["model"] == {"uri": "hf://internlm/internlm2-chat-7b", "trustRemoteCode": True, "dtype": "fp16"}
    assert spec["method"] == {"type": "qlora", "lora": {"r": 64, "alpha": 16, "dropout": 0.1},
                              "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True, "computeDtype": "fp16"}}
    assert {k: spec["dataset"][k] for k in ("uri", "format", "promptTemplate", "maxLength", "packToMaxLength")} == {
        "uri": "hf://tatsu-lab/alpaca", "format": "alpaca", "promptTemplate": "internlm2_chat", "maxLength": 2048,
        "packToMaxLength": True}
    assert "system" not in spec["dataset"]  # XTuner's SYSTEM is its evaluation hook's, never the training data's
    training = spec["training"]
    assert (training["batchSize"], training["accumulativeCounts"], training["maxEpochs"], training["precision"]) == \
        (1, 16, 3, "fp16")
    assert training["optimizer"] == {"type": "AdamW", "lr": 2e-4, "betas": [0.9, 0.999], "weightDecay": 0}
    assert spec["checkpoints"] == {"everySteps": 500, "keep": 2}
    assert spec["evaluation"]["everySteps"] == 500 and len(spec["evaluation"]["inputs"]) == 2
    assert spec["evaluation"]["systemTemplate"] == "alpaca"  # EvaluateChatHook(system=SYSTEM)
    # `accumulative_counts *= sequence_parallel_size` is evaluated, as XTuner runs it.
    sp = import_config(configs / "internlm" / "internlm2_7b" /
                       "internlm2_7b_full_finetune_custom_dataset_e1_sequence_parallel_4.py").manifest["spec"]
    assert sp["training"]["sequenceParallelSize"] == 4 and sp["training"]["accumulativeCounts"] == 4
    assert sp["training"]["deepspeed"] == "zero2"


def test_a_config_with_its_own_map_fn_is_refused_at_that_line(configs, tmp_path):
    source = (configs / "qwen" / "qwen1_5" / "qwen1_5_0_5b_chat" / "qwen1_5_0_5b_chat_full_alpaca_e3.py").read_text()
    assert "dataset_map_fn=alpaca_map_fn" in source
    lines = source.splitlines()
    cut = next(i for i, line in enumerate(lines) if line.startswith("# Model")) + 1
    mine = lines[:cut] + ["def my_map_fn(example):", "    return {'conversation': []}", ""] + lines[cut:]
    config = tmp_path / "mine.py"
    config.write_text("\n".join(mine).replace("dataset_map_fn=alpaca_map_fn", "dataset_map_fn=my_map_fn"))
    want = f"{config}:{cut + 1}: dataset_map_fn: my_map_fn is Python defined in the config"
    for args in (["import-xtuner", str(config)], ["train", str(config)]):
        out = kubetune(*args)
        assert out.returncode == 2 and want in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    # --allow-partial writes the rest for the user to finish, still naming what is missing.
    partial = kubetune("import-xtuner", str(config), "--allow-partial", "-o", str(tmp_path / "out.yaml"))
    assert partial.returncode == 0 and want in partial.stderr and "not mapped (--allow-partial)" in partial.stderr
    assert "format" not in yaml.safe_load((tmp_path / "out.yaml").read_text())["spec"]["dataset"]
    not_python = tmp_path / "broken.py"
    not_python.write_text("model = dict(\n")
    out = kubetune("import-xtuner", str(not_python))
    assert out.returncode == 2 and f"{not_python}:" in out.stderr and "not Python" in out.stderr


def test_import_xtuner_writes_the_manifest_with_overrides(configs, tmp_path):
    config = configs / "custom_dataset" / "sft" / "qwen" / "qwen1_5_0_5b_chat_qlora_custom_sft_e1.py"
    out = kubetune("import-xtuner", str(config), "-o", str(tmp_path / "job.yaml"), "--cfg-options",
                   "training.optimizer.lr=1e-4")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = yaml.safe_load((tmp_path / "job.yaml").read_text())
    assert doc["spec"]["training"]["optimizer"]["lr"] == 1e-4 and doc["spec"]["dataset"]["format"] == "openai"
    assert doc["spec"]["dataset"]["uri"] == "/path/to/json/file.json"
    assert parse_manifest(doc).metadata.name == "qwen1-5-0-5b-chat-qlora-custom-sft-e1"


WORDS = ["the sea", "Paris", "the moon", "a river", "music", "snow", "bread", "a kite"]
# Two ranks, no seed in the config: the ranks must draw one seed between them (they split each sequence).
SP2 = ["training.sequenceParallelSize=2", "training.accumulativeCounts=1"]
# A dozen kinds of XTuner config (relative to xtuner/configs), each with rows of the layout its map fn reads and only
# what the tiny model and this CPU need overridden.
DOZEN = [
    ("internlm/internlm2_chat_1_8b/internlm2_chat_1_8b_qlora_alpaca_e3.py", "alpaca", []),  # the usage document's
    ("qwen/qwen1_5/qwen1_5_0_5b_chat/qwen1_5_0_5b_chat_full_alpaca_e3.py", "alpaca", []),
    ("llama/llama2_7b/llama2_7b_qlora_oasst1_e3.py", "oasst1", []),
    ("llama/llama2_7b_chat/llama2_7b_chat_qlora_code_alpaca_e3.py", "code_alpaca", []),
    ("custom_dataset/sft/qwen/qwen1_5_0_5b_chat_qlora_custom_sft_e1.py", "openai", []),
    ("custom_dataset/pretrain/llama/llama2_70b_full_custom_pretrain_e1.py", "text", []),
    ("internlm/internlm2_7b/internlm2_7b_full_finetune_custom_dataset_e1_sequence_parallel_4.py", "xtuner", SP2),
    ("dpo/internlm/internlm2_chat_1_8b_dpo_full.py", "pairs", ["dataset.format=preference",
                                                             "dataset.maxResponseLength=32"]),
    ("dpo/llama/llama3_8b_instruct_dpo_qlora_varlenattn.py", "pairs", ["dataset.format=preference"]),
    ("orpo/internlm/internlm2_chat_1_8b_orpo_full_varlenattn_jsonl_dataset.py", "pairs", ["dataset.concat=[]"]),
    ("reward_model/internlm/internlm2_chat_1_8b_reward_full_varlenattn_ultrafeedback.py", "pairs",
     ["dataset.format=preference"]),
    ("llava/internlm2_chat_1_8b_clip_vit_large_p14_336/pretrain/"
     "llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain.py", "llava", []),
]


def _rows(kind: str) -> list[dict]:
    if kind == "alpaca":
        return alpaca_rows(12)
    if kind == "pairs":
        return [pair(t, i) for i, t in enumerate(WORDS)]
    return [{"oasst1": {"text": f"### Human: What is {w}? ### Assistant: {w} is a word."},
             "code_alpaca": {"prompt": f"Print {w}.", "completion": f"print({w!r})"},
             "openai": {"messages": [{"role": "user", "content": f"What is {w}?"},
                                     {"role": "assistant", "content": f"{w} is a word."}]},
             "text": {"text": f"{w} is a word people use. " * 3},
             "xtuner": {"conversation": [{"input": f"What is {w}?", "output": f"{w} is a word."}]}}[kind]
            for w in WORDS]


@pytest.mark.parametrize("relative, data, overrides", DOZEN, ids=[Path(r).stem for r, _, _ in DOZEN])
def test_kubetune_train_runs_an_xtuner_config(configs, tiny_dir, tmp_path, relative, data, overrides):
    args = ["--no-export", "--cfg-options", "model.trustRemoteCode=false", "training.maxEpochs=null",
            "training.maxSteps=2", "training.precision=fp32", "model.dtype=fp32", "checkpoints.everySteps=2",
            "evaluation.everySteps=100", "evaluation.inputs=[]", "dataset.numProc=1"]
    env = None
    if data == "llava":
        from . import visionkit

        world = visionkit.build_world(tmp_path / "world", rows=8)
        args += [f"model.uri={world['llm']}", f"model.vision.encoder={world['clip']}",
                 f"dataset.uri={world['data']}", f"dataset.imageFolder={world['images']}", "dataset.maxLength=128",
                 "training.batchSize=2"]
    else:
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(data)))
        args += [f"model.uri={tiny_dir}", f"dataset.uri={tmp_path / 'data.jsonl'}", "dataset.maxLength=64"]
    if overrides is SP2:
        args = ["--deepspeed", "zero2", *args]
        env = {"NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}
    out = kubetune("train", str(configs / relative), *args, *overrides, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # The work dir is named as XTuner names it: after the config file's stem.
    work = tmp_path / "work_dirs" / Path(relative).stem
    assert (work / "iter_2").is_dir()
    if relative == DOZEN[0][0]:  # the usage document's next command, typed as for XTuner's checkpoint: iter_2.pth
        out = kubetune("convert", "pth_to_hf", str(configs / relative), str(work / "iter_2.pth"),
                       str(tmp_path / "hf"), "--cfg-options", f"model.uri={tiny_dir}", "model.trustRemoteCode=false",
                       cwd=tmp_path)
        assert out.returncode == 0 and (tmp_path / "hf" / "adapter_model.safetensors").is_file(), out.stderr[-2000:]


def test_the_usage_documents_layout_trains_with_paths_from_the_working_directory(configs, tiny_dir, tmp_path):
    """`train/x.py` naming `./models/...` and `./data/...`, run from the folder above it, as XTuner resolves them;
    `import-xtuner -o` into another folder writes the paths relative to the manifest, which then trains too."""
    import shutil

    source = (configs / DOZEN[0][0]).read_text()
    source = source.replace('pretrained_model_name_or_path = "internlm/internlm2-chat-1_8b"',
                            'pretrained_model_name_or_path = "./models/tiny"')
    source = source.replace('dataset=dict(type=load_dataset, path=alpaca_en_path)',
                            'dataset=dict(type=load_dataset, path="json", data_files="./data/alpaca.json")')
    assert "./models/tiny" in source and "./data/alpaca.json" in source
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.py").write_text(source)
    shutil.copytree(tiny_dir, tmp_path / "models" / "tiny")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "alpaca.json").write_text(json.dumps(alpaca_rows(8)))
    small = ["--cfg-options", "model.trustRemoteCode=false", "training.maxEpochs=1", "training.precision=fp32",
             "model.dtype=fp32", "evaluation.inputs=[]", "dataset.numProc=1", "dataset.maxLength=64",
             "dataset.packToMaxLength=false"]
    out = kubetune("train", "train/x.py", "--no-export", *small, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # One epoch of 8 micro-batches (XTuner's iterations), accumulation 16: one optimizer step, iter_8 at the end.
    assert sorted(p.name for p in (tmp_path / "work_dirs" / "x").glob("iter_*")) == ["iter_8"]
    # The usage document's next commands, with XTuner's checkpoint names: epoch_1.pth, iter_8.pth.
    out = kubetune("convert", "pth_to_hf", "train/x.py", "work_dirs/x/epoch_1.pth", "hf", *small, cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "hf" / "adapter_model.safetensors").is_file(), out.stderr[-2000:]
    out = kubetune("test", "train/x.py", "--checkpoint", "work_dirs/x/iter_8.pth", "--max-samples", "2", *small,
                   cwd=tmp_path)
    assert out.returncode == 0 and "perplexity" in out.stdout, out.stderr[-2000:]
    out = kubetune("import-xtuner", "train/x.py", "-o", "manifests/job.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    spec = yaml.safe_load((tmp_path / "manifests" / "job.yaml").read_text())["spec"]
    assert (spec["model"]["uri"], spec["dataset"]["uri"]) == ("../models/tiny", "../data/alpaca.json")
    out = kubetune("validate", "manifests/job.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
