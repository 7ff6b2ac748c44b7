"""From a request body to a ``GenerationRequest``: UTF-8 and JSON, Unicode, fields, the model name,
the chat template, tokens and the context length; every problem is an ``APIError`` (400, or 404 for
another model's name) in OpenAI's error shape.

``prepare`` is synchronous and CPU-bound (a body of a few MB takes seconds to render and tokenize), so
the server runs it in a worker thread, never on the event loop that carries the running streams;
the size limit on the body (``DEFAULT_MAX_REQUEST_BYTES``, 413) is checked by the server while it
reads the body, before any of this. Nothing here imports FastAPI.

Text must be valid Unicode: JSON allows an escaped lone UTF-16 surrogate (``"\\ud800"``), which
Python's ``json`` turns into a ``str`` that cannot be encoded as UTF-8 and that the tokenizer
rejects; such a body is a 400 naming the field (RFC 8259 §8.2 leaves these strings' behaviour
unpredictable; the OpenAI API refuses them too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import ValidationError

from nanoseek.serve import protocol as P
from nanoseek.serve.chat_model import ChatModel, PromptError
from nanoseek.serve.engine import GenerationRequest

DEFAULT_MAX_REQUEST_BYTES = 2 * 1024 * 1024  # 2 MiB: ~500k tokens of English, above any context served here
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # the only way a lone surrogate gets in


@dataclass
class Prepared:
    """A checked request: the parsed body and what goes to the engine."""

    request: P.ChatCompletionRequest
    generation: GenerationRequest


def too_large(limit: int) -> P.APIError:
    """The 413 for a body over ``limit`` bytes."""
    return P.APIError(413, f"The request body is larger than this server's limit of {limit} bytes "
                           "(nanoseek serve --max-request-bytes).", code="request_too_large")


def lone_surrogate_path(data, path: str = "") -> str | None:
    """The parameter path (``messages[0].content``) of the first string in ``data`` (keys included)
    holding a lone UTF-16 surrogate, or None when every string is valid Unicode."""
    stack = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(value, dict):
            for k, v in reversed(list(value.items())):
                stack.append((v, f"{where}.{k}" if where else str(k)))
                stack.append((k, where))
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(value))))
    return None


def parse_body(body: bytes) -> P.ChatCompletionRequest:
    """Body bytes -> request model; any problem is a 400 naming the parameter."""
    try:
        text = body.decode("utf-8")  # strict: encoded surrogates and stray bytes are refused here
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise P.APIError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise P.APIError(400, "The request body must be a JSON object.", code="invalid_json")
    if SURROGATE_ESCAPE.search(text):  # a valid pair is fine; find the field of a lone one, if any
        where = lone_surrogate_path(data)
        if where is not None:
            raise P.APIError(400, f"Invalid parameter `{where}`: the text holds a lone UTF-16 surrogate "
                                  "(such as \\ud800), which is not valid Unicode.", param=where, code="invalid_value")
    try:
        return P.ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = param_name(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            msg = "is required"
        raise P.APIError(400, f"Invalid parameter `{param}`: {msg}.", param=param, code="invalid_value") from None


def param_name(loc) -> str:
    """pydantic ``loc`` -> ``messages[0].role`` (union-member names such as ``str`` dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "int", "float", "constrained-int", "constrained-float") or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def prepare(chat_model: ChatModel, body: bytes) -> Prepared:
    """Check ``body`` and turn it into the engine's request: prompt ids from the model's chat
    template, ``max_tokens`` clamped to the context left after the prompt."""
    req = parse_body(body)
    if req.model is not None and req.model != chat_model.name:
        raise P.APIError(404, f"The model `{req.model}` does not exist. This server serves `{chat_model.name}`.",
                         param="model", code="model_not_found")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    ctx = chat_model.context_length
    at_least = chat_model.min_prompt_tokens(messages)
    if at_least >= ctx:  # refused before the (possibly seconds-long) encoding of a huge prompt
        raise P.APIError(400, f"This model's maximum context length is {ctx} tokens. However, your messages "
                         f"need at least {at_least} tokens.", param="messages", code="context_length_exceeded")
    try:
        ids = chat_model.encode(messages)
    except PromptError as e:
        raise P.APIError(400, str(e), param="messages") from None
    if len(ids) >= ctx:
        raise P.APIError(400, f"This model's maximum context length is {ctx} tokens. However, your messages "
                         f"resulted in {len(ids)} tokens.", param="messages", code="context_length_exceeded")
    limit = req.token_limit()
    gen = GenerationRequest(ids, min(limit or ctx, ctx - len(ids)), req.n,
                            1.0 if req.temperature is None else float(req.temperature),
                            1.0 if req.top_p is None else float(req.top_p), req.stop or [], req.seed)
    return Prepared(req, gen)
