"""The client side of evaluation through any OpenAI-compatible chat endpoint.

``complete_all(config, requests, on_reply)`` sends chat-completion requests with the ``openai``
async client (``POST {base_url}/chat/completions``), at most ``config.concurrency`` at a time, and
returns one ``ChatReply`` per request, in order. What it does for real servers:

* retries with exponential backoff and jitter (``backoff * 2**attempt`` seconds, capped at
  ``max_backoff``, times a random factor in [0.5, 1]) on HTTP 429, 408 and 5xx, on connection
  errors and on timeouts; a ``Retry-After`` header is honoured (also capped);
* a hard per-request timeout (``timeout`` seconds for the whole request, not per read);
* a request that still fails after ``max_retries`` retries, or fails with another status (400,
  422, ...), comes back as a ``ChatReply`` with ``error`` set: the caller counts it as a failure,
  it is never dropped. HTTP 401, 403 and 404 mean every request will fail (bad key, unknown
  model, wrong URL), so they stop the run with ``EndpointRefused``.

Reply fields follow the DeepSeek API (DeepSeek-R1 API guide; DEEPSEEK.md sec. 3): the final answer is
``choices[0].message.content`` and the chain of thought ``choices[0].message.reasoning_content``
(vLLM's newer name ``reasoning`` is read too). ``usage.completion_tokens`` gives the length.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nanoseek.errors import NanoseekError

RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx
FATAL_STATUS = frozenset({401, 403, 404})


class EndpointRefused(NanoseekError):
    """The endpoint refused a request in a way that every request would be refused (401/403/404)."""


@dataclass
class EndpointConfig:
    """Where and how to send requests.

    Args:
        base_url: the API base URL as the ``openai`` client takes it (``http://host:8000/v1``).
        model: the remote model name, sent as is.
        api_key: bearer token; ``None`` reads ``OPENAI_API_KEY`` (a local server needs none).
        concurrency: requests in flight at once.
        timeout: seconds one request (one attempt) may take in total.
        max_retries: retries after the first attempt on 429/408/5xx/connection errors/timeouts.
        backoff, max_backoff: first retry delay and its cap, in seconds.
    """

    base_url: str
    model: str
    api_key: str | None = None
    concurrency: int = 16
    timeout: float = 600.0
    max_retries: int = 6
    backoff: float = 1.0
    max_backoff: float = 60.0

    def __post_init__(self):
        url = self.base_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise NanoseekError(f"--endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r}")
        if url.endswith("/chat/completions") or url.endswith("/completions"):
            raise NanoseekError(f"--endpoint is the base URL (ending in /v1), not the route: got {self.base_url!r}")
        if not self.model:
            raise NanoseekError("--endpoint needs --model NAME (the remote model name)")
        if self.concurrency < 1 or self.timeout <= 0 or self.max_retries < 0:
            raise NanoseekError("concurrency must be >= 1, timeout > 0 and retries >= 0")
        self.base_url = url


@dataclass
class ChatRequest:
    """One chat completion to sample (``n = 1``; ``seed`` is passed for servers that honour it)."""

    messages: list[dict]
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None


@dataclass
class ChatReply:
    """The outcome of one request: the answer (``content``), the reasoning, why it stopped, the
    completion length in tokens (``None`` when the server reports no usage) and, for a failed
    request, ``error`` (``error_kind`` is its short class, e.g. "HTTP 503", "timeout")."""

    content: str
    reasoning: str | None
    finish_reason: str
    completion_tokens: int | None
    attempts: int = 1
    error: str | None = None
    error_kind: str | None = None


def _field(obj, name: str):
    value = getattr(obj, name, None)
    if value is None:
        extra = getattr(obj, "model_extra", None) or {}
        value = extra.get(name)
    return value


def parse_response(resp) -> ChatReply:
    """A ``ChatReply`` from an ``openai`` ChatCompletion (content, reasoning_content, usage)."""
    if not getattr(resp, "choices", None):
        return ChatReply("", None, "error", None, error="response has no choices", error_kind="bad response")
    choice = resp.choices[0]
    msg = choice.message
    reasoning = _field(msg, "reasoning_content")
    if reasoning is None:
        reasoning = _field(msg, "reasoning")
    usage = getattr(resp, "usage", None)
    tokens = getattr(usage, "completion_tokens", None) if usage is not None else None
    return ChatReply(msg.content or "", reasoning if isinstance(reasoning, str) else None,
                     choice.finish_reason or "stop", tokens if isinstance(tokens, int) else None)


def _retry_after(exc) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(exc: BaseException) -> tuple[str, bool, float | None]:
    """``(kind, retryable, retry_after)`` of an exception raised by one request."""
    import openai

    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return "timeout", True, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection error", True, None
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        return f"HTTP {code}", code in RETRY_STATUS or code >= 500, _retry_after(exc)
    return type(exc).__name__, False, None


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


async def _one(client, config: EndpointConfig, req: ChatRequest, sem: asyncio.Semaphore, rng: random.Random) -> ChatReply:
    kwargs = {"model": config.model, "messages": req.messages, "temperature": req.temperature, "top_p": req.top_p,
              "max_tokens": req.max_tokens, "n": 1}
    if req.seed is not None:
        kwargs["seed"] = req.seed
    attempt = 0
    while True:
        async with sem:
            try:
                resp = await asyncio.wait_for(client.chat.completions.create(**kwargs), config.timeout)
                reply = parse_response(resp)
                reply.attempts = attempt + 1
                return reply
            except Exception as exc:  # noqa: BLE001 - every failure becomes a counted ChatReply
                kind, retryable, after = classify(exc)
                if kind in {f"HTTP {c}" for c in FATAL_STATUS}:
                    raise EndpointRefused(f"{config.base_url} refused the request ({kind}: {_message(exc)}); "
                                          "check --endpoint, --model and --api-key") from None
                if not retryable or attempt >= config.max_retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    return ChatReply("", None, "error", None, attempts=attempt + 1,
                                     error=f"{kind}: {_message(exc)}{tries}", error_kind=kind)
        delay = min(config.max_backoff, config.backoff * 2 ** attempt) * (0.5 + 0.5 * rng.random())
        if after is not None:
            delay = max(delay, min(after, config.max_backoff))
        attempt += 1
        await asyncio.sleep(delay)


def make_client(config: EndpointConfig):
    """The ``openai.AsyncOpenAI`` client (its own retries off: ``complete_all`` retries)."""
    try:
        import openai
    except ImportError as e:  # pragma: no cover - openai is a dependency of the eval extra
        raise NanoseekError("evaluating an --endpoint needs the openai package: pip install openai") from e
    key = config.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    return openai.AsyncOpenAI(base_url=config.base_url, api_key=key, max_retries=0, timeout=config.timeout)


async def complete_all(config: EndpointConfig, requests: Sequence[ChatRequest],
                       on_reply: Callable[[int, ChatReply], None] | None = None, seed: int = 0) -> list[ChatReply]:
    """Send every request (``config.concurrency`` at a time) and return the replies in order.

    ``on_reply(index, reply)`` is called as each request finishes (in completion order), e.g. to
    grade and save it at once so an interrupted evaluation keeps what it had. ``seed`` seeds the
    backoff jitter. Raises ``EndpointRefused`` on 401/403/404 (requests in flight are cancelled).
    """
    client = make_client(config)
    sem = asyncio.Semaphore(config.concurrency)
    rng = random.Random(seed)
    replies: list[ChatReply | None] = [None] * len(requests)

    async def run(i: int, req: ChatRequest) -> None:
        reply = await _one(client, config, req, sem, rng)
        replies[i] = reply
        if on_reply is not None:
            on_reply(i, reply)

    tasks = [asyncio.create_task(run(i, r)) for i, r in enumerate(requests)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    return [r for r in replies if r is not None]


def run_requests(config: EndpointConfig, requests: Sequence[ChatRequest],
                 on_reply: Callable[[int, ChatReply], None] | None = None, seed: int = 0) -> list[ChatReply]:
    """``complete_all`` from synchronous code (runs its own event loop; in a worker thread when the
    caller already runs one, e.g. a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(complete_all(config, requests, on_reply, seed))
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, complete_all(config, requests, on_reply, seed)).result()

