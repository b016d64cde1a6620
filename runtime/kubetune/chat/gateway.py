"""`kubetune gateway`: the API-key check in front of a server that cannot enforce keys on every route.

vLLM's `--api-key` guards `/v1` and a few other prefixes only; `/invocations` (the same inference as `/v1`) and its
admin routes stay open, as vLLM's own security notes say. An `engine: vllm` ChatEndpoint therefore runs vLLM on the
pod's loopback and this gateway on the Service's port: every request but /health and /metrics needs a key; an
accepted one is forwarded with its key removed, and the answer streamed back chunk by chunk (SSE answers included).
A client that hangs up closes the upstream request, so vLLM aborts it and frees its batch slot.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from .keys import OPEN_ROUTES, authorized

# Per-connection headers (RFC 9110 §7.6.1) are not forwarded; neither is the key, nor a length the proxy recomputes.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
        "upgrade", "host", "content-length"}
MAX_BODY = 64 << 20


def build_app(upstream: str, keys: frozenset[str]) -> Any:
    import contextlib

    import aiohttp
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        # No total timeout: a long answer streams for minutes. Connecting and each read are bounded upstream.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            state["session"] = session
            yield

    async def forward(request: Request) -> Response:
        path = request.url.path
        if path not in OPEN_ROUTES and not authorized(request.headers.get("authorization", ""), keys):
            return _error(401, "invalid or missing API key (send Authorization: Bearer <key>)", "invalid_api_key")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return _error(413, f"the request body is over this gateway's limit of {MAX_BODY} bytes", "body_too_large")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP | {"authorization"}}
        try:
            upstream_response = await state["session"].request(
                request.method, upstream + path, params=list(request.query_params.multi_items()), headers=headers,
                data=await request.body(), allow_redirects=False)
        except aiohttp.ClientError as exc:
            return _error(502, f"the model server did not answer: {type(exc).__name__}", "upstream_unavailable")
        out = {k: v for k, v in upstream_response.headers.items() if k.lower() not in _HOP}

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream_response.content.iter_any():
                    yield chunk
            finally:  # the client went away, or the answer ended: either way the upstream request is done
                upstream_response.close()

        return StreamingResponse(body(), status_code=upstream_response.status, headers=out)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def _error(status: int, message: str, code: str) -> Any:
    from starlette.responses import Response

    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def run(upstream: str, host: str, port: int, keys: frozenset[str], read_timeout: float, log: Any) -> int:
    import uvicorn

    from .server import header_deadline

    app = build_app(upstream.rstrip("/"), keys)
    log(f"gateway on http://{host}:{port} → {upstream}" + (", API key required" if keys else ", no API key"))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            http=header_deadline(read_timeout))
    uvicorn.Server(config).run()
    return 0
