"""`kubetune serve`: an OpenAI-compatible HTTP server over the continuous-batching engine.

Requests are read (bounded in size and time), validated on the event loop, tokenized on one worker thread (so a long
prompt never stalls /health), generated on the engine thread, and streamed back as SSE.
Overload answers 429 with Retry-After (the bounded queue), SIGTERM drains: /health turns 503 so the pod leaves the
Service, in-flight answers finish (up to the drain timeout), then the engine stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import Request as HttpRequest  # module level: FastAPI resolves handler annotations by name

from .keys import OPEN_ROUTES, authorized
from .engine import Engine, EngineStopped, Event, QueueFull, Request
from .metrics import ServingMetrics
from .openai_api import (ApiError, ChatCompletionRequest, CompletionRequest, chat_chunk, chat_response,
                         completion_response, models, new_id, pydantic_error, usage_chunk)
from .prompt import Prompter
from .sampling import Sampling


@dataclass
class Limits:
    context: int
    max_prompt_tokens: int
    max_tokens: int  # the most a request may ask for
    default_max_tokens: int
    temperature: float  # the defaults come from the flags, whose defaults are the ChatEndpoint's (api.chat)
    top_k: int
    top_p: float
    repetition_penalty: float
    stop_words: tuple[str, ...] = ()  # besides each template's own
    api_keys: frozenset[str] = field(default_factory=frozenset)
    read_timeout: float = 30.0  # seconds for the headers, then the body, to arrive: trickling clients hold nothing

    @property
    def max_body_bytes(self) -> int:
        # Room for the longest accepted prompt even when every character is JSON-escaped, and never below 1 MiB.
        return (1 << 20) + 32 * self.max_prompt_tokens


@dataclass(frozen=True)
class Served:
    """A model name clients may ask for: how its prompts are rendered and the adapter its rows go through."""

    prompter: Prompter
    adapter: str | None = None  # None: the base weights


def build_app(engine: Engine, served: dict[str, Served], limits: Limits, metrics: ServingMetrics) -> Any:
    """`served` maps every model name to what answers it; the first is the base model's."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="kubetune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.draining = False
    created = int(time.time())
    name = next(iter(served))
    # One thread: tokenizers are not safe to share across threads, and one huge prompt must not take every core.
    tokenize = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kubetune-tokenize")

    async def off_loop(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(tokenize, fn, *args)

    @app.exception_handler(ApiError)
    async def api_error(_: Any, exc: ApiError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Any, exc: HTTPException) -> Any:
        return await api_error(_, ApiError(exc.status_code, str(exc.detail), type_="invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Any, exc: RequestValidationError) -> Any:
        return await api_error(_, pydantic_error(exc))

    @app.middleware("http")
    async def count_and_authorize(request: HttpRequest, call_next: Any) -> Any:
        route = request.url.path
        try:
            if limits.api_keys and route not in OPEN_ROUTES and \
                    not authorized(request.headers.get("authorization", ""), limits.api_keys):
                raise ApiError(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                               code="invalid_api_key")
            response = await call_next(request)
        except ApiError as exc:
            response = await api_error(request, exc)
        known = route in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")
        metrics.http.labels(route if known else "other", str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> Any:
        if app.state.draining or not engine.thread.is_alive():
            return JSONResponse({"status": "draining" if app.state.draining else "engine stopped"}, status_code=503)
        running, waiting = engine.stats()
        return {"status": "ok", "model": name, "running": running, "waiting": waiting}

    @app.get("/metrics")
    async def prometheus() -> Any:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def list_models() -> Any:
        return models(list(served), created)

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest) -> Any:
        body = _parse(await _read_body(request, limits), ChatCompletionRequest, served)
        try:
            ids = await off_loop(served[body.model].prompter.render, body.conversation())
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        return await _answer(request, body, ids, "messages", "chatcmpl", _chat_stream, chat_response)

    @app.post("/v1/completions")
    async def complete(request: HttpRequest) -> Any:
        body = _parse(await _read_body(request, limits), CompletionRequest, served)
        ids = await off_loop(served[body.model].prompter.tokenizer.encode, body.text())
        return await _answer(request, body, ids, "prompt", "cmpl", _completion_stream, completion_response)

    async def _answer(request: HttpRequest, body: Any, ids: list[int], prompt_field: str, prefix: str, stream: Any,
                      respond: Any) -> Any:
        rid = new_id(prefix)
        if not ids:
            raise ApiError(400, "the prompt is empty", param=prompt_field)
        model = served[body.model]
        sampling = _sampling(body, len(ids), prompt_field, limits, model.prompter.stop_words(limits.stop_words))
        job, events = _submit(engine, ids, sampling, model.adapter)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(rid, body.model, job, events, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, reason = await _collect_while_connected(request, job, events)
        return respond(rid, body.model, text, reason, len(ids), len(job.generated))

    return app


async def _read_body(request: HttpRequest, limits: Limits) -> bytes:
    """The body, refused with 413 past the limit (before reading it when Content-Length says so) and 408 when it
    does not arrive in time: a 20 MB prompt is never held in memory, a trickling client never holds a worker."""
    limit = limits.max_body_bytes
    too_big = ApiError(413, f"the request body is over this server's limit of {limit} bytes", code="body_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), limits.read_timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {limits.read_timeout:g} s",
                       code="request_timeout") from None
    return b"".join(chunks)


def _parse(raw: bytes, model: Any, served: dict[str, Served]) -> Any:
    from pydantic import ValidationError

    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode()  # a lone surrogate ("\ud800") cannot be tokenized
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except UnicodeEncodeError:
        raise ApiError(400, "the request body holds a lone UTF-16 surrogate, which is not text") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise pydantic_error(exc) from None
    if body.model not in served:
        raise ApiError(404, f"The model `{body.model}` does not exist (this server serves "
                            f"{', '.join(f'`{n}`' for n in served)}).", param="model", code="model_not_found")
    return body


def _sampling(body: Any, prompt_len: int, prompt_field: str, limits: Limits, stops: tuple[str, ...]) -> Sampling:
    if prompt_len > limits.max_prompt_tokens:
        raise ApiError(400, f"the prompt is {prompt_len} tokens; this server accepts at most "
                            f"{limits.max_prompt_tokens}", param=prompt_field, code="context_length_exceeded")
    room = limits.context - prompt_len
    requested = body.requested_tokens()
    if requested is not None and requested > limits.max_tokens:
        raise ApiError(400, f"max_tokens is {requested}; this server allows at most {limits.max_tokens}",
                       param="max_tokens")
    if requested is not None and requested > room:
        raise ApiError(400, f"this model's context window is {limits.context} tokens; the prompt has {prompt_len} "
                            f"and max_tokens asks for {requested}", param="max_tokens",
                       code="context_length_exceeded")
    if room < 1:
        raise ApiError(400, f"the prompt fills the {limits.context}-token context window", param=prompt_field,
                       code="context_length_exceeded")
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return Sampling(max_tokens=requested or min(limits.default_max_tokens, room),
                    temperature=pick(body.temperature, limits.temperature),
                    top_k=pick(body.top_k, limits.top_k), top_p=pick(body.top_p, limits.top_p),
                    repetition_penalty=pick(body.repetition_penalty, limits.repetition_penalty), seed=body.seed,
                    stop=tuple(dict.fromkeys(stops + body.stops())), ignore_eos=body.ignore_eos)


def _submit(engine: Engine, ids: list[int], sampling: Sampling,
            adapter: str | None) -> tuple[Request, asyncio.Queue[Event]]:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:  # from the engine's thread into this request's queue
        loop.call_soon_threadsafe(events.put_nowait, event)

    job = Request(ids, sampling, emit, adapter=adapter)
    try:
        engine.submit(job)
    except QueueFull as exc:
        raise ApiError(429, f"the server is at capacity ({exc}); retry shortly", type_="rate_limit_error",
                       code="queue_full", headers={"Retry-After": "1"}) from None
    except EngineStopped as exc:
        raise ApiError(503, str(exc), type_="server_error", headers={"Retry-After": "5"}) from None
    return job, events


async def _events(job: Request, events: asyncio.Queue[Event]) -> AsyncIterator[Event]:
    finished = False
    try:
        while not finished:
            event = await events.get()
            finished = event.finished is not None
            if event.error:
                raise ApiError(500, f"generation failed: {event.error}", type_="server_error")
            yield event
    finally:
        if not finished:  # the client went away: free the batch slot
            job.cancel()


async def _collect_while_connected(request: HttpRequest, job: Request,
                                   events: asyncio.Queue[Event]) -> tuple[str, str]:
    """A non-streaming answer, cancelled (its batch slot freed) as soon as the client hangs up."""
    collect = asyncio.ensure_future(_collect(job, events))

    async def watch() -> None:
        # The body is read, so the next ASGI message is the disconnect (what StreamingResponse listens for).
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await collect
    finally:
        watcher.cancel()


async def _collect(job: Request, events: asyncio.Queue[Event]) -> tuple[str, str]:
    parts, reason = [], "stop"
    async for event in _events(job, events):
        parts.append(event.text)
        reason = event.finished or reason
    return "".join(parts), reason


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _chat_stream(rid: str, name: str, job: Request, events: asyncio.Queue[Event],
                       include_usage: bool) -> AsyncIterator[bytes]:
    yield _sse(chat_chunk(rid, name, {"role": "assistant", "content": ""}, None))
    try:
        async for event in _events(job, events):
            if event.text:
                yield _sse(chat_chunk(rid, name, {"content": event.text}, None))
            if event.finished:
                yield _sse(chat_chunk(rid, name, {}, event.finished))
    except ApiError as exc:
        yield _sse(exc.body())
    if include_usage:
        yield _sse(usage_chunk(rid, name, "chat.completion.chunk", len(job.prompt), len(job.generated)))
    yield b"data: [DONE]\n\n"


async def _completion_stream(rid: str, name: str, job: Request, events: asyncio.Queue[Event],
                             include_usage: bool) -> AsyncIterator[bytes]:
    try:
        async for event in _events(job, events):
            if event.text or event.finished:
                yield _sse(completion_response(rid, name, event.text, event.finished))
    except ApiError as exc:
        yield _sse(exc.body())
    if include_usage:
        yield _sse(usage_chunk(rid, name, "text_completion", len(job.prompt), len(job.generated)))
    yield b"data: [DONE]\n\n"


def header_deadline(seconds: float) -> Any:
    """uvicorn's HTTP/1.1 protocol, closing a new connection whose request headers are not complete in `seconds`:
    uvicorn itself waits for them forever, so a client trickling headers (slowloris) held a connection for good."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.header_deadline = self.loop.call_later(seconds, self.headers_late)

        def headers_late(self) -> None:
            if self.cycle is None and not self.transport.is_closing():  # the first request never began
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.header_deadline.cancel()
            super().connection_lost(exc)

    return Protocol


def serve(app: Any, engine: Engine, host: str, port: int, drain_timeout: float, log: Any,
          read_timeout: float = 30.0) -> int:
    """Run until SIGTERM/SIGINT, then drain: stop accepting, let in-flight answers finish, stop the engine."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=drain_timeout, http=header_deadline(read_timeout))
    server = uvicorn.Server(config)
    original = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        app.state.draining = True
        running, waiting = engine.stats()
        log(f"shutting down: draining {running + waiting} in-flight request(s) (up to {drain_timeout:g} s)")
        original(sig, frame)
        # uvicorn re-raises the signal after its shutdown so the process dies of it; a drained stop is a clean exit.
        getattr(server, "_captured_signals", []).clear()

    server.handle_exit = handle_exit
    log(f"serving on http://{host}:{port} (OpenAI API under /v1, /health, /metrics)")
    server.run()
    engine.shutdown(drain=False, timeout=5)
    log("stopped")
    return 0
