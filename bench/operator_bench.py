"""Operator throughput and memory: FineTuneJobs created at once against the test control plane (real kube-apiserver +
etcd from tests/controlplane), the operator running as `python -m kubetune_operator`.

    python bench/operator_bench.py [--jobs 500 --total 1000]

The 500 are created first with the operator stopped (so they exist "at once", and the bench's own creation speed
does not count), then the operator starts. Reported: time from its start until every job has its Job and a status
phase (jobs/s, start-up included), the operator's peak
RSS after `--total` jobs exist, and apiserver requests per job (apiserver_request_total, minus the bench's own).
Goals (issue #8): >= 20 jobs/s, <= 200 MB RSS at 1000 jobs. No baseline exists for an operator of this shape; the
figures are read against the goals. Writes bench/results/operator.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.controlplane.cluster import ControlPlane  # noqa: E402

SPEC = {"model": {"uri": "hf://org/model"}, "dataset": {"uri": "s3://data/train.jsonl"},
        "resources": {"nodes": 2, "gpusPerNode": 8}}


def requests_total(plane: ControlPlane) -> float:
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("apiserver_request_total{"))


def create(plane: ControlPlane, names: list[str]) -> None:
    def one(chunk: list[str]) -> None:
        items = [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                  "metadata": {"name": n, "namespace": "bench"}, "spec": SPEC} for n in chunk]
        plane.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
                      timeout=600)

    chunks = [names[i::8] for i in range(8)]
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, chunks))


def settled(plane: ControlPlane, expected: int) -> tuple[int, int]:
    jobs = json.loads(plane.kubectl("get", "jobs", "-n", "bench", "-o", "json", timeout=120).stdout)["items"]
    ftjs = json.loads(plane.kubectl("get", "ftj", "-n", "bench", "-o", "json", timeout=120).stdout)["items"]
    return len(jobs), sum(1 for f in ftjs if (f.get("status") or {}).get("phase"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--total", type=int, default=1000)
    args = ap.parse_args()
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix="operator-bench-"))).start()
    log = (plane.work / "operator.log").open("w")
    op = None
    try:
        plane.kubectl("create", "namespace", "bench")
        t = time.perf_counter()
        create(plane, [f"job-{i:04d}" for i in range(args.jobs)])
        created_s = time.perf_counter() - t
        before = requests_total(plane)
        t = time.perf_counter()
        op = subprocess.Popen([sys.executable, "-m", "kubetune_operator"], stdout=log, stderr=subprocess.STDOUT,
                              env={**plane.env(), "KUBETUNE_OPERATOR_METRICS_PORT": "0",
                                   "KUBETUNE_OPERATOR_HEALTH": ""})
        procs = {"operator": op.pid, **{name: p.pid for name, p in plane.procs}}
        cpu_before = {name: (0.0 if name == "operator" else cpu_seconds(pid)) for name, pid in procs.items()}
        polls = 0
        while True:
            jobs, with_status = settled(plane, args.jobs)
            polls += 3
            if jobs >= args.jobs and with_status >= args.jobs:
                break
            time.sleep(0.5)
        wall = time.perf_counter() - t
        after = requests_total(plane)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in procs.items()}
        per_job = (after - before - polls) / args.jobs  # minus the bench's own lists
        create(plane, [f"job-{i:04d}" for i in range(args.jobs, args.total)])
        while settled(plane, args.total)[0] < args.total:
            time.sleep(1)
        time.sleep(5)
        rss = peak_rss_mb(op.pid)
    finally:
        if op is not None:
            op.terminate()
            op.wait(30)
        plane.stop()
    rate = args.jobs / wall
    out = {"benchmark": "operator", "machine": f"{platform.machine()}, 2 CPUs shared with the apiserver and etcd",
           "jobs": args.jobs, "bench_creation_s": round(created_s, 2),
           "operator_start_to_all_settled_s": round(wall, 2),
           "jobs_per_s": round(rate, 1), "operator_peak_rss_mb_at_total": round(rss, 1), "total_jobs": args.total,
           "apiserver_requests_per_job": round(per_job, 1), "cpu_seconds_during_the_500": cpu,
           "goals": {"jobs_per_s": ">= 20", "rss_mb_at_1000": "<= 200"},
           "met": {"jobs_per_s": rate >= 20, "rss": rss <= 200}}
    print(json.dumps(out, indent=2))
    (HERE / "results" / "operator.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
