"""Training throughput: kubetune (packing, no cross-sample attention) vs HF Trainer + PEFT (padding), same run.

    python bench/train_bench.py [--rows 1000] [--max-length 512]

Same tiny Llama (hidden 128, 2 layers, built locally), same synthetic alpaca-like rows, LoRA r=8 on every linear
layer, fp32 on the CPU, one epoch, the same number of sequences per optimizer step (8). kubetune packs whole samples
into 512-token sequences; HF Trainer pads each batch of 8 to its longest sample. Reported: effective (non-padding,
labelled-or-not) tokens per second of the training loop (model loading and data preparation excluded) and peak RSS of
each process. XTuner 0.2.0 runs in its own venv (bench/.venvs/xtuner, set up as in bench/data_bench.py) with the CPU
shim of shared notes §5, packed to the same length, LoRA on the same layers; without the venv its row is left out
with a note. Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KUBETUNE = r'''
import json, resource, sys, time, subprocess, os
args = json.loads(sys.argv[1])
out = subprocess.run([sys.executable, "-m", "kubetune", "train", args["cfg"], "--work-dir", args["work"]],
                     capture_output=True, text=True, env=dict(os.environ, KUBETUNE_CACHE=args["cache"]))
if out.returncode:
    raise SystemExit(out.stderr[-2000:])
from pathlib import Path
scalars = [json.loads(l) for l in next(Path(args["work"]).glob("*/vis_data/scalars.json")).read_text().splitlines()]
seconds = sum(s["step_time"] for s in scalars)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "steps": len(scalars), "peak_rss_mb": peak}))
'''

HF = r'''
import json, resource, sys, time, torch
args = json.loads(sys.argv[1])
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from peft import LoraConfig, get_peft_model
from kubetune.api import DatasetSpec
from kubetune.data.pipeline import build
from pathlib import Path
tok = AutoTokenizer.from_pretrained(args["model"])
spec = DatasetSpec(uri=args["data"], format="alpaca", prompt_template="internlm2_chat", max_length=args["max_length"],
                   pack_to_max_length=False)
data = build(spec, tok, seed=0, cache_root=Path(args["cache"]), log=lambda s: None).dataset
torch.manual_seed(0)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(args["model"], dtype=torch.float32),
                       LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
def collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id); labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"]); ids[i, :n] = torch.tensor(r["input_ids"]); labels[i, :n] = torch.tensor(r["labels"]); mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
targs = TrainingArguments(output_dir=args["work"], num_train_epochs=1, per_device_train_batch_size=8, learning_rate=2e-4,
                          lr_scheduler_type="cosine", warmup_steps=0, logging_steps=10, save_strategy="no", report_to=[],
                          use_cpu=True, seed=0, dataloader_num_workers=0, remove_unused_columns=False)
trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate)
result = trainer.train()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": result.metrics["train_runtime"], "steps": result.global_step, "peak_rss_mb": peak}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default=str(HERE / "results" / "train.json"))
    parser.add_argument("--xtuner-python", default=str(HERE / ".venvs" / "xtuner" / "bin" / "python"))
    args = parser.parse_args()
    from data_bench import make_rows

    from kubetune.tiny import build

    work = HERE / ".work" / "train"
    work.mkdir(parents=True, exist_ok=True)
    model = build(work / "model", hidden_size=128, intermediate_size=256)
    rows = [r for r in make_rows(args.rows, seed=1)]
    for r in rows:  # alpaca-like lengths: most answers short, a long tail
        r["output"] = " ".join(r["output"].split()[: max(3, int(len(r["output"].split()) ** 0.8))])
    data = work / "rows.json"
    data.write_text(json.dumps(rows))
    from transformers import AutoTokenizer

    from kubetune.api import DatasetSpec
    from kubetune.data.pipeline import build as build_data

    tok = AutoTokenizer.from_pretrained(str(model))
    plain = build_data(DatasetSpec(uri=str(data), format="alpaca", prompt_template="internlm2_chat",
                                   max_length=args.max_length, pack_to_max_length=False), tok,
                       cache_root=work / "cache0", log=lambda s: None)
    real_tokens = plain.report["tokens"]
    packed = build_data(DatasetSpec(uri=str(data), format="alpaca", prompt_template="internlm2_chat",
                                    max_length=args.max_length), tok, cache_root=work / "cache0", log=lambda s: None)
    # The same samples per optimizer step: 8 padded samples for HF; packed sequences carry about
    # samples/sequences samples each, so accumulate enough of them to match.
    per_seq = packed.report["samples"] / packed.report["sequences"]
    per_step = max(1, round(8 / per_seq))  # packed sequences per optimizer step
    cfg = work / "job.yaml"
    cfg.write_text(json.dumps({
        "model": {"uri": str(model)},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": []}},
        "dataset": {"uri": str(data), "format": "alpaca", "promptTemplate": "internlm2_chat",
                    "maxLength": args.max_length},
        "training": {"maxEpochs": 1, "batchSize": 1, "accumulativeCounts": per_step, "precision": "fp32",
                     "gradientCheckpointing": False, "seed": 0, "logEverySteps": 1000, "warmupRatio": 0.0,
                     "optimizer": {"lr": 2e-4}},
        "checkpoints": {"everySteps": 100000, "keep": 1}}))
    results = []
    for name, code in (("kubetune (packed)", KUBETUNE), ("HF Trainer + PEFT (padded)", HF)):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            payload = {"cfg": str(cfg), "work": str(Path(tmp) / "w"), "cache": str(Path(tmp) / "c"),
                       "model": str(model), "data": str(data), "max_length": args.max_length}
            out = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True,
                                 env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(tool=name, effective_tokens_per_s=real_tokens / r["seconds"])
        results.append(r)
        print(f"  {name:28} {r['effective_tokens_per_s']:9.0f} effective tokens/s  {r['seconds']:7.1f} s  "
              f"{r['steps']} steps  peak {r['peak_rss_mb']:.0f} MB")
    xtuner = run_xtuner(args, work, model, data, per_step, real_tokens)
    if xtuner:
        results.append(xtuner)
    ratio = results[0]["effective_tokens_per_s"] / results[1]["effective_tokens_per_s"]
    ratio_xtuner = results[0]["effective_tokens_per_s"] / xtuner["effective_tokens_per_s"] if xtuner else None
    if ratio_xtuner:
        print(f"kubetune / XTuner 0.2.0 effective tokens/s: {ratio_xtuner:.2f}x")
    print(f"\nkubetune / HF Trainer effective tokens/s: {ratio:.2f}x  (padding waste avoided: "
          f"{plain.report['padding_waste_unpacked']:.1%} if padded to maxLength)")
    Path(args.out).write_text(json.dumps({
        "benchmark": "LoRA training throughput", "rows": args.rows, "max_length": args.max_length,
        "real_tokens": real_tokens, "packed_sequences_per_step_kubetune": per_step,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results, "ratio_vs_hf_trainer": ratio, "ratio_vs_xtuner": ratio_xtuner,
        "peak_rss_ratio_vs_hf_trainer": results[0]["peak_rss_mb"] / results[1]["peak_rss_mb"]}, indent=2))
    print(f"wrote {args.out}")


def run_xtuner(args, work: Path, model: Path, data: Path, accum: int, real_tokens: int) -> dict | None:
    from xtuner_train import XT_CONFIG, XT_MODEL, XT_RUN

    if not Path(args.xtuner_python).exists():
        print(f"  XTuner left out: {args.xtuner_python} not found (set-up in bench/data_bench.py's docstring)")
        return None
    xt_model = work / "model-xtuner"
    subprocess.run([args.xtuner_python, "-c", XT_MODEL, str(model), str(xt_model)], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        cfg = Path(tmp) / "xt_lora.py"
        cfg.write_text(XT_CONFIG.format(model=str(xt_model), data=str(data), max_length=args.max_length, accum=accum))
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PATH=f"{Path(args.xtuner_python).parent}:"
                   f"{os.environ['PATH']}")
        out = subprocess.run([args.xtuner_python, "-c", XT_RUN, json.dumps({"cfg": str(cfg), "work": str(Path(tmp) / "w")})],
                             capture_output=True, text=True, env=env, cwd=tmp)
    if out.returncode:
        raise SystemExit(f"XTuner failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["steps"] = r["steps"] // accum  # mmengine counts micro-batches
    r.update(tool="XTuner 0.2.0 (packed, no varlen attention on CPU)", effective_tokens_per_s=real_tokens / r["seconds"])
    print(f"  {r['tool'][:28]:28} {r['effective_tokens_per_s']:9.0f} effective tokens/s  {r['seconds']:7.1f} s  "
          f"{r['steps']} steps  peak {r['peak_rss_mb']:.0f} MB")
    return r


if __name__ == "__main__":
    main()
