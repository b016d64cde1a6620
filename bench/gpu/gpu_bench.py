"""GPU training throughput: kubetune vs TRL's SFTTrainer on the same packed data, LoRA and full fine-tuning in bf16.

    python bench/gpu/gpu_bench.py                      # a CUDA machine: Qwen2.5-1.5B-shaped, packed to 4096
    python bench/gpu/gpu_bench.py --device cpu --tiny  # the same path end to end on a CPU, tiny (CI runs this)

The model has Qwen2.5-1.5B's shape (28 layers, hidden 1536, 12 query / 2 key-value heads, intermediate 8960,
vocabulary 151 936, tied embeddings) and random weights (nothing is downloaded). The data are synthetic alpaca-like
rows with a long tail of answer lengths, encoded once by kubetune's pipeline (the tiny byte-level BPE of
`kubetune.tiny`; the template `qwen_chat`); kubetune packs them to --max-length and TRL gets the same encoded samples
(input_ids and completion masks) with its own best-fit-decreasing padding-free packing to the same length.

Each side runs in its own process, one packed sequence per optimizer step, gradient checkpointing on, the first
--warmup steps not counted:
- kubetune: `kubetune train` on a generated FineTuneJob (its packed attention: varlen flash attention from PyTorch on
  CUDA; `training.lossKernel auto`: Liger's fused loss where installed, else the chunked one).
- TRL `SFTTrainer` with its padding-free best-fit-decreasing packing, with and without `use_liger_kernel`:
  flash_attention_2 where the flash-attn wheel is installed, else transformers' SDPA with the block-diagonal mask it
  builds from the position ids (what it ran with is recorded).
- kubetune-chunked: kubetune with `lossKernel: chunked` (plain PyTorch), LoRA only.

Figures: trained tokens per second per GPU (median step), peak GPU memory (torch's allocator), and MFU: model FLOPs by
the Megatron formula XTuner's ThroughputHook uses (`kubetune.train.hooks.megatron_tflops`: 96·L·h²·(1 + s/(6h) +
V/(16Lh)) per token with recomputation) over the GPU's dense bf16 peak (H200/H100 SXM: 989.4 TFLOP/s). For LoRA the
formula counts the frozen weights' gradient products it does not compute, as XTuner's does: an upper bound.
Writes bench/results/gpu.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}
QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  tie_word_embeddings=True, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=4096, max_position_embeddings=4096, tie_word_embeddings=True)
LORA = {"r": 64, "alpha": 16, "dropout": 0.0}  # XTuner's Qwen LoRA configs: r 64, alpha 16, every linear layer


def build_model(out: Path, shape: dict, device: str) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from kubetune.tiny import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    config = Qwen2Config(bos_token_id=1, eos_token_id=2, pad_token_id=3, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    return out


def make_rows(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    words = ("the a model data train token sequence packing sample answer question write explain list give short "
             "long river stone cloud gradient memory kernel attention vocabulary").split()

    def sentence(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [{"instruction": sentence(4, 40), "input": sentence(0, 60) if rng.random() < 0.4 else "",
             "output": sentence(5, int(20 + 600 * rng.random() ** 3))} for _ in range(n)]


def job(model: Path, data: Path, method: str, args: argparse.Namespace) -> dict:
    spec_method: dict = {"type": method}
    if method == "lora":
        spec_method["lora"] = LORA
    return {"model": {"uri": str(model)}, "method": spec_method,
            "dataset": {"uri": str(data), "format": "alpaca", "promptTemplate": "qwen_chat",
                        "maxLength": args.max_length, "shuffleBeforePack": True},
            "training": {"maxSteps": args.warmup + args.steps, "batchSize": 1, "accumulativeCounts": 1,
                         "precision": "bf16" if args.device == "cuda" else "fp32", "gradientCheckpointing": True,
                         "seed": 0, "warmupRatio": 0.0, "logEverySteps": 1, "optimizer": {"lr": 1e-5},
                         **({"lossKernel": args.loss_kernel} if args.loss_kernel else {})},
            "checkpoints": {"everySteps": 100000, "keep": 1}}


KUBETUNE = r'''
import json, os, sys
args = json.loads(sys.argv[1])
from kubetune.cli.main import main
code = main(["train", args["cfg"], "--work-dir", args["work"]])
if code:
    raise SystemExit(f"kubetune train exited {code}")
from pathlib import Path
work = Path(args["work"])
scalars = [json.loads(l) for l in next(work.glob("*/vis_data/scalars.json")).read_text().splitlines()]
log = next(work.glob("*/*.log")).read_text()
kernel = [l.split("loss kernel: ")[1].strip() for l in log.splitlines() if "loss kernel: " in l]
print(json.dumps({"steps": [{"seconds": s["step_time"], "tokens": s["tokens_per_second"] * s["step_time"],
                             "loss": s["loss"]} for s in scalars],
                  "peak_memory_bytes": max(s.get("peak_memory_bytes", 0) for s in scalars),
                  "loss_kernel": kernel[-1] if kernel else None}))
'''

TRL = r'''
import json, resource, sys, time
args = json.loads(sys.argv[1])
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
samples = json.loads(open(args["samples"]).read())
data = Dataset.from_list(samples)
tok = AutoTokenizer.from_pretrained(args["model"])
cuda = args["device"] == "cuda"
attn = None
# TRL's padding-free packing wants flash-attn; without its wheel (most images) transformers' SDPA with the
# block-diagonal mask it builds from the position ids is what runs. FlexAttention would recompile for every new
# packed length.
for candidate in (["flash_attention_2", "sdpa"] if cuda else ["sdpa"]):
    try:
        model = AutoModelForCausalLM.from_pretrained(args["model"], dtype=torch.float32 if args["method"] == "full"
                                                     or not cuda else torch.bfloat16, attn_implementation=candidate)
        attn = candidate
        break
    except Exception as exc:  # flash-attn wheel or the hub kernel missing: the next one
        print(f"attention {candidate}: {str(exc)[:200]}", file=sys.stderr)
peft_config = None
if args["method"] == "lora":
    from peft import LoraConfig
    peft_config = LoraConfig(r=args["lora"]["r"], lora_alpha=args["lora"]["alpha"], lora_dropout=0.0,
                             target_modules="all-linear", task_type="CAUSAL_LM")
times, tokens = [], []
class Clock(TrainerCallback):
    def on_step_begin(self, a, state, control, **kw):
        if cuda: torch.cuda.synchronize()
        self.t = time.perf_counter()
    def on_step_end(self, a, state, control, **kw):
        if cuda: torch.cuda.synchronize()
        times.append(time.perf_counter() - self.t)
class Counting(SFTTrainer):
    def training_step(self, model, inputs, *rest, **kw):
        padded = "attention_mask" in inputs and "position_ids" not in inputs
        tokens.append(int(inputs["attention_mask"].sum() if padded else inputs["input_ids"].numel()))
        return super().training_step(model, inputs, *rest, **kw)
config = SFTConfig(output_dir=args["work"], max_steps=args["steps"], per_device_train_batch_size=1,
                   gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
                   logging_steps=1, save_strategy="no", report_to=[], bf16=cuda, use_cpu=not cuda,
                   gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
                   packing=True, padding_free=True, max_length=args["max_length"], completion_only_loss=True,
                   use_liger_kernel=args["liger"], seed=0, dataloader_num_workers=0, dataset_num_proc=1)
trainer = Counting(model=model, args=config, train_dataset=data, processing_class=tok, peft_config=peft_config,
                   callbacks=[Clock()])
if cuda: torch.cuda.reset_peak_memory_stats()
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"steps": [{"seconds": s, "tokens": n, "loss": l} for s, n, l in zip(times, tokens, losses)],
                  "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "attention": attn}))
'''


def encoded_samples(model: Path, data: Path, max_length: int, out: Path) -> int:
    """kubetune's encoding of the rows, unpacked: what TRL packs itself."""
    from transformers import AutoTokenizer

    from kubetune.api import DatasetSpec
    from kubetune.data.pipeline import build

    tok = AutoTokenizer.from_pretrained(str(model))
    built = build(DatasetSpec(uri=str(data), format="alpaca", prompt_template="qwen_chat", max_length=max_length,
                              pack_to_max_length=False), tok, seed=0, cache_root=out.parent / "cache",
                  log=lambda s: None).dataset
    rows = [{"input_ids": list(r["input_ids"]), "completion_mask": [int(x != -100) for x in r["labels"]]}
            for r in built]
    out.write_text(json.dumps(rows))
    return len(rows)


def run_side(code: str, payload: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True,
                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if out.returncode:
        return {"error": (out.stderr or out.stdout)[-2500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(name: str, method: str, raw: dict, args: argparse.Namespace, shape: dict, peak: float | None) -> dict:
    from kubetune.train.hooks import megatron_tflops

    row = {"tool": name, "method": method, **{k: v for k, v in raw.items() if k != "steps"}}
    if "error" in raw:
        return row
    steps = raw["steps"][args.warmup:]
    rates = [s["tokens"] / s["seconds"] for s in steps if s["seconds"] > 0]
    tps = statistics.median(rates)
    tflops = megatron_tflops(shape["num_hidden_layers"], shape["hidden_size"], shape["vocab_size"], args.max_length,
                             tps, True)
    row.update(tokens_per_s=tps, spread=[min(rates), max(rates)], measured_steps=len(rates), model_tflops=tflops,
               mfu=tflops / peak if peak else None, final_loss=raw["steps"][-1]["loss"],
               peak_memory_gb=raw.get("peak_memory_bytes", 0) / 2**30)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen2 and short sequences (the CPU check)")
    parser.add_argument("--max-length", type=int, default=None, help="packed length (4096; tiny: 256)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (12; tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="steps not measured (3; tiny: 1)")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--sides", default="kubetune,trl,trl-liger,kubetune-chunked")
    parser.add_argument("--loss-kernel", default=None, help="kubetune's training.lossKernel (default: auto)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    args = parser.parse_args()
    args.max_length = args.max_length or (256 if args.tiny else 4096)
    args.steps = args.steps or (2 if args.tiny else 12)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    shape = TINY if args.tiny else QWEN25_15B
    import torch

    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    peak = next((v for k, v in PEAK_TFLOPS.items() if gpu and k in gpu), None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        model = build_model(work / "model", shape, args.device)
        data = work / "rows.json"
        data.write_text(json.dumps(make_rows(40 if args.tiny else 800)))
        samples = work / "samples.json"
        count = encoded_samples(model, data, args.max_length, samples)
        print(f"model and {count} encoded samples ready in {time.perf_counter() - t0:.0f} s; GPU: {gpu}", flush=True)
        results = []
        for method in args.methods.split(","):
            for side in args.sides.split(","):
                if side == "trl-liger" and not _installed("liger_kernel"):
                    results.append({"tool": side, "method": method, "error": "liger-kernel not installed"})
                    continue
                if side == "kubetune-chunked" and method != "lora":
                    continue  # the loss kernel's own figure: once is enough
                cfg = work / f"{side}-{method}.json"
                spec = job(model, data, method, args)
                if side == "kubetune-chunked":
                    spec["training"]["lossKernel"] = "chunked"
                cfg.write_text(json.dumps(spec))
                payload = {"cfg": str(cfg), "work": str(work / f"{side}-{method}"), "model": str(model),
                           "samples": str(samples), "method": method, "device": args.device, "lora": LORA,
                           "max_length": args.max_length, "steps": args.warmup + args.steps,
                           "liger": side == "trl-liger"}
                started = time.perf_counter()
                raw = run_side(KUBETUNE if side.startswith("kubetune") else TRL, payload)
                row = summarise(side, method, raw, args, shape, peak)
                row["wall_s"] = time.perf_counter() - started
                results.append(row)
                print(_line(row), flush=True)
                _write(args, gpu, peak, shape, results)  # after every run: a time limit keeps what was measured


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _line(row: dict) -> str:
    if "error" in row:
        return f"  {row['method']:5} {row['tool']:10} FAILED: {row['error'].strip().splitlines()[-1][:300]}"
    mfu = f"{row['mfu']:.1%}" if row.get("mfu") else "-"
    return (f"  {row['method']:5} {row['tool']:10} {row['tokens_per_s']:10.0f} tokens/s  peak "
            f"{row['peak_memory_gb']:6.1f} GiB  MFU {mfu:>6}  loss {row['final_loss']:.3f}  ({row['wall_s']:.0f} s)")


def _write(args: argparse.Namespace, gpu: str | None, peak: float | None, shape: dict, results: list[dict]) -> None:
    ratios = {}
    for method in args.methods.split(","):
        mine = next((r for r in results if r["tool"] == "kubetune" and r["method"] == method), None)
        for r in results:
            if r["method"] == method and r["tool"] != "kubetune" and mine and "error" not in mine and "error" not in r:
                ratios[f"{method}: kubetune / {r['tool']} tokens/s"] = mine["tokens_per_s"] / r["tokens_per_s"]
                ratios[f"{method}: kubetune / {r['tool']} peak memory"] = (
                    mine["peak_memory_gb"] / r["peak_memory_gb"] if r["peak_memory_gb"] else None)
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x" if value else f"{key}: -")
    import torch
    import transformers

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "benchmark": "GPU training throughput, kubetune vs TRL SFTTrainer", "gpu": gpu, "peak_bf16_tflops": peak,
        "model_shape": shape, "max_length": args.max_length, "measured_steps": args.steps, "warmup": args.warmup,
        "tiny": args.tiny, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                        "python": platform.python_version()},
        "results": results, "ratios": ratios}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
