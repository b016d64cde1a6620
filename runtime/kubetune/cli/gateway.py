"""`kubetune gateway`: flags (the proxy is kubetune.chat.gateway)."""

from __future__ import annotations

import argparse
import sys

from .errors import UserError


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description="Forward every request to UPSTREAM once it carries one of the "
                       "API keys (/health and /metrics need none): the key check an engine:vllm ChatEndpoint's pods "
                       "run in front of vLLM, whose own --api-key leaves routes outside /v1 open.")
    p.add_argument("--upstream", required=True, help="the model server's base URL (http://127.0.0.1:PORT)")
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=int, default=8000, help="listen port")
    p.add_argument("--api-key-file", required=True, help="accepted API keys, one per line (a mounted Secret)")
    p.add_argument("--read-timeout", type=float, default=30.0, help="seconds a request's headers may take to arrive")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.chat import gateway
    from kubetune.chat.keys import read_keys

    if not args.upstream.startswith(("http://", "https://")):
        raise UserError(f"--upstream {args.upstream}: give a URL (http://127.0.0.1:8001)")
    keys = read_keys(args.api_key_file)
    return gateway.run(args.upstream, args.host, args.port, keys, args.read_timeout,
                       lambda m: print(f"kubetune: {m}", file=sys.stderr, flush=True))
