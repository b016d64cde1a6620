"""Memory of the loss at a large vocabulary: one LoRA step, kubetune (chunked head and loss) vs HF Trainer + PEFT.

    python bench/loss_bench.py [--lengths 4096,8192] [--vocab 151936]

A Llama with Qwen2.5's vocabulary (151 936, untied head) and a small body (hidden 256, 2 layers, built locally with
random weights), LoRA r=8 on every linear layer but the head, fp32 on the CPU, gradient checkpointing on, one
sequence of --length tokens per step (one alpaca-shaped sample whose answer fills it). Each side runs `train` for 3
steps in a fresh process: `kubetune train` (lossKernel auto: chunked on a CPU) and, for comparison, `kubetune train`
with `lossKernel: logits`, and HF Trainer + PEFT on the same encoded sample. Reported: the process's peak RSS and the
tokens/s of the last step (the first two warm up). Writes bench/results/loss.json.
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
STEPS = 3

KUBETUNE = r'''
import json, resource, sys
args = json.loads(sys.argv[1])
from kubetune.cli.main import main
if main(["train", args["cfg"], "--work-dir", args["work"]]):
    raise SystemExit("kubetune train failed")
from pathlib import Path
scalars = [json.loads(l) for l in next(Path(args["work"]).glob("*/vis_data/scalars.json")).read_text().splitlines()]
last = scalars[-1]
print(json.dumps({"tokens_per_s": last["tokens_per_second"], "loss": last["loss"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''

HF = r'''
import json, resource, sys, time, torch
args = json.loads(sys.argv[1])
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments
from peft import LoraConfig, get_peft_model
sample = json.loads(open(args["sample"]).read())
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(args["model"], dtype=torch.float32)
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.enable_input_require_grads()
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                         "up_proj", "down_proj"]))
rows = [sample] * args["steps"]
def collate(batch):
    return {"input_ids": torch.tensor([b["input_ids"] for b in batch]),
            "labels": torch.tensor([b["labels"] for b in batch])}
times = []
class Clock(TrainerCallback):
    def on_step_begin(self, a, s, c, **k): self.t = time.perf_counter()
    def on_step_end(self, a, s, c, **k): times.append(time.perf_counter() - self.t)
targs = TrainingArguments(output_dir=args["work"], max_steps=args["steps"], per_device_train_batch_size=1,
                          learning_rate=2e-4, lr_scheduler_type="constant", save_strategy="no", report_to=[],
                          use_cpu=True, seed=0, logging_steps=1, remove_unused_columns=False,
                          dataloader_num_workers=0)
trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
trainer.train()
loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]
print(json.dumps({"tokens_per_s": len(sample["input_ids"]) / times[-1], "loss": loss,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def build_model(out: Path, vocab: int) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from kubetune.tiny import build_tokenizer, model_config

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(out)
    config = model_config(vocab, hidden_size=256, intermediate_size=512, max_position_embeddings=16384)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def one_sample(model: Path, work: Path, length: int) -> tuple[Path, Path]:
    """An alpaca row whose answer fills `length` tokens, and its encoding (input_ids, labels) for HF."""
    from transformers import AutoTokenizer

    from kubetune.api import DatasetSpec
    from kubetune.data.pipeline import build

    words = "river stone cloud gradient memory kernel attention vocabulary answer question".split()
    row = {"instruction": "Write a long text.", "input": "",
           "output": " ".join(words[i % len(words)] for i in range(length))}
    data = work / f"row_{length}.json"
    data.write_text(json.dumps([row]))
    tok = AutoTokenizer.from_pretrained(str(model))
    encoded = build(DatasetSpec(uri=str(data), format="alpaca", prompt_template="default", max_length=length,
                                pack_to_max_length=False), tok, seed=0, cache_root=work / "cache",
                    log=lambda s: None).dataset[0]
    sample = work / f"sample_{length}.json"
    sample.write_text(json.dumps({"input_ids": list(encoded["input_ids"]), "labels": list(encoded["labels"])}))
    return data, sample


def job(model: Path, data: Path, length: int, kernel: str) -> dict:
    return {"model": {"uri": str(model)},
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "dataset": {"uri": str(data), "format": "alpaca", "promptTemplate": "default", "maxLength": length,
                        "packToMaxLength": False},
            "training": {"maxSteps": STEPS, "batchSize": 1, "accumulativeCounts": 1, "precision": "fp32",
                         "gradientCheckpointing": True, "seed": 0, "warmupRatio": 0.0, "logEverySteps": 1,
                         "lossKernel": kernel, "optimizer": {"lr": 2e-4}},
            "checkpoints": {"everySteps": 100000, "keep": 1}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4096,8192")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--out", default=str(HERE / "results" / "loss.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(work / "model", args.vocab)
        for length in map(int, args.lengths.split(",")):
            data, sample = one_sample(model, work, length)
            tokens = len(json.loads(sample.read_text())["input_ids"])
            for name, kernel in (("kubetune (chunked)", "auto"), ("kubetune (logits)", "logits"),
                                 ("HF Trainer + PEFT", None)):
                cfg = work / f"job_{length}_{kernel}.json"
                cfg.write_text(json.dumps(job(model, data, length, kernel or "logits")))
                payload = {"cfg": str(cfg), "work": str(work / f"w_{length}_{kernel}"), "model": str(model),
                           "sample": str(sample), "steps": STEPS}
                run = subprocess.run([sys.executable, "-c", HF if kernel is None else KUBETUNE, json.dumps(payload)],
                                     capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
                if run.returncode:
                    raise SystemExit(f"{name} at {length} failed:\n{run.stderr[-3000:]}")
                row = {"tool": name, "tokens": tokens, **json.loads(run.stdout.strip().splitlines()[-1])}
                results.append(row)
                print(f"  {tokens:5} tokens  {name:20} {row['tokens_per_s']:8.0f} tokens/s  peak RSS "
                      f"{row['peak_rss_mb']:7.0f} MB  loss {row['loss']:.4f}", flush=True)
    ratios = {}
    for tokens in sorted({r["tokens"] for r in results}):
        mine, hf = (next(r for r in results if r["tokens"] == tokens and r["tool"] == t)
                    for t in ("kubetune (chunked)", "HF Trainer + PEFT"))
        ratios[str(tokens)] = {"peak_rss": mine["peak_rss_mb"] / hf["peak_rss_mb"],
                               "tokens_per_s": mine["tokens_per_s"] / hf["tokens_per_s"]}
        print(f"{tokens} tokens: kubetune / HF Trainer peak RSS {ratios[str(tokens)]['peak_rss']:.2f}x, "
              f"tokens/s {ratios[str(tokens)]['tokens_per_s']:.2f}x")
    Path(args.out).write_text(json.dumps({
        "benchmark": "one LoRA step at a 152k vocabulary: peak memory and speed", "vocab": args.vocab,
        "model": "Llama hidden 256, 2 layers, untied head, fp32, gradient checkpointing", "steps": STEPS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results, "ratios_vs_hf_trainer": ratios}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
