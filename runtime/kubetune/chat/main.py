"""Entry points of `kubetune chat` and `kubetune serve`: named steps from flags to a running engine."""

from __future__ import annotations

import sys
from typing import Any

from kubetune.errors import UserError
from kubetune.data.templates import PROMPT_TEMPLATES, system_text

from .keys import read_keys


def _log(message: str) -> None:
    print(f"kubetune: {message}", file=sys.stderr, flush=True)


def _load(args: Any) -> Any:

    from kubetune.model.load import load

    _log(f"loading {args.model_name_or_path}" + (f" with adapter {args.adapter}" if args.adapter else ""))
    return _checked(load(args.model_name_or_path, args.adapter, args.bits, args.torch_dtype,
                         getattr(args, "offload_folder", None), getattr(args, "trust_remote_code", False)), 1)


def _checked(loaded: Any, max_batch: int) -> Any:
    from .selfcheck import check_batched_decoding

    check_batched_decoding(loaded.model, loaded.tokenizer, loaded.model.config.model_type, max_batch)
    return loaded


def prompter_for(args: Any, loaded: Any, trained: tuple[str | None, str | None] | None = None) -> Any:
    """The flags win; otherwise the template and system prompt the adapter was trained with (`trained`, else the
    loaded model's); else the tokenizer's."""
    from .prompt import Prompter, context_window

    trained_template, trained_system = trained or (loaded.template, loaded.system)
    template = args.prompt_template if args.prompt_template != "auto" else (trained_template or "auto")
    if template != "auto" and template not in PROMPT_TEMPLATES:
        raise UserError(f"--prompt-template {template}: unknown (one of auto, {', '.join(PROMPT_TEMPLATES)})")
    if template == "auto" and not getattr(loaded.tokenizer, "chat_template", None):
        raise UserError(f"{args.model_name_or_path}: the tokenizer has no chat_template; pass --prompt-template")
    system = system_text(args.system, args.system_template, getattr(args, "bot_name", "BOT"))
    if system is None and args.prompt_template == "auto":
        system = trained_system
    return Prompter(loaded.tokenizer, template, system, context_window(loaded.model, loaded.tokenizer))


def seed_all(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def chat(args: Any) -> int:
    from .engine import Engine
    from .repl import Chat, interactive, one_shot
    from .sampling import Sampling

    if args.with_plugins and args.prompt_template != "moss_sft":
        raise UserError("--with-plugins needs --prompt-template moss_sft --system-template moss_sft (MOSS's "
                        "command format)")
    seed_all(args.seed)
    loaded = load_llava_for(args) if args.llava else _load(args)
    prompter = prompter_for(args, loaded)
    stops = prompter.stop_words(args.stop_words)
    sampling = Sampling(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=stops)
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=1, eos_ids=prompter.eos_ids())
    session = Chat(engine, prompter, sampling, set(args.with_plugins), stream=not args.no_streamer)
    if args.image:  # XTuner's LLaVA chat: the image goes before the first question (again after RESET)
        _attach_image(loaded, args.image, session)
    try:
        if args.prompt is not None:
            return one_shot(session, args.prompt)
        return interactive(session, args.bot_name)
    except KeyboardInterrupt:
        print("\nLog: Exit!", flush=True)
        return 130
    finally:
        engine.shutdown(drain=False, timeout=5)


def load_llava_for(args: Any) -> Any:
    from kubetune.vision.load import load_llava

    if args.adapter:
        raise UserError("--adapter and --llava cannot be combined (the LLaVA directory holds its llm_adapter/)")
    _log(f"loading {args.model_name_or_path} with LLaVA {args.llava}")
    return load_llava(args.model_name_or_path, args.llava, args.visual_encoder, args.visual_select_layer,
                      args.bits, args.torch_dtype)


def _attach_image(loaded: Any, image: str, session: Any) -> None:
    from kubetune.vision.image import open_image
    from kubetune.vision.tokens import IMAGE_TOKEN

    if not hasattr(loaded, "processor"):
        raise UserError("--image needs --llava (a LLaVA projector directory) and --visual-encoder")
    pixels = loaded.processor(open_image(image, where=f"--image {image}"))
    weight = next(loaded.model.encoder.parameters())
    loaded.model.images = pixels.unsqueeze(0).to(device=weight.device, dtype=weight.dtype)
    session.first_turn_prefix = session.prompter.trusted_prefix = IMAGE_TOKEN + "\n"
    session.expand = loaded.expand
    session.extra_tokens = loaded.model.patches - 1


def serve(args: Any) -> int:
    from .engine import Engine
    from .metrics import ServingMetrics
    from .server import Limits, build_app, serve as run_server

    keys = read_keys(args.api_key_file)
    name = args.served_model_name or _default_name(args.model_name_or_path)
    adapters = _adapters(args.adapter, name)
    loaded = _load_served(args, adapters)
    served = _served(args, loaded, name)
    prompter = served[name].prompter
    limits = Limits(context=prompter.context,
                    max_prompt_tokens=min(args.max_prompt_tokens or prompter.context, prompter.context),
                    max_tokens=args.max_tokens_limit or prompter.context,
                    default_max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                    stop_words=tuple(args.stop_words), api_keys=keys, read_timeout=args.read_timeout)
    metrics = ServingMetrics(name)
    # A template's stop token ends any row: the templates of one base model's adapters agree on them in practice.
    eos = set().union(*(s.prompter.eos_ids() for s in served.values()))
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=args.max_batch, max_waiting=args.max_waiting,
                    eos_ids=eos, observer=metrics, per_row_adapters=bool(adapters))
    app = build_app(engine, served, limits, metrics)
    for model, s in served.items():
        _log(f"model {model}" + (f" (adapter over {name})" if s.adapter else "") + f": template "
             f"{s.prompter.template}")
    _log(f"context {prompter.context} tokens, batch up to {args.max_batch}, queue up to {args.max_waiting}"
         + (", API key required" if keys else ""))
    if not keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: listening on {args.host} with no API key: anyone who can reach the port can use the model "
             "(--api-key-file or KUBETUNE_API_KEYS)")
    return run_server(app, engine, args.host, args.port, args.drain_timeout, _log, args.read_timeout)


def _adapters(values: list[str], base: str) -> dict[str, str]:
    """`--adapter NAME=URI` (or a bare URI, named after its directory), in order, names unique and not the base's."""
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, uri = value.partition("=")
        if not sep or "/" in name or ":" in name:
            name, uri = _default_name(value), value
        if name in adapters or name == base:
            raise UserError(f"--adapter {value}: the name {name} is already served (give NAME=URI with another "
                            "name, or --served-model-name for the base)")
        adapters[name] = uri
    return adapters


def _load_served(args: Any, adapters: dict[str, str]) -> Any:
    from kubetune.model.load import load_adapters

    _log(f"loading {args.model_name_or_path}" + (f" with adapters {', '.join(adapters)}" if adapters else ""))
    return _checked(load_adapters(args.model_name_or_path, adapters, args.bits, args.torch_dtype,
                                  args.trust_remote_code), args.max_batch)


def _served(args: Any, loaded: Any, name: str) -> dict[str, Any]:
    from .server import Served

    served = {name: Served(prompter_for(args, loaded))}
    for adapter, trained in loaded.adapters.items():
        served[adapter] = Served(prompter_for(args, loaded, trained), adapter)
    return served


def _default_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or "model"
