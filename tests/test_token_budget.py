"""Token-budget batching (dataset.maxPackedLength) and the profile mode: the throughput work of issue 28 must not
change what is learned."""

import json

import yaml
from safetensors.torch import load_file

from kubetune.api import DatasetSpec
from kubetune.data.pipeline import build

from .test_train import kubetune


def _rows():
    words = "alpha beta gamma delta sun moon tree river stone cloud".split()
    return [{"instruction": " ".join(words[(i + k) % 10] for k in range(6)), "input": "",
             "output": " ".join(words[(3 * i + k) % 10] for k in range(14))} for i in range(3)]


def _job(tmp_path, tiny_dir, data, max_length, accum, budget=None):
    dataset = {"uri": str(data), "format": "alpaca", "promptTemplate": "default", "maxLength": max_length}
    if budget:
        dataset["maxPackedLength"] = budget
    spec = {"model": {"uri": str(tiny_dir)},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "dataset": dataset,
            # SGD: its first step is lr × the gradient, so any change in how tokens are weighted shows (Adam's first
            # step is about ±lr whatever the gradient's scale).
            "training": {"maxSteps": 1, "accumulativeCounts": accum, "batchSize": 1, "precision": "fp32",
                         "gradientCheckpointing": False, "seed": 3, "warmupRatio": 0.0, "maxNorm": 1e6,
                         "optimizer": {"type": "SGD", "lr": 0.5, "betas": [0.0, 0.999]}, "logEverySteps": 1},
            "checkpoints": {"everySteps": 1, "keep": 1}}
    cfg = tmp_path / f"job-{accum}.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    return cfg


def test_one_budget_sequence_learns_what_the_same_samples_in_separate_micro_batches_learn(tmp_path, tiny_dir):
    from transformers import AutoTokenizer

    data = tmp_path / "rows.json"
    data.write_text(json.dumps(_rows()))
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    lengths = build(DatasetSpec(uri=str(data), format="alpaca", prompt_template="default", max_length=4096,
                                pack_to_max_length=False), tok, cache_root=tmp_path / "c0", log=lambda s: None
                    ).dataset["input_ids"]
    lengths = [len(x) for x in lengths]
    longest = max(lengths)
    assert min(lengths) * 2 > longest  # packed to the longest, every sample takes a sequence of its own
    env = {"KUBETUNE_CACHE": str(tmp_path / "c")}
    apart = _job(tmp_path, tiny_dir, data, longest, accum=3)
    together = _job(tmp_path, tiny_dir, data, longest, accum=1, budget=sum(lengths))
    out = kubetune("train", str(apart), "--work-dir", str(tmp_path / "apart"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 sequences of ≤" in out.stdout
    profile = tmp_path / "profile.json"
    out = kubetune("train", str(together), "--work-dir", str(tmp_path / "together"),
                   env={**env, "KUBETUNE_PROFILE": str(profile)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"1 sequences of ≤{sum(lengths)} tokens" in out.stdout

    a = load_file(str(tmp_path / "apart" / "iter_1" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "together" / "iter_1" / "model" / "adapter_model.safetensors"))
    moved = [k for k in a if "lora_B" in k and a[k].abs().max() > 0]
    assert moved, "the step changed no LoRA weight"
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-6 * max(1.0, float(a[key].abs().max())), key
    loss = [json.loads(line)["loss"] for w in ("apart", "together")
            for line in next((tmp_path / w).glob("*/vis_data/scalars.json")).read_text().splitlines()]
    assert abs(loss[0] - loss[1]) <= 1e-5 * loss[0]

    phases = json.loads(profile.read_text())
    assert phases["steps"] == 1 and phases["first_step_done_after"] > 0
    for name in ("start-up: tokenizer and data", "start-up: model", "data", "forward", "backward", "optimizer",
                 "checkpoint", "hooks"):
        assert phases["phases"][name]["seconds"] >= 0, name
    assert phases["phases"]["forward"]["count"] == 1
