"""The OpenAI / DeepSeek chat-completions wire format: request validation and response objects.

Sources: the OpenAI API reference ("Create chat completion", "The chat completion chunk object",
"Error codes") and the DeepSeek API docs for reasoning models (``reasoning_content`` beside
``content`` in ``message`` and ``delta``; ``usage.completion_tokens_details.reasoning_tokens``;
``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``), summarised in DEEPSEEK.md §3.

Deviations from the DeepSeek reasoner: ``temperature``/``top_p`` do act (the
DeepSeek reasoner ignores them; a small local model needs them); ``logprobs`` and ``tools`` are
rejected with 400 (as the DeepSeek reasoner does for ``logprobs``); ``max_tokens`` counts reasoning
and answer together (DeepSeek "now" semantics) and is clamped to the context left after the prompt.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

MAX_N = 16
MAX_STOP = 4  # OpenAI: "Up to 4 sequences"


class APIError(Exception):
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class TextPart(BaseModel):
    """A ``{"type": "text", "text": ...}`` content part (the only kind a text model takes)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    """One input message. ``reasoning_content`` of earlier assistant turns is accepted and ignored
    (it never goes back into the prompt, DEEPSEEK.md §3)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


PositiveInt = Annotated[StrictInt, Field(gt=0)]


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body. Unknown fields are ignored (as OpenAI-compatible servers
    do), except the ones whose silent loss would change the answer (``logprobs``, ``tools``)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2, strict=True)] | None = None  # strict: ints pass, "0.5" not
    top_p: Annotated[float, Field(gt=0, le=1, strict=True)] | None = None
    stop: str | list[str] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    logprobs: StrictBool | None = None
    tools: list[Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, str):
            v = [v]
        if v is not None and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v):
        if v:
            raise ValueError("logprobs is not supported by this server")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v):
        if v:
            raise ValueError("tools (function calling) are not supported by this server")
        return v

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# ------------------------------------------------------------------------------------ responses
def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict:
    """OpenAI usage with DeepSeek's extras; reasoning tokens are part of ``completion_tokens``.
    Context caching is not implemented, so every prompt token is a cache miss."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "prompt_tokens_details": {"cached_tokens": 0},
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": prompt_tokens,
    }


def completion(cid: str, created: int, model: str, choices: list[dict], use: dict) -> dict:
    """A ``chat.completion`` object; ``choices`` from ``choice``."""
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "nanoseek", "choices": choices, "usage": use}


def choice(index: int, content: str | None, reasoning: str | None, finish_reason: str) -> dict:
    return {"index": index, "logprobs": None, "finish_reason": finish_reason,
            "message": {"role": "assistant", "content": content, "reasoning_content": reasoning}}


def chunk(cid: str, created: int, model: str, index: int, delta: dict, finish_reason: str | None = None) -> dict:
    """A ``chat.completion.chunk`` with one choice."""
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "nanoseek",
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(cid: str, created: int, model: str, use: dict) -> dict:
    """The last chunk when ``stream_options.include_usage``: no choices, the request's usage."""
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "nanoseek", "choices": [], "usage": use}


def role_delta() -> dict:
    return {"role": "assistant", "content": None, "reasoning_content": None}


def text_delta(kind: str, text: str) -> dict:
    """A reasoning delta carries ``content: null``; a content delta ``reasoning_content: null``."""
    if kind == "reasoning":
        return {"content": None, "reasoning_content": text}
    return {"content": text, "reasoning_content": None}


def model_list(name: str, created: int, context_length: int) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "nanoseek",
                                         "context_length": context_length}]}
