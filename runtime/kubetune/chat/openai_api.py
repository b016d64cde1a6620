"""OpenAI request bodies and response objects (chat completions, completions, models), kept free of the web framework
so the shapes are easy to read and test. Extensions beyond OpenAI's fields follow vLLM: `top_k`,
`repetition_penalty`, `ignore_eos`."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class ApiError(Exception):
    """An error answered as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image_url and other parts carry their own fields
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts carry meaning for a text model
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


# Fields that, set, ask for what this server does not do.
_UNSUPPORTED = {"logprobs": "this server does not return log probabilities",
                "top_logprobs": "this server does not return log probabilities",
                "frequency_penalty": "not applied by this server; use repetition_penalty",
                "presence_penalty": "not applied by this server; use repetition_penalty"}


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=100)  # past these, scores go non-finite
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64; torch takes all of it
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Asked for, these change what the client gets back; answered without them, a 200 would mislead: refused.
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    @field_validator(*_UNSUPPORTED)
    @classmethod
    def _unsupported(cls, v: Any, info: ValidationInfo) -> Any:
        if v:  # True, a non-zero penalty, or a positive count (completions' logprobs=N)
            raise ValueError(_UNSUPPORTED[str(info.field_name)])
        return v

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: Any) -> Any:
        if v and v.get("type", "text") != "text":
            raise ValueError(f"response_format {v.get('type')!r}: this server does not constrain output to JSON; "
                             "only type 'text'")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, v: Any) -> Any:
        if v not in (None, "none", "auto"):
            raise ValueError("this server does not support tool or function calls")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    functions: list[Any] | None = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, v: Any) -> Any:
        # Refused rather than ignored: a client that sends tools expects tool calls back, not plain text.
        if v:
            raise ValueError("this server does not support tool or function calls")
        return v

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) != 1:
            raise ValueError("exactly one prompt per request")
        return v

    def text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if not (v[0] if isinstance(v, list) else v):
            raise ValueError("the prompt is empty")
        return v

    def requested_tokens(self) -> int | None:
        return self.max_tokens


def pydantic_error(exc: Any) -> ApiError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return ApiError(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")), param=where or None)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_response(rid: str, model: str, text: str, reason: str, prompt: int, completion: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                         "logprobs": None}],
            "usage": usage(prompt, completion)}


def chat_chunk(rid: str, model: str, delta: dict[str, str], reason: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]}


def completion_response(rid: str, model: str, text: str, reason: str | None, prompt: int | None = None,
                        completion: int | None = None) -> dict[str, Any]:
    body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}]}
    if prompt is not None:
        body["usage"] = usage(prompt, completion or 0)
    return body


def usage_chunk(rid: str, model: str, obj: str, prompt: int, completion: int) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt, completion)}


def models(names: list[str], created: int) -> dict[str, Any]:
    # The base model first; an adapter names it as its `parent`, as vLLM lists LoRA modules.
    base = names[0]
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "kubetune",
                                        "root": base, "parent": None if n == base else base} for n in names]}
