"""`kubetune test CONFIG --checkpoint CKPT` (XTuner's test mode): the loss it reports is the one PEFT gives, over
the config's data or another file, and the evaluation prompts are answered into vis_data/."""

import json
import math

import torch

from kubetune.api import DatasetSpec
from kubetune.data.pipeline import build

from .test_train import alpaca_rows, kubetune, write_job


def reference_loss(tiny_dir, adapter, data, cache):
    """Per-sample token loss summed over the labelled tokens, by transformers + PEFT directly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    rows = build(DatasetSpec(uri=str(data), format="alpaca", prompt_template="default", max_length=128,
                             pack_to_max_length=False), tok, cache_root=cache, log=lambda s: None).dataset
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32),
                                      str(adapter)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(row["labels"][1:])
            total += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    return total / count, len(rows)


def test_a_checkpoint_is_scored_as_peft_scores_it(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, alpaca_rows(10), evaluation={"inputs": ["sun moon"], "maxNewTokens": 4},
                    checkpoints={"everySteps": 3, "keep": 1})
    env = {"KUBETUNE_CACHE": str(tmp_path / "c")}
    work = tmp_path / "work"
    out = kubetune("train", str(cfg), "--work-dir", str(work), "--cfg-options", "training.maxSteps=3", env=env)
    assert out.returncode == 0, out.stderr[-3000:]

    results = tmp_path / "results"
    out = kubetune("test", str(cfg), "--checkpoint", str(work / "iter_3"), "--work-dir", str(results), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(next(results.glob("*/test_results.json")).read_text())
    expected, samples = reference_loss(tiny_dir, work / "iter_3" / "model", tmp_path / "data.jsonl", tmp_path / "c0")
    assert got["samples"] == samples == 10 and got["step"] == 3
    assert abs(got["loss"] - expected) <= 1e-5 * expected, (got["loss"], expected)
    assert got["perplexity"] == math.exp(got["loss"])
    assert f"loss {got['loss']:.4f}" in out.stdout
    assert next(results.glob("*/vis_data/eval_outputs_iter_3.txt")).read_text().startswith("Sample output:\nsun moon")

    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(json.dumps(r) for r in alpaca_rows(4, seed=9)) + "\n")
    out = kubetune("test", str(cfg), "--checkpoint", str(work / "iter_3"), "--work-dir", str(tmp_path / "r2"),
                   "--data", str(other), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(next((tmp_path / "r2").glob("*/test_results.json")).read_text())
    expected, samples = reference_loss(tiny_dir, work / "iter_3" / "model", other, tmp_path / "c1")
    assert got["samples"] == samples == 4 and abs(got["loss"] - expected) <= 1e-5 * expected

    bad = kubetune("test", str(cfg), "--checkpoint", str(tmp_path), env=env)
    assert bad.returncode == 2 and "not a kubetune checkpoint" in bad.stderr and "Traceback" not in bad.stderr
