"""`kubetune chat` and `kubetune serve`: flags (the steps are in kubetune.chat.main)."""

from __future__ import annotations

import argparse

from kubetune.api.chat import GenerationSpec
from kubetune.data.templates import PROMPT_TEMPLATES, SYSTEM_TEMPLATES

from .errors import UserError

# argparse refuses an unknown name before anything loads, and the help lists every name, as XTuner's does.
PROMPT_NAMES = ["auto", *PROMPT_TEMPLATES]
TEMPLATES_HELP = ("prompt template: auto (the tokenizer's chat_template, or the one the adapter was trained with) "
                  f"or one of XTuner's: {', '.join(PROMPT_TEMPLATES)}")


def _generation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-template", default="auto", choices=PROMPT_NAMES, metavar="NAME", help=TEMPLATES_HELP)
    system = p.add_mutually_exclusive_group()
    system.add_argument("--system", default=None, help="system prompt")
    system.add_argument("--system-template", default=None, choices=list(SYSTEM_TEMPLATES), metavar="NAME",
                        help=f"predefined system prompt: one of {', '.join(SYSTEM_TEMPLATES)}")
    p.add_argument("--bits", type=int, choices=[4, 8], default=None, help="load the model in 4 or 8 bits")
    p.add_argument("--torch-dtype", choices=["fp16", "bf16", "fp32", "auto"], default="auto", help="weight dtype")
    p.add_argument("--stop-words", nargs="+", default=[], help="extra stop words")
    g = GenerationSpec()  # one definition of the sampling defaults: the ChatEndpoint's
    p.add_argument("--max-new-tokens", type=int, default=g.max_new_tokens, help="longest answer")
    p.add_argument("--temperature", type=float, default=g.temperature, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=g.top_k, help="top-k sampling (0 disables)")
    p.add_argument("--top-p", type=float, default=g.top_p, help="nucleus sampling")
    p.add_argument("--repetition-penalty", type=float, default=g.repetition_penalty, help="repetition penalty")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code (InternLM2, "
                   "ChatGLM3, Baichuan2...)")


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description=summary)
    p.add_argument("model_name_or_path", help="model (hf://, s3://, pvc://, path)")
    _generation(p)
    if mode == "chat":
        p.add_argument("--adapter", default=None, help="LoRA adapter directory (merged into the weights)")
        p.add_argument("--llava", default=None, help="LLaVA directory (projector, adapters)")
        p.add_argument("--visual-encoder", default=None, help="CLIP vision encoder")
        p.add_argument("--visual-select-layer", type=int, default=None,
                       help="encoder layer whose features are used (default: the trained one, else -2)")
        p.add_argument("--image", default=None, help="image for the first turn")
        p.add_argument("--bot-name", default="BOT", help="bot name in the moss_sft system prompt")
        p.add_argument("--with-plugins", nargs="+", choices=["calculate", "solve", "search"], default=[],
                       help="MOSS plugins")
        p.add_argument("--no-streamer", action="store_true", help="print answers when complete")
        p.add_argument("--offload-folder", default=None, help="where to offload weights that do not fit")
        p.add_argument("--prompt", default=None, help="answer one prompt and exit (non-interactive)")
    else:
        p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]URI",
                       help="a LoRA adapter served beside the base model under NAME (default: its directory's name); "
                            "repeat for more. A request's `model` picks the adapter, or the base by its name")
        p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: every interface; the "
                       "operator's pods do that behind a Service)")
        p.add_argument("--port", type=int, default=8000, help="listen port")
        p.add_argument("--api-key-file", default=None,
                       help="file with accepted API keys, one per line (else $KUBETUNE_API_KEYS, comma-separated; "
                            "neither = no authentication)")
        p.add_argument("--served-model-name", default=None, help="the base model's name clients send (default: "
                       "its directory's name)")
        p.add_argument("--max-batch", type=int, default=16, help="most requests decoded together")
        p.add_argument("--max-waiting", type=int, default=64, help="most requests queued; more get 429 Retry-After")
        p.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted (default: the "
                       "context window)")
        p.add_argument("--max-tokens-limit", type=int, default=None, help="largest max_tokens a request may ask for "
                       "(default: the context window)")
        p.add_argument("--read-timeout", type=float, default=30.0, help="seconds a request's headers, and then its "
                       "body, may take to arrive (else the connection is closed, or 408)")
        p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds in-flight requests get to finish "
                       "after SIGTERM")
    p.set_defaults(func=run)


def route(argv: list[str]) -> list[str]:
    """`kubetune serve ENDPOINT.yaml [--host H --port P --api-key-file F]`: the ChatEndpoint's spec becomes the same
    arguments its pods get (kubetune.api.chat.serve_arguments); what only a cluster has is refused by name."""
    if argv[0] != "serve" or len(argv) < 2 or not argv[1].endswith((".yaml", ".yml", ".json")):
        return argv
    import os

    from kubetune.api.chat import serve_arguments

    from .common import announce_local_differences, load_config

    endpoint = load_config(argv[1], kind="ChatEndpoint")
    announce_local_differences(endpoint)
    spec, rest = endpoint.spec, argv[2:]
    if spec.engine != "builtin":
        raise UserError(f"{argv[1]}: engine {spec.engine} runs in the cluster's vLLM image; here serve it with "
                        "engine builtin (or run `vllm serve` yourself)")
    for adapter in spec.adapters:
        if adapter.fine_tune_job_ref:
            raise UserError(f"{argv[1]}: adapters[{adapter.name}].fineTuneJobRef names a FineTuneJob in a cluster; "
                            "here set its uri (the job's <checkpoints.uri>/export/hf)")
    if spec.auth and "--api-key-file" not in rest and not os.environ.get("KUBETUNE_API_KEYS"):
        raise UserError(f"{argv[1]}: auth.apiKeySecretRef {spec.auth.api_key_secret_ref} is a cluster Secret and is "
                        "not read here; give the keys with --api-key-file FILE or KUBETUNE_API_KEYS, or the endpoint "
                        "would serve without them")
    adapters = {a.name: a.uri for a in spec.adapters if a.uri}
    return ["serve", *serve_arguments(spec, adapters, endpoint.metadata.name), *rest]


def run(args: argparse.Namespace) -> int:
    if args.mode == "chat" and (args.image or args.visual_encoder) and not args.llava:
        raise UserError("--image and --visual-encoder need --llava (the trained LLaVA directory)")
    from kubetune.chat import main

    return main.chat(args) if args.mode == "chat" else main.serve(args)
