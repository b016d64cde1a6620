"""Serving throughput: `kubetune serve` (continuous batching) vs a sequential HF `generate` server, same run, same
model, same prompts.

    python bench/serve_bench.py [--clients 8 --requests 4 --max-tokens 64]

A small random Llama (hidden 256, 4 layers) built locally; each of N concurrent clients (the real `openai` client,
streaming) sends R chat requests with fixed prompts and max_tokens, greedy. Reported per server: aggregate generated
tokens/s (usage.completion_tokens summed over wall time), time to first token p50/p95 (first content chunk, measured
by the client), end-to-end p50. Goal: ≥4× the baseline's tokens/s. Then a real load generator, GuideLLM, drives
each server with the same concurrency and request count (synthetic 64-token prompts) and reports in its own terms:
TTFT and inter-token latency (median, p95) and output tokens/s. Writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.chatkit import free_port, http  # noqa: E402  (the tests' own server helpers)

PROMPTS = ["Write one sentence about the sea.", "Give three tips for staying healthy.",
           "What is the capital of France?", "Explain LoRA in one line.", "Name a colour.",
           "Summarise the plot of a mystery novel.", "How do I sort a list in Python?", "Say hello."]


def start(argv: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{argv[:4]} exited: {log.read_text()[-2000:]}")
        try:
            if http("GET", f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{argv[:4]} never became healthy")


def load(port: int, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def one(i: int) -> tuple[float, float, int]:
        start = time.perf_counter()
        first, tokens = None, 0
        stream = client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], max_tokens=max_tokens,
            temperature=0, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return first or time.perf_counter() - start, time.perf_counter() - start, tokens

    one(0)  # warm-up outside the measurement
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients * requests)))
    wall = time.perf_counter() - t
    ttft = sorted(r[0] for r in results)
    return {"tokens": sum(r[2] for r in results), "wall_s": round(wall, 3),
            "tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
            "ttft_p50_s": round(statistics.median(ttft), 4), "ttft_p95_s": round(ttft[int(0.95 * (len(ttft) - 1))], 4),
            "e2e_p50_s": round(statistics.median(r[1] for r in results), 4)}


def guidellm(port: int, model: Path, clients: int, requests: int, max_tokens: int, out: Path) -> dict:
    """GuideLLM's concurrent profile against the server: its own client, tokenizer-sized synthetic prompts, its own
    statistics (read from the JSON report it writes)."""
    argv = [str(Path(sys.executable).parent / "guidellm"), "run",
            "--backend", f"kind=openai_http,target=http://127.0.0.1:{port},model=bench",
            "--profile", f"kind=concurrent,streams={clients}",
            "--constraint", f"kind=max_requests,count={clients * requests}",
            "--tokenizer", f"kind=huggingface_auto,model={model}",
            "--data", f"kind=synthetic_text,prompt_tokens=64,output_tokens={max_tokens}",
            "--output", f"kind=json,path={out}", "--disable-console"]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=1800)
    m = json.loads(out.read_text())["benchmarks"][0]["metrics"]

    def stat(name: str, key: str) -> float:
        s = m[name]["successful"]
        return round(s["median"] if key == "p50" else s["percentiles"][key] if key != "mean" else s["mean"], 2)

    return {"requests_ok": m["request_totals"]["successful"], "requests_failed": m["request_totals"]["errored"],
            "ttft_p50_ms": stat("time_to_first_token_ms", "p50"), "ttft_p95_ms": stat("time_to_first_token_ms", "p95"),
            "itl_p50_ms": stat("inter_token_latency_ms", "p50"), "itl_p95_ms": stat("inter_token_latency_ms", "p95"),
            "output_tokens_per_s": stat("output_tokens_per_second", "mean")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    from kubetune.tiny import build

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model = build(work / "model", hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4)
    rows, judged = {}, {}
    for name, argv in {
        "kubetune serve": [sys.executable, "-m", "kubetune", "serve", str(model), "--served-model-name", "bench",
                           "--max-batch", str(args.clients), "--host", "127.0.0.1", "--port"],
        "sequential HF generate": [sys.executable, str(HERE / "naive_server.py"), str(model)],
    }.items():
        port = free_port()
        proc = start(argv + [str(port)], port, work / f"{name.split()[0]}.log")
        try:
            rows[name] = load(port, args.clients, args.requests, args.max_tokens)
            judged[name] = guidellm(port, model, args.clients, args.requests, args.max_tokens,
                                    work / f"guidellm-{name.split()[0]}.json")
        finally:
            proc.terminate()
            proc.wait(60)
    base, ours = rows["sequential HF generate"], rows["kubetune serve"]
    ratio = ours["tokens_per_s"] / base["tokens_per_s"]
    print(f"\n{'server':<24}{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p95':>10}{'e2e p50':>10}")
    for name, r in rows.items():
        print(f"{name:<24}{r['tokens_per_s']:>10}{r['ttft_p50_s']:>10}{r['ttft_p95_s']:>10}{r['e2e_p50_s']:>10}")
    print(f"\nkubetune serve: {ratio:.2f}x the baseline's tokens/s (goal >= 4x)")
    print(f"\nGuideLLM ({args.clients} concurrent streams, {args.clients * args.requests} requests, 64-token prompts):")
    print(f"{'server':<24}{'ok':>5}{'TTFT p50 ms':>13}{'TTFT p95 ms':>13}{'ITL p50 ms':>12}{'out tok/s':>11}")
    for name, r in judged.items():
        print(f"{name:<24}{r['requests_ok']:>5}{r['ttft_p50_ms']:>13}{r['ttft_p95_ms']:>13}{r['itl_p50_ms']:>12}"
              f"{r['output_tokens_per_s']:>11}")
    guide_ratio = judged["kubetune serve"]["output_tokens_per_s"] / judged["sequential HF generate"]["output_tokens_per_s"]
    out = {"benchmark": "serve", "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, no GPU",
           "model": "random Llama, hidden 256, 4 layers, vocab ~800 (kubetune.tiny)", "clients": args.clients,
           "requests_per_client": args.requests, "max_tokens": args.max_tokens, "results": rows,
           "tokens_per_s_ratio": round(ratio, 2), "goal": ">= 4x tokens/s", "met": ratio >= 4,
           "guidellm": {"profile": f"concurrent, {args.clients} streams", "requests": args.clients * args.requests,
                        "prompt_tokens": 64, "results": judged,
                        "output_tokens_per_s_ratio": round(guide_ratio, 2)}}
    (HERE / "results" / "serve.json").write_text(json.dumps(out, indent=2) + "\n")
    print("wrote bench/results/serve.json")


if __name__ == "__main__":
    main()
