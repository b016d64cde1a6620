"""Run with vLLM's parser on PYTHONPATH (.ci/vllm-parser): parse each `vllm serve` command line given as JSON on stdin
the way `vllm serve` does, check it as `vllm serve` checks it before starting, and print what vLLM understood."""

import argparse
import json
import sys

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

KEEP = ("model_tag", "served_model_name", "host", "port", "dtype", "tensor_parallel_size", "max_model_len",
        "gpu_memory_utilization", "quantization", "trust_remote_code", "enable_lora", "max_loras", "max_lora_rank",
        "generation_config", "override_generation_config", "enable_prefix_caching", "api_key")


def understood(argv: list[str]) -> dict:
    assert argv[:2] == ["vllm", "serve"], argv
    args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(argv[2:])
    validate_parsed_serve_args(args)
    AsyncEngineArgs.from_cli_args(args)  # the engine's own dataclass validation (types, ranges, literals)
    out = {k: getattr(args, k) for k in KEEP if hasattr(args, k)}
    out["lora_modules"] = [{"name": m.name, "path": m.path, "base_model_name": m.base_model_name}
                           for m in args.lora_modules or ()]
    return out


def main() -> None:
    results = []
    for argv in json.load(sys.stdin):
        try:
            results.append({"ok": understood(argv)})
        except (SystemExit, argparse.ArgumentError, ValueError, TypeError) as exc:
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    json.dump(results, sys.stdout, default=str)


if __name__ == "__main__":
    main()
