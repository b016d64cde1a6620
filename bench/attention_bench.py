"""How the cost of a packed sequence grows with its length: kubetune's packed attention vs transformers' masked path.

    python bench/attention_bench.py [--lengths 512,1024,2048,4096,8192] [--compile]

A Llama (hidden 256, 4 layers, 8 heads, vocabulary 1024, random weights) trains on packed sequences of --length
tokens made of alpaca-like samples (64 to 1024 tokens, a long tail), fp32 on the CPU, forward + backward of the whole
model (LoRA-free: the attention share is what is compared). Sides, same batches:
- kubetune: `kubetune_packed` attention (each sample attended on its own: the segment kernel on a CPU);
- HF masked: transformers' SDPA with the block-diagonal causal mask it builds from the restarting position ids
  (the exact result, S × S scores);
- with --compile, kubetune's model under `torch.compile` as well.
Median of 3 timed steps after one warm-up. Writes bench/results/attention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def packed_batch(length: int, seed: int) -> dict:
    import torch

    rng = random.Random(seed)
    lengths: list[int] = []
    while sum(lengths) < length:
        lengths.append(min(length - sum(lengths), int(64 + 960 * rng.random() ** 3)))
    ids = torch.randint(5, 1000, (1, length), generator=torch.Generator().manual_seed(seed))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return {"input_ids": ids, "position_ids": positions, "labels": ids.clone(), "samples": len(lengths)}


def step_seconds(model, batch: dict, repeats: int = 3) -> float:
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                    use_cache=False)
        out.loss.backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192")
    parser.add_argument("--compile", action="store_true", help="also time kubetune's model under torch.compile")
    parser.add_argument("--out", default=str(HERE / "results" / "attention.json"))
    args = parser.parse_args()
    import torch
    from transformers import LlamaForCausalLM

    from kubetune.model import attention
    from kubetune.tiny import model_config

    attention.register()
    config = model_config(1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                          num_key_value_heads=4, max_position_embeddings=16384)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    models = {"kubetune packed": attention.PACKED, "HF masked (sdpa)": "sdpa"}
    results = []
    for length in map(int, args.lengths.split(",")):
        batch = packed_batch(length, seed=length)
        for name, impl in models.items():
            base.config._attn_implementation = impl
            for layer in base.model.layers:
                layer.self_attn.config._attn_implementation = impl
            seconds = step_seconds(base, batch)
            results.append({"side": name, "length": length, "samples": batch["samples"], "seconds": seconds,
                            "tokens_per_s": length / seconds})
        if args.compile:
            base.config._attn_implementation = attention.PACKED
            compiled = torch.compile(base)
            seconds = step_seconds(compiled, batch)
            results.append({"side": "kubetune packed + torch.compile", "length": length,
                            "samples": batch["samples"], "seconds": seconds, "tokens_per_s": length / seconds})
        for r in results[-(3 if args.compile else 2):]:
            print(f"  {length:5} tokens ({r['samples']:2} samples)  {r['side']:32} {r['tokens_per_s']:8.0f} tokens/s",
                  flush=True)
    ratios = {}
    for length in sorted({r["length"] for r in results}):
        rows = {r["side"]: r for r in results if r["length"] == length}
        ratios[str(length)] = rows["kubetune packed"]["tokens_per_s"] / rows["HF masked (sdpa)"]["tokens_per_s"]
        print(f"{length}: kubetune / HF masked {ratios[str(length)]:.2f}x")
    Path(args.out).write_text(json.dumps({
        "benchmark": "packed attention cost vs sequence length", "model": "Llama hidden 256, 4 layers, fp32, CPU",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "results": results, "ratios_vs_hf_masked": ratios}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
