"""Training throughput as a user sees it: kubetune vs HF Trainer + PEFT vs TRL SFTTrainer (padding-free), same run.

    python bench/train_bench.py [--repeats 3] [--models tiny,100m] [--shapes longtail,chat] [--profile]

Every side trains the same LoRA (r=8 on every linear layer but the head, fp32, no gradient checkpointing) for one
epoch on the same rows, about 8 samples per optimizer step, each in a fresh process:
- kubetune: samples packed whole with a token budget (`dataset.maxPackedLength` = 8 × the mean sample length, one
  micro-batch per step), attention per sample;
- HF Trainer + PEFT: batches of 8 samples padded to the longest in the batch;
- TRL `SFTTrainer`: `packing=True` (best-fit decreasing, padding-free: each batch flattened into one sequence with
  position ids restarting per sample), as many packed rows per step as make about 8 samples.
Reported per side: whole process (spawn to exit: imports, data, model load, loop, save) and the loop alone, as the
median of `--repeats` runs whose order rotates each repeat, with the spread (min–max); peak RSS; the logged losses.
Two data shapes (`longtail`: alpaca-like, answer lengths log-normal (median ~20 words, up to 380), maxLength 512; `chat`: short turns, maxLength 128)
and two model shapes (`tiny`: hidden 128 × 2 layers; `100m`: hidden 768 × 10 layers, 112M parameters with a 32 000
vocabulary — the tokenizer is the tiny one, so ids stay below 793, but every matrix product is full size).
`--profile` also runs kubetune once per case with KUBETUNE_PROFILE and prints where its time went, with and without
the token budget. Writes bench/results/train.json.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = {"tiny": dict(hidden_size=128, intermediate_size=256),
          "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=12,
                       num_key_value_heads=4, vocab_size=32000)}
ROWS = {("tiny", "longtail"): 600, ("tiny", "chat"): 2000, ("100m", "longtail"): 128, ("100m", "chat"): 256}
MAX_LENGTH = {"longtail": 512, "chat": 128}
SAMPLES_PER_STEP = 8


def make_rows(shape: str, n: int) -> list[dict[str, str]]:
    import math
    import random

    from data_bench import WORDS, make_rows as alpaca_rows

    rows = alpaca_rows(n, seed=1)
    rng = random.Random(1)
    for r in rows:
        words = r["output"].split()
        if shape == "longtail":  # answer lengths log-normal, as alpaca's: most short, a long tail
            count = max(2, min(380, int(math.exp(rng.gauss(3.0, 1.2)))))
            r["output"] = " ".join(rng.choice(WORDS) for _ in range(count))
        else:  # short chat turns
            r["instruction"] = " ".join(r["instruction"].split()[:12])
            r["input"] = ""
            r["output"] = " ".join(words[: 4 + len(words) % 24])
    return rows


def prepare(work: Path, model_name: str, shape: str) -> dict:
    """The model, the rows, their token statistics and the kubetune config of one case."""
    from transformers import AutoTokenizer

    from kubetune.api import DatasetSpec
    from kubetune.data.pipeline import build as build_data
    from kubetune.tiny import build

    model = work / f"model-{model_name}"
    if not (model / "model.safetensors").exists():
        build(model, **MODELS[model_name])
    case = work / f"{model_name}-{shape}"
    case.mkdir(parents=True, exist_ok=True)
    data = case / "rows.json"
    data.write_text(json.dumps(make_rows(shape, ROWS[(model_name, shape)])))
    tok = AutoTokenizer.from_pretrained(str(model))
    max_length = MAX_LENGTH[shape]
    built = build_data(DatasetSpec(uri=str(data), format="alpaca", prompt_template="internlm2_chat",
                                   max_length=max_length, pack_to_max_length=False), tok,
                       cache_root=case / "cache0", log=lambda s: None)
    report = built.report
    mean = report["tokens"] / report["samples"]
    budget = max(max_length, int(round(SAMPLES_PER_STEP * mean / 64)) * 64)
    return {"model": model, "data": data, "case": case, "max_length": max_length, "budget": budget,
            "real_tokens": report["tokens"], "samples": report["samples"], "mean_tokens": mean,
            "padded_to_longest_waste": padded_waste(built, max_length),
            "trl_rows": max(1, round(SAMPLES_PER_STEP * mean / max_length))}


def padded_waste(built, max_length: int) -> float:
    """The share of HF Trainer's computed positions that are padding (its shuffled batches of 8)."""
    import random

    from kubetune.data.pack import padded_to_longest_waste

    lengths = [len(x) for x in built.dataset["input_ids"]]
    random.Random(0).shuffle(lengths)
    return padded_to_longest_waste(lengths, max_length, SAMPLES_PER_STEP)


def kubetune_config(case: dict, budget: bool) -> Path:
    per_seq_tokens = case["budget"] if budget else case["max_length"]
    accum = 1 if budget else max(1, round(SAMPLES_PER_STEP * case["mean_tokens"] / case["max_length"]))
    cfg = case["case"] / ("job.yaml" if budget else "job-no-budget.yaml")
    dataset = {"uri": str(case["data"]), "format": "alpaca", "promptTemplate": "internlm2_chat",
               "maxLength": case["max_length"]}
    if budget and per_seq_tokens > case["max_length"]:
        dataset["maxPackedLength"] = per_seq_tokens
    cfg.write_text(json.dumps({
        "model": {"uri": str(case["model"])},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": []}},
        "dataset": dataset,
        "training": {"maxEpochs": 1, "batchSize": 1, "accumulativeCounts": accum, "precision": "fp32",
                     "gradientCheckpointing": False, "seed": 0, "logEverySteps": 1000, "warmupRatio": 0.0,
                     "optimizer": {"lr": 2e-4}},
        "checkpoints": {"everySteps": 100000, "keep": 1}}))
    return cfg


def run_side(side: str, case: dict, tmp: Path, profile: Path | None = None, budget: bool = True) -> dict:
    from train_workers import HF, TRL, WRAP

    work, cache = tmp / "w", tmp / "c"
    env = {"TOKENIZERS_PARALLELISM": "false", "KUBETUNE_CACHE": str(cache)}
    if side == "kubetune":
        cmd = [sys.executable, "-m", "kubetune", "train", str(kubetune_config(case, budget)), "--work-dir", str(work)]
        if profile:
            env["KUBETUNE_PROFILE"] = str(profile)
    else:
        payload = {"model": str(case["model"]), "data": str(case["data"]), "max_length": case["max_length"],
                   "work": str(work), "cache": str(cache), "trl_rows": case["trl_rows"]}
        cmd = [sys.executable, "-c", HF if side == "hf" else TRL, json.dumps(payload)]
    out = subprocess.run([sys.executable, "-c", WRAP, json.dumps(cmd), json.dumps(env)], capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"{side} failed:\n{out.stderr[-5000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if side == "kubetune":
        scalars = [json.loads(line) for line in next(work.glob("*/vis_data/scalars.json")).read_text().splitlines()]
        result.update(loop_seconds=sum(s["step_time"] for s in scalars), steps=len(scalars),
                      losses=[s["loss"] for s in scalars])
    else:
        result.update(json.loads(result.pop("stdout_tail")[0]))
    result.pop("stdout_tail", None)
    return result


SIDES = ("kubetune", "hf", "trl")
NAMES = {"kubetune": "kubetune (token budget)", "hf": "HF Trainer + PEFT (padded)",
         "trl": "TRL SFTTrainer (padding-free)"}


def run_case(case: dict, repeats: int) -> dict:
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for r in range(repeats):
        order = SIDES[r % 3:] + SIDES[:r % 3]  # each side runs first, second and third in turn
        for side in order:
            with tempfile.TemporaryDirectory(dir=case["case"]) as tmp:
                res = run_side(side, case, Path(tmp))
            runs[side].append(res)
            print(f"    repeat {r + 1} {NAMES[side]:30} process {res['process_seconds']:7.1f} s  loop "
                  f"{res['loop_seconds']:7.1f} s  {res['steps']} steps  peak {res['peak_rss_mb']:.0f} MB", flush=True)
    summary = {}
    for side, rs in runs.items():
        proc = [x["process_seconds"] for x in rs]
        loop = [x["loop_seconds"] for x in rs]
        losses = rs[0]["losses"]
        summary[side] = {
            "tool": NAMES[side], "process_seconds": proc, "loop_seconds": loop,
            "process_median": statistics.median(proc), "loop_median": statistics.median(loop),
            "steps": rs[0]["steps"], "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
            "mean_loss": sum(losses) / len(losses), "last_losses_mean": _tail_mean(losses)}
    k = summary["kubetune"]
    for side in ("hf", "trl"):
        b = summary[side]
        k[f"process_ratio_vs_{side}"] = b["process_median"] / k["process_median"]
        k[f"loop_ratio_vs_{side}"] = b["loop_median"] / k["loop_median"]
        k[f"process_ratio_vs_{side}_range"] = [min(b["process_seconds"]) / max(k["process_seconds"]),
                                                max(b["process_seconds"]) / min(k["process_seconds"])]
    return summary


def _tail_mean(losses: list[float]) -> float:
    tail = losses[-max(1, len(losses) // 4):]
    return sum(tail) / len(tail)


def profile_case(case: dict) -> dict:
    out = {}
    for budget in (False, True):
        with tempfile.TemporaryDirectory(dir=case["case"]) as tmp:
            path = Path(tmp) / "profile.json"
            res = run_side("kubetune", case, Path(tmp), profile=path, budget=budget)
            prof = json.loads(path.read_text())
        prof["process_seconds"] = res["process_seconds"]
        prof["before_run"] = res["process_seconds"] - prof["seconds_since_run_start"]
        out["token budget" if budget else "maxLength, accumulated"] = prof
    for name, prof in out.items():
        phases = prof["phases"]
        print(f"    profile ({name}): process {prof['process_seconds']:.1f} s = imports/CLI {prof['before_run']:.1f} + "
              + ", ".join(f"{k} {v['seconds']:.2f}" for k, v in phases.items())
              + f"; first step done {prof['first_step_done_after']:.1f} s after the run started")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="tiny,100m")
    parser.add_argument("--shapes", default="longtail,chat")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "train.json"))
    args = parser.parse_args()
    work = HERE / ".work" / "train"
    work.mkdir(parents=True, exist_ok=True)
    # Cases not rerun keep their last results, so one case can be measured again on its own.
    old = Path(args.out)
    cases = json.loads(old.read_text())["cases"] if old.exists() else []
    for model_name in args.models.split(","):
        for shape in args.shapes.split(","):
            case = prepare(work, model_name, shape)
            print(f"{model_name} × {shape}: {case['samples']} samples, {case['real_tokens']} tokens "
                  f"({case['mean_tokens']:.0f} per sample), HF pads away {case['padded_to_longest_waste']:.1%}; "
                  f"kubetune maxPackedLength {case['budget']}, TRL {case['trl_rows']} rows of {case['max_length']}",
                  flush=True)
            entry = {"model": model_name, "shape": shape, "rows": ROWS[(model_name, shape)],
                     **{k: v for k, v in case.items() if k not in ("model", "data", "case")}}
            if args.profile:
                entry["profile"] = profile_case(case)
            entry["sides"] = run_case(case, args.repeats)
            k = entry["sides"]["kubetune"]
            print(f"  kubetune vs HF: process {k['process_ratio_vs_hf']:.2f}x, loop {k['loop_ratio_vs_hf']:.2f}x; "
                  f"vs TRL: process {k['process_ratio_vs_trl']:.2f}x, loop {k['loop_ratio_vs_trl']:.2f}x", flush=True)
            cases = [c for c in cases if (c["model"], c["shape"]) != (model_name, shape)] + [entry]
            Path(args.out).write_text(json.dumps(_document(args, cases), indent=2))
    print(table(cases))
    print(f"wrote {args.out}")


def _document(args: argparse.Namespace, cases: list[dict]) -> dict:
    return {"benchmark": "LoRA training throughput, whole process and loop", "repeats": args.repeats,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "gpu": False},
            "cases": cases}


def table(cases: list[dict]) -> str:
    lines = ["| model × data | side | process s (median, min–max) | loop s | peak RSS MB | kubetune ratio "
             "(process / loop) |", "|---|---|---|---|---|---|"]
    for c in cases:
        k = c["sides"]["kubetune"]
        for side, s in c["sides"].items():
            ratio = "" if side == "kubetune" else \
                f"**{k[f'process_ratio_vs_{side}']:.2f}×** / {k[f'loop_ratio_vs_{side}']:.2f}×"
            lines.append(f"| {c['model']} × {c['shape']} | {s['tool']} | {s['process_median']:.1f} "
                         f"({min(s['process_seconds']):.1f}–{max(s['process_seconds']):.1f}) | "
                         f"{s['loop_median']:.1f} | {s['peak_rss_mb']:.0f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
