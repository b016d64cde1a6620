"""XTuner's own Python configs (the 0.2.0 wheel's, .ci/xtuner-configs) read by `kubetune import-xtuner` as syntax
trees, never run: every one becomes a valid FineTuneJob or names, by line, what it cannot map; `kubetune train
CONFIG.py` trains from them; a config with its own Python map fn is refused at that line."""

from __future__ import annotations

import json
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
              "different image folders", "freeze_visual_encoder=False", "trains from LLaVADataset")


@pytest.fixture(scope="module")
def configs() -> Path:
    out = subprocess.run([str(ROOT / ".ci" / "xtuner-configs")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def kubetune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


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
    assert len(imported) >= 529, len(imported)
    for name, problems in refused.items():
        for line, message in problems:
            assert any(gap in message for gap in KNOWN_GAPS), (name, line, message)
    print(f"{len(imported)} of {len(files)} XTuner configs import; {len(refused)} name what they cannot map")


def test_an_imported_config_keeps_xtuners_settings(configs):
    path = configs / "internlm" / "internlm2_chat_7b" / "internlm2_chat_7b_qlora_alpaca_e3.py"
    spec = import_config(path).manifest["spec"]
    assert spec["model"] == {"uri": "hf://internlm/internlm2-chat-7b", "trustRemoteCode": True, "dtype": "fp16"}
    assert spec["method"] == {"type": "qlora", "lora": {"r": 64, "alpha": 16, "dropout": 0.1},
                              "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True}}
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


@pytest.mark.parametrize("relative, data, overrides", [
    ("qwen/qwen1_5/qwen1_5_0_5b_chat/qwen1_5_0_5b_chat_full_alpaca_e3.py", "alpaca", []),
    ("dpo/internlm/internlm2_chat_1_8b_dpo_full.py", "pairs", ["dataset.format=preference",
                                                             "dataset.maxResponseLength=32"]),
], ids=["sft-full-alpaca", "dpo-full"])
def test_kubetune_train_runs_an_xtuner_config(configs, tiny_dir, tmp_path, relative, data, overrides):
    rows = [pair(t, i) for i, t in enumerate(["the sea", "Paris", "the moon", "a river", "music", "snow"])] \
        if data == "pairs" else alpaca_rows(12)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--no-export", "--cfg-options", f"model.uri={tiny_dir}", f"dataset.uri={tmp_path / 'data.jsonl'}",
            "model.trustRemoteCode=false", "training.maxEpochs=null", "training.maxSteps=2", "training.precision=fp32",
            "model.dtype=fp32", "dataset.maxLength=64", "checkpoints.everySteps=2", "evaluation.everySteps=100",
            "evaluation.inputs=[]", "dataset.numProc=1", *overrides]
    out = kubetune("train", str(configs / relative), *args, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    # The work dir is named as XTuner names it: after the config file's stem.
    assert (tmp_path / "work_dirs" / Path(relative).stem / "iter_2").is_dir()
