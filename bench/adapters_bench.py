"""Serving several LoRA adapters from one base: the cost of a decode step with the adapters kept beside the weights
(what `kubetune serve --adapter a=… --adapter b=…` does, PEFT applying each row's adapter) against one adapter merged
into the weights (what a one-adapter server without the base could do).

    python bench/adapters_bench.py [--hidden 512 --layers 8 --batch 8 --context 256]

A Llama with random weights, three r=16 adapters on every linear layer (random A and B). One prefill of `--context`
tokens, then the median of 32 decode steps, three repeats each, sides interleaved. Writes bench/results/adapters.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.75), num_hidden_layers=args.layers,
                      num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64, vocab_size=32000)
    lora = dict(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    served = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(**lora), adapter_name="one")
    for name in ("two", "three"):
        served.add_adapter(name, LoraConfig(**lora))
    served.eval()
    merged = copy.deepcopy(served).merge_and_unload(adapter_names=["one"]).eval()
    ids = torch.randint(0, 32000, (args.batch, args.context))
    mixed = (["one", "two", "three", "__base__"] * args.batch)[:args.batch]
    sides = {"merged (one adapter in the weights)": (merged, None),
             "beside the weights, one adapter for every row": (served, ["one"] * args.batch),
             "beside the weights, three adapters and the base mixed": (served, mixed)}

    def decode_step(model, names) -> float:
        kw = {"adapter_names": names} if names else {}
        with torch.inference_mode():
            cache = DynamicCache()
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **kw)
            times = []
            for _ in range(32):
                start = time.perf_counter()
                model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True, **kw)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    found: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, (model, names) in sides.items():
            found[name].append(decode_step(model, names))
    ref = statistics.median(found["merged (one adapter in the weights)"])
    rows = [{"side": n, "ms_per_step": round(statistics.median(t) * 1e3, 2),
             "spread_ms": round((max(t) - min(t)) * 1e3, 2), "vs_merged": round(statistics.median(t) / ref, 2)}
            for n, t in found.items()]
    print(f"{'side':58s} {'ms/step':>8s} {'spread':>7s} {'vs merged':>9s}")
    for r in rows:
        print(f"{r['side']:58s} {r['ms_per_step']:8.1f} {r['spread_ms']:7.1f} {r['vs_merged']:8.2f}x")
    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "settings": vars(args), "rows": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "adapters.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
