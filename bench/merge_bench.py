"""LoRA merge: kubetune's streaming merge vs PEFT `merge_and_unload` + `save_pretrained`, same base and adapter.

    python bench/merge_bench.py [--hidden 2048 --layers 8]

A Llama with random fp16 weights (about 1.1 GB on disk in 5 shards of 256 MB at the defaults) and an r=16 adapter on
every linear layer with random B (so the merge changes every targeted weight). Each side runs in a fresh process;
reported: wall time and peak RSS (ru_maxrss). Goal: ≤0.35× PEFT's peak RSS at ≤1.0× its time. Writes
bench/results/merge.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

MAKE = r'''
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
out, hidden, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers,
                  num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128, tie_word_embeddings=False)
with torch.device("cpu"):
    model = LlamaForCausalLM(cfg).to(torch.float16)
model.save_pretrained(out + "/base", max_shard_size="256MB")
peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
for name, p in peft.named_parameters():
    if "lora_B" in name:
        torch.nn.init.normal_(p, std=0.02)
peft.save_pretrained(out + "/adapter")
'''

KUBETUNE = r'''
import resource, sys, time
from pathlib import Path
from kubetune.convert.merge import merge
t = time.perf_counter()
merge(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), "2GB", True, "cpu", log=lambda s: None)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
'''

PEFT = r'''
import resource, sys, time, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
t = time.perf_counter()
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float16, low_cpu_mem_usage=True)
model = PeftModel.from_pretrained(base, sys.argv[2]).merge_and_unload()
model.save_pretrained(sys.argv[3], max_shard_size="2GB")
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "results" / "merge.json"))
    args = parser.parse_args()
    work = HERE / ".work" / f"merge_{args.hidden}_{args.layers}"
    if not (work / "adapter").is_dir():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", MAKE, str(work), str(args.hidden), str(args.layers)], check=True)
    shards = sorted((work / "base").glob("*.safetensors"))
    size = sum(p.stat().st_size for p in shards)
    print(f"base: {len(shards)} shards, {size / 1e9:.2f} GB; adapter r=16 on every linear layer")
    for shard in shards:  # both sides start with the base in the page cache, or the first one pays for the disk
        with shard.open("rb") as f:
            while f.read(1 << 24):
                pass
    results = {}
    for name, code in (("kubetune streaming merge", KUBETUNE), ("PEFT merge_and_unload + save_pretrained", PEFT)):
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, str(work / "base"), str(work / "adapter"), str(out)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        seconds, peak = map(float, done.stdout.split()[-2:])
        results[name] = {"seconds": seconds, "wall_s": time.perf_counter() - started, "peak_rss_mb": peak}
        print(f"  {name:42} {seconds:7.1f} s   peak RSS {peak:7.0f} MB")
    k, p = results["kubetune streaming merge"], results["PEFT merge_and_unload + save_pretrained"]
    ratio = {"peak_rss": k["peak_rss_mb"] / p["peak_rss_mb"], "time": k["seconds"] / p["seconds"]}
    print(f"\nkubetune / PEFT: peak RSS {ratio['peak_rss']:.2f}x (goal <= 0.35), time {ratio['time']:.2f}x "
          "(goal <= 1.0)")
    Path(args.out).write_text(json.dumps({
        "benchmark": "LoRA merge", "base_bytes": size, "shards": len(shards), "hidden": args.hidden,
        "layers": args.layers, "results": results, "ratio_kubetune_over_peft": ratio,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
