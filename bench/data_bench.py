"""Preprocessing benchmark: kubetune's data pipeline vs XTuner 0.2.0's `process_hf_dataset`, same data, same run.

    python bench/data_bench.py [--rows 100000] [--num-proc 1] [--xtuner-python bench/.venvs/xtuner/bin/python]

100k synthetic alpaca-shaped rows, the tiny byte-level BPE tokenizer, template internlm2_chat, maxLength 2048,
packing on and off. Each side runs in its own fresh process with an empty cache; the time covers reading the JSON,
map fn, template, tokenization, masking, packing and (for kubetune) writing the cache, not interpreter start-up or
imports. Peak RSS is the process's peak; "Δ RSS" subtracts the RSS after imports. Writes bench/results/data.json.

XTuner runs in its own venv (it pins transformers 4.48); set it up once with:
    python3 -m venv bench/.venvs/xtuner
    bench/.venvs/xtuner/bin/pip install torch==2.14.1 torchvision==0.29.1 xtuner==0.2.0
    bench/.venvs/xtuner/bin/pip install --no-deps bitsandbytes==0.45.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = ("the a model data train token sequence packing sample answer question write explain list give short long "
         "simple python function return value city river mountain history science music color number").split()

MEASURE = r'''
import json, os, resource, sys, time
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
args = json.loads(sys.argv[1])
'''

KUBETUNE_RUN = MEASURE + r'''
from transformers import AutoTokenizer
from pathlib import Path
from kubetune.api import DatasetSpec
from kubetune.data.pipeline import build
tok = AutoTokenizer.from_pretrained(args["tok"])
spec = DatasetSpec(uri=args["data"], format="alpaca", prompt_template="internlm2_chat", max_length=args["max_length"],
                   pack_to_max_length=args["pack"], num_proc=args["num_proc"])
base = rss_mb()
t0 = time.perf_counter()
built = build(spec, tok, cache_root=Path(args["cache"]), log=lambda s: None)
n = len(built.dataset)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "base_rss_mb": base, "sequences": n,
                  "padding_waste": built.report["padding_waste"], "tokens": built.report["tokens"]}))
'''

XTUNER_RUN = MEASURE + r'''
from datasets import load_dataset
from transformers import AutoTokenizer
from xtuner.dataset import process_hf_dataset
from xtuner.dataset.map_fns import alpaca_map_fn, template_map_fn_factory
from xtuner.utils import PROMPT_TEMPLATE
tok = AutoTokenizer.from_pretrained(args["tok"], padding_side="right")
base = rss_mb()
t0 = time.perf_counter()
raw = load_dataset("json", data_files=dict(train=args["data"]), cache_dir=args["cache"])
ds = process_hf_dataset(dataset=raw, tokenizer=tok, max_length=args["max_length"], dataset_map_fn=alpaca_map_fn,
                        template_map_fn=template_map_fn_factory(template=PROMPT_TEMPLATE.internlm2_chat),
                        remove_unused_columns=True, shuffle_before_pack=True, pack_to_max_length=args["pack"],
                        use_varlen_attn=False, map_num_proc=args["num_proc"])
n = len(ds)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
lengths = ds["length"]
waste = 1 - sum(lengths) / (len(lengths) * args["max_length"])
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "base_rss_mb": base, "sequences": n,
                  "padding_waste": waste, "tokens": sum(lengths)}))
'''


def make_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)

    def sentence(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows = [{"instruction": sentence(4, 30), "input": sentence(0, 40) if rng.random() < 0.4 else "",
             "output": sentence(5, 300)} for _ in range(n)]
    return rows


def prepare(work: Path, rows: int) -> tuple[Path, Path]:
    data = work / f"alpaca_{rows}.json"
    if not data.exists():
        data.write_text(json.dumps(make_rows(rows)))
    tok_dir = work / "tokenizer"
    if not tok_dir.exists():
        from kubetune.tiny import build_tokenizer

        build_tokenizer().save_pretrained(tok_dir)
        # transformers 4.48 (XTuner's pin) cannot load the class name transformers 5 writes.
        cfg_path = tok_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg["additional_special_tokens"] = cfg.pop("extra_special_tokens", [])  # 4.48 expects this key and a list
        cfg.pop("backend", None)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return data, tok_dir


def run(python: str, code: str, args: dict) -> dict:
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1", KUBETUNE_PROGRESS="0")
    env.pop("TOKENIZERS_PARALLELISM", None)  # each tool runs with its own default
    out = subprocess.run([python, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--xtuner-python", default=str(HERE / ".venvs" / "xtuner" / "bin" / "python"))
    parser.add_argument("--work", default=str(HERE / ".work"))
    parser.add_argument("--out", default=str(HERE / "results" / "data.json"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, tok = prepare(work, args.rows)
    have_xtuner = Path(args.xtuner_python).exists()
    results = []
    for pack in (True, False):
        for name, python, code in (("kubetune", sys.executable, KUBETUNE_RUN),
                                   ("xtuner 0.2.0", args.xtuner_python, XTUNER_RUN)):
            if name.startswith("xtuner") and not have_xtuner:
                print(f"skipping xtuner: {args.xtuner_python} not found (see the docstring to set it up)")
                continue
            with tempfile.TemporaryDirectory(dir=work) as cache:
                r = run(python, code, {"data": str(data), "tok": str(tok), "pack": pack, "num_proc": args.num_proc,
                                       "max_length": args.max_length, "cache": cache})
            r.update(tool=name, pack=pack, rows=args.rows, rows_per_s=args.rows / r["seconds"])
            results.append(r)
            print(f"  {name:13} pack={str(pack):5} {r['rows_per_s']:9.0f} rows/s  peak {r['peak_rss_mb']:7.0f} MB")

    print()
    print(f"{'tool':14}{'pack':>6}{'rows/s':>10}{'seconds':>9}{'peak RSS MB':>13}{'Δ RSS MB':>10}{'sequences':>11}"
          f"{'pad waste':>11}")
    for r in results:
        print(f"{r['tool']:14}{str(r['pack']):>6}{r['rows_per_s']:10.0f}{r['seconds']:9.1f}{r['peak_rss_mb']:13.0f}"
              f"{r['peak_rss_mb'] - r['base_rss_mb']:10.0f}{r['sequences']:11d}{r['padding_waste']:11.1%}")
    ratios = {}
    for pack in (True, False):
        k = next((r for r in results if r["tool"] == "kubetune" and r["pack"] == pack), None)
        x = next((r for r in results if r["tool"].startswith("xtuner") and r["pack"] == pack), None)
        if k and x:
            ratios[f"pack={pack}"] = {"speedup_rows_per_s": k["rows_per_s"] / x["rows_per_s"],
                                      "peak_rss_ratio": k["peak_rss_mb"] / x["peak_rss_mb"]}
            print(f"pack={pack}: kubetune is {k['rows_per_s'] / x['rows_per_s']:.2f}x XTuner's rows/s, "
                  f"peak RSS {k['peak_rss_mb'] / x['peak_rss_mb']:.2f}x")
    waste: dict[str, float] = {}
    k_unpacked = next((r for r in results if r["tool"] == "kubetune" and not r["pack"]), None)
    k_packed = next((r for r in results if r["tool"] == "kubetune" and r["pack"]), None)
    if k_unpacked and k_packed:
        waste = {"unpacked, padded to maxLength": k_unpacked["padding_waste"],
                 "packed (kubetune)": k_packed["padding_waste"]}
        print("\npadding waste (1 - real tokens / (sequences x maxLength)):")
        for key, value in waste.items():
            print(f"  {key:32} {value:7.1%}")
    x_packed = next((r for r in results if r["tool"].startswith("xtuner") and r["pack"]), None)
    if x_packed:
        waste["packed (xtuner, cuts samples)"] = x_packed["padding_waste"]
        print(f"  {'packed (xtuner, cuts samples)':32} {x_packed['padding_waste']:7.1%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "benchmark": "data preprocessing", "rows": args.rows, "num_proc": args.num_proc, "max_length": args.max_length,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "results": results, "ratios": ratios, "padding_waste": waste}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
