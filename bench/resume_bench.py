"""Resume time: continuing a run from its checkpoint at step 10 vs at step 10 000 of the same schedule.

    python bench/resume_bench.py [--late 10000]

A tiny Llama on short synthetic rows, a schedule of 2 × `--late` steps with a checkpoint at 10 and at `--late`. Each
resume is a fresh `kubetune train --resume CKPT` process that trains exactly one more step and stops; the figure is
the wall time of that process. kubetune restores the stream position as a counter, so the late resume should cost
what the early one does (goal ≤ 1.1×); XTuner replays the data loader up to the position ("Advance dataloader N
steps", its issue #991), which grows with N. Writes bench/results/resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def kubetune(*args: str, env: dict | None = None) -> float:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "kubetune", "train", *args], capture_output=True, text=True,
                         env=dict(os.environ, **(env or {})))
    if out.returncode not in (0, 143):
        raise SystemExit(out.stderr[-3000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--late", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "resume.json"))
    args = parser.parse_args()
    from kubetune.tiny import build

    work = HERE / ".work" / "resume"
    work.mkdir(parents=True, exist_ok=True)
    model = build(work / "model")
    rng = random.Random(0)
    words = "alpha beta gamma delta sun moon tree river stone cloud".split()
    data = work / "rows.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": " ".join(rng.choices(words, k=3)), "input": "",
                                          "output": " ".join(rng.choices(words, k=3))}) for _ in range(2000)) + "\n")
    total = 2 * args.late
    cfg = work / "job.json"
    cfg.write_text(json.dumps({
        "model": {"uri": str(model)}, "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "dataset": {"uri": str(data), "format": "alpaca", "promptTemplate": "default", "maxLength": 32,
                    "packToMaxLength": False},
        "training": {"maxSteps": total, "batchSize": 1, "accumulativeCounts": 1, "precision": "fp32",
                     "gradientCheckpointing": False, "seed": 0, "logEverySteps": 1000},
        "checkpoints": {"everySteps": 10, "keep": -1}}))
    run = work / "run"
    env = {"KUBETUNE_CACHE": str(work / "cache")}
    if not (run / f"iter_{args.late}").is_dir():
        print(f"training to step {args.late} to get a real late checkpoint (once)...", flush=True)
        # A checkpoint every 10 steps (so both 10 and `late` exist); all but those two are deleted afterwards.
        kubetune(str(cfg), "--work-dir", str(run), env={**env, "KUBETUNE_STOP_AFTER_STEP": str(args.late)})
        for ckpt in run.glob("iter_*"):
            if ckpt.name not in ("iter_10", f"iter_{args.late}"):
                subprocess.run(["rm", "-rf", str(ckpt)], check=True)
    times: dict[int, list[float]] = {10: [], args.late: []}
    for _ in range(args.repeats):
        for step in times:
            target = work / f"resume_{step}"
            subprocess.run(["rm", "-rf", str(target)], check=True)
            times[step].append(kubetune(str(cfg), "--work-dir", str(target), "--resume", str(run / f"iter_{step}"),
                                        "--cfg-options", "checkpoints.everySteps=1000000",
                                        env={**env, "KUBETUNE_STOP_AFTER_STEP": str(step + 1)}))
    early, late = statistics.median(times[10]), statistics.median(times[args.late])
    ratio = late / early
    print(f"  resume at step 10: {early:.2f} s   at step {args.late}: {late:.2f} s   ratio {ratio:.3f} (goal <= 1.1)")
    Path(args.out).write_text(json.dumps({
        "benchmark": "resume time (process start to the first step after the checkpoint)", "early_step": 10,
        "late_step": args.late, "schedule_steps": total, "seconds": {str(k): v for k, v in times.items()},
        "median_early_s": early, "median_late_s": late, "ratio": ratio,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
