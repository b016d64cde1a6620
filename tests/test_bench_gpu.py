"""The prepared GPU benchmark (bench/gpu/) runs end to end in its tiny CPU mode, so that the next task lent a GPU
finds it working: both sides train, every row has its figures, the JSON is written."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu" / "gpu_bench.py"), "--device", "cpu", "--tiny",
                          "--sides", "kubetune,trl", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["tool"], r["method"]): r for r in report["results"]}
    # kubetune-chunked is kubetune with its loss kernel forced: on a CPU that is what kubetune picks anyway.
    assert set(rows) == {("kubetune", "lora"), ("trl", "lora"), ("kubetune", "full"), ("trl", "full")}
    for row in rows.values():
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["measured_steps"] == 2
    assert rows[("kubetune", "lora")]["loss_kernel"] == "chunked"  # no liger on a CPU
    assert abs(rows[("kubetune", "lora")]["final_loss"] - rows[("trl", "lora")]["final_loss"]) < 0.5
    assert set(report["ratios"]) >= {"lora: kubetune / trl tokens/s", "full: kubetune / trl tokens/s"}
