"""Preference training end to end on the tiny model (CPU): data encoding, cutting and packing of pairs; DPO (LoRA,
reference = adapter disabled; full, reference = frozen copy), ORPO and a reward model learn a synthetic preference
set; DPO resumes exactly and runs under DeepSpeed ZeRO-2 with two processes like the plain run; the reward model
exports to a plain transformers sequence classifier that ranks held-out pairs better than before training;
check-custom-dataset shows pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kubetune.api import parse_manifest
from kubetune.data.preference import PAIR_FORMATS, encode_pairs, pack_pairs

from .test_train import kubetune
from .test_train_parallel import TWO, assert_same_run

TOPICS = ["the sea", "a red apple", "Paris", "the moon", "a river", "music", "a tree", "bread", "the sun", "snow",
          "a cat", "a book", "winter", "a bridge", "coffee", "a mountain", "rain", "a garden", "the wind", "a clock"]
HELD_OUT = ["a lamp", "the desert", "a violin", "a harbour", "gold", "a forest", "a candle", "the sky"]
BAD = ["I refuse to answer that.", "No idea, go away.", "Why would I know?", "That is not my problem."]


def pair(topic: str, i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"What is {topic}?"}],
            "chosen": [{"role": "assistant", "content": f"{topic[0].upper() + topic[1:]} is a thing people talk "
                                                        f"about."}],
            "rejected": [{"role": "assistant", "content": BAD[i % len(BAD)]}]}


def write_job(tmp_path: Path, tiny_dir: Path, method: dict, **training) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(pair(t, i)) + "\n" for i, t in enumerate(TOPICS)))
    spec = {"model": {"uri": str(tiny_dir)}, "method": method,
            "dataset": {"uri": str(data), "format": "preference", "promptTemplate": "default", "maxLength": 64,
                        "packToMaxLength": False},
            "training": {"maxSteps": 30, "batchSize": 2, "accumulativeCounts": 1, "precision": "fp32",
                         "gradientCheckpointing": False, "seed": 3, "warmupRatio": 0.0, "logEverySteps": 1,
                         "optimizer": {"lr": 2e-3}, **training},
            "checkpoints": {"everySteps": 10, "keep": -1}}
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    return cfg


def train_ok(cfg: Path, work: Path, *args: str, env: dict | None = None):
    out = kubetune("train", str(cfg), "--work-dir", str(work), *args, env={"KUBETUNE_CACHE": str(work / "c"),
                                                                           **(env or {})})
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    return out


def scalars(work: Path) -> list[dict]:
    path = sorted(work.glob("*/vis_data/scalars.json"))[-1]
    return [json.loads(line) for line in path.read_text().splitlines()]


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


LORA = {"r": 8, "alpha": 16, "dropout": 0.0}


def test_dpo_with_lora_raises_reward_accuracy_and_margin(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, {"type": "dpo", "lora": LORA, "dpo": {"beta": 0.1}})
    out = train_ok(cfg, tmp_path / "w")
    assert "trainable (dpo, lora)" in out.stdout and "reward_acc" in out.stdout
    rows = scalars(tmp_path / "w")
    # Step 1: the adapter starts at zero, so policy = reference: no margin yet.
    assert rows[0]["reward_margin"] == pytest.approx(0, abs=1e-6) and rows[0]["reward_acc"] == 0
    assert mean(rows[-5:], "reward_acc") >= 0.9 and mean(rows[-5:], "reward_margin") > 0.05
    assert mean(rows[-5:], "loss") < rows[0]["loss"]


def test_full_dpo_keeps_a_frozen_reference_and_kto_pair_learns(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, {"type": "dpo", "parameters": "full", "dpo": {"lossType": "kto_pair"}},
                    maxSteps=20, optimizer={"lr": 5e-4})
    out = train_ok(cfg, tmp_path / "w")
    assert "trainable (dpo, full)" in out.stdout
    rows = scalars(tmp_path / "w")
    assert rows[0]["reward_margin"] == pytest.approx(0, abs=1e-6)
    assert mean(rows[-5:], "reward_margin") > mean(rows[:3], "reward_margin")
    assert mean(rows[-5:], "reward_acc") >= 0.8


def test_orpo_lowers_the_nll_and_raises_the_log_odds(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, {"type": "orpo", "lora": LORA, "orpo": {"beta": 0.5}})
    train_ok(cfg, tmp_path / "w")
    rows = scalars(tmp_path / "w")
    assert mean(rows[-5:], "nll_loss") < mean(rows[:3], "nll_loss")
    assert mean(rows[-5:], "log_odds_chosen") > mean(rows[:3], "log_odds_chosen")


def test_dpo_resumes_exactly(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, {"type": "dpo", "lora": LORA}, maxSteps=8)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train_ok(cfg, straight, "--cfg-options", "checkpoints.everySteps=4")
    crash = kubetune("train", str(cfg), "--work-dir", str(broken), "--cfg-options", "checkpoints.everySteps=4",
                     env={"KUBETUNE_CACHE": str(broken / "c"), "KUBETUNE_STOP_AFTER_STEP": "4"})
    assert crash.returncode != 0 and (broken / "iter_4").is_dir()
    out = train_ok(cfg, broken, "--resume", "auto", "--cfg-options", "checkpoints.everySteps=4")
    assert "resumed from" in out.stdout
    assert_same_run(straight, broken, 8, atol=1e-6)


def test_dpo_under_zero2_with_two_processes_matches_the_plain_run(tmp_path, tiny_dir):
    """Two pairs per step both ways: 1 process x 2 micro-batches of 1, or 2 ZeRO-2 ranks x 1."""
    cfg = write_job(tmp_path, tiny_dir, {"type": "dpo", "lora": LORA}, maxSteps=4, batchSize=1)
    plain, zero2 = tmp_path / "plain", tmp_path / "zero2"
    train_ok(cfg, plain, "--cfg-options", "training.accumulativeCounts=2")
    out = train_ok(cfg, zero2, "--deepspeed", "zero2", env=TWO)
    assert "DeepSpeed ZeRO-2" in out.stdout
    assert_same_run(plain, zero2, 4, atol=1e-5)
    assert abs(scalars(plain)[-1]["reward_margin"] - scalars(zero2)[-1]["reward_margin"]) < 1e-5


@pytest.mark.parametrize("method", [{"type": "dpo", "lora": LORA}, {"type": "orpo", "parameters": "full"}],
                         ids=["dpo-lora", "orpo-full"])
def test_sequence_parallel_preference_matches_the_plain_run(tmp_path, tiny_dir, method):
    """XTuner's *_varlenattn preference configs expose sequence parallelism: two ranks each score half of every
    packed pair, their per-sample sums are added before the loss, and the run equals one process (packed pairs,
    varlen attention, as those configs train)."""
    cfg = write_job(tmp_path, tiny_dir, method, maxSteps=3, batchSize=1)
    packed = ["dataset.packToMaxLength=true", "dataset.varlenAttention=true", "dataset.maxLength=96"]
    plain, split = tmp_path / "plain", tmp_path / "sp"
    train_ok(cfg, plain, "--cfg-options", *packed)
    out = train_ok(cfg, split, "--deepspeed", "zero2", "--cfg-options", *packed, "training.sequenceParallelSize=2",
                   env=TWO)
    assert "sequence parallel x2" in out.stdout
    key = "reward_margin" if method["type"] == "dpo" else "log_odds_ratio"
    for a, b in zip(scalars(plain), scalars(split), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a[key] - b[key]) < 1e-5, (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4, (a, b)
    # The attention is summed in another order over two ranks: gradients agree to ~1e-6, and Adam, which divides
    # each by its own running magnitude, turns that into weights within a few % of one step (lr 2e-3).
    mine, theirs = ({k: v for f in sorted((w / "iter_3" / "model").glob("*.safetensors")) for k, v in
                     load_file(str(f)).items()} for w in (plain, split))
    assert mine and mine.keys() == theirs.keys()
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) < 2e-4


def _score(model, tokenizer, prompt: str, response: str, token: int) -> float:
    ids = tokenizer(f"{prompt}{response}", add_special_tokens=False)["input_ids"] + [token]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_reward_model_ranks_held_out_pairs_better_after_training(tmp_path, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from kubetune.train.reward import build_reward_model

    cfg = write_job(tmp_path, tiny_dir, {"type": "reward", "lora": LORA, "reward": {"lossType": "focal"}},
                    maxSteps=30)
    train_ok(cfg, tmp_path / "w")
    rows = scalars(tmp_path / "w")
    assert mean(rows[-5:], "reward_acc") >= 0.9
    out = kubetune("convert", "pth_to_hf", str(cfg), str(tmp_path / "w" / "iter_30"), str(tmp_path / "rm"),
                   "--fp32")
    assert out.returncode == 0, out.stderr[-2000:]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    token = json.loads((tmp_path / "rm" / "reward_config.json").read_text())["reward_token_id"]
    assert token == tokenizer.eos_token_id

    # The prompts as the template renders them (promptTemplate default), scored by plain transformers.
    def accuracy(score) -> float:
        wins = [score(f"### Instruction:\nWhat is {t}?\n\n### Response:\n", f"{t[0].upper() + t[1:]} is a thing "
                      f"people talk about.") > score(f"### Instruction:\nWhat is {t}?\n\n### Response:\n", BAD[i % 4])
                for i, t in enumerate(HELD_OUT)]
        return sum(wins) / len(wins)

    exported = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    after = accuracy(lambda p, r: _score(exported, tokenizer, p, r, token))
    untrained = build_reward_model(AutoModelForCausalLM.from_pretrained(str(tiny_dir)), token, seed=3).eval()

    class Wrap:  # the untrained head on the base model, read like the exported classifier
        def __call__(self, input_ids):
            return type("Out", (), {"logits": untrained(input_ids=input_ids,
                                                        position_ids=torch.arange(input_ids.shape[1])[None])[:, -1:]})

    before = accuracy(lambda p, r: _score(Wrap(), tokenizer, p, r, token))
    assert after >= 0.75 and after > before, (before, after)


def test_pairs_are_cut_never_dropped_silently_and_packed_whole(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    long_answer = "word " * 200
    rows = [pair("the sea", 0), {**pair("snow", 1), "chosen": [{"role": "assistant", "content": long_answer}]},
            {**pair("rain", 2), "prompt": [{"role": "user", "content": "Tell me " + "more " * 100}]},
            {**pair("rain", 3), "rejected": [{"role": "assistant", "content": ""}]}]
    spec = parse_manifest({"model": {"uri": "x"}, "method": {"type": "dpo"},
                           "dataset": {"uri": "mem", "format": "preference", "promptTemplate": "default",
                                       "maxLength": 64, "maxResponseLength": 40}}, kind="FineTuneJob").spec
    pairs, report = encode_pairs(spec.dataset, tokenizer, None, rows_of=lambda src: ("mem.jsonl", rows))
    assert report.rows == 4 and report.pairs == 3
    assert report.response_cut == 1 and report.prompt_cut == 1
    assert report.dropped == ["mem.jsonl: row 3: empty rejected response"]
    assert any("dropped 1 pair" in line for line in report.lines())
    for good, bad in pairs:
        for side in (good, bad):
            assert len(side.input_ids) <= 64 and any(t != -100 for t in side.labels)
            assert len([t for t in side.labels if t != -100]) <= 40
    packed = pack_pairs(pairs, 128, shuffle=False, seed=0)
    assert [len(p["seq_lens"]) % 2 for p in packed] == [0] * len(packed)  # pairs are never split
    assert sum(len(p["seq_lens"]) for p in packed) == 6 and all(len(p["input_ids"]) <= 128 for p in packed)
    assert len(pack_pairs(pairs, 1000, shuffle=False, seed=0)) == 1
    assert len(pack_pairs(pairs, 0, shuffle=False, seed=0)) == 3  # packToMaxLength false: a pair per sequence


def test_the_xtuner_preference_map_fns():
    mix = {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}
    prompt, chosen, rejected = PAIR_FORMATS["orpo_dpo_mix_40k"](mix)
    assert prompt == mix["chosen"][:1] and chosen[0]["content"] == "Hello!" and rejected[0]["content"] == "Go away."
    orca = {"system": "Be kind.", "question": "2+2?", "chosen": "4", "rejected": "5"}
    prompt, chosen, rejected = PAIR_FORMATS["intel_orca_dpo"](orca)
    assert [m["role"] for m in prompt] == ["system", "user"] and chosen[0]["content"] == "4"
    from kubetune.data.formats import RowError

    with pytest.raises(RowError, match="chosen"):
        PAIR_FORMATS["preference"]({"prompt": "x", "chosen": 3, "rejected": "y"})


def test_check_custom_dataset_shows_pairs_and_names_bad_rows(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, {"type": "dpo"})
    data = tmp_path / "pairs.jsonl"
    data.write_text(data.read_text() + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    out = kubetune("check-custom-dataset", str(cfg))
    assert out.returncode == 2
    assert "chosen: encoded input_ids" in out.stdout and "sample lengths (chosen, rejected)" in out.stdout
    assert f"{data}: row 20: rejected: missing" in out.stdout


def test_log_dataset_shows_a_packed_pair(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, {"type": "reward"})
    out = kubetune("log-dataset", str(cfg), "--show", "text")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "packed chosen/rejected pairs" in out.stdout and "packed: 2 samples" in out.stdout
    assert "preference pairs: 20 of 20 rows" in out.stdout
