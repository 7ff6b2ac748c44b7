"""The HTTP server: a DeepSeek/OpenAI-compatible chat-completions API and the web chat app.

Routes (``/v1`` optional, as on api.deepseek.com, DEEPSEEK.md §3):

* ``POST /v1/chat/completions`` — with ``stream: true`` a Server-Sent-Events stream of
  ``chat.completion.chunk`` objects: per choice a first chunk with ``delta.role``, then reasoning
  deltas (``content: null``), then content deltas (``reasoning_content: null``), then a chunk with
  ``finish_reason``; an optional usage chunk (``stream_options.include_usage``); ``data: [DONE]``.
* ``GET /v1/models``, ``GET /health``, and the web app at ``/`` (plain files in ``static/``).

Every bad request gets a 4xx OpenAI-shaped error (``protocol.APIError``) and nothing is streamed
before the request is known to be good (prompt length included). A stream ends its generation when
the client goes away: the response's ``finally`` cancels the request and the stream also polls
``request.is_disconnected()`` while it waits, so the engine drops the rows at its next step.
FastAPI/uvicorn are imported here only (STYLE lesson 10).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanoseek.serve import protocol as P
from nanoseek.serve.chat_model import ChatModel, PromptError
from nanoseek.serve.engine import ChoiceEvent, Engine, GenerationRequest, RequestHandle
from nanoseek.serve.reasoning import collect

STATIC = Path(__file__).parent / "static"
POLL_S = 0.25  # how often a waiting response checks that its client is still there


def check_auth(request: Request, api_key: str | None) -> None:
    """Raise a 401 ``APIError`` unless the request carries ``Authorization: Bearer <api_key>``
    (compared in constant time); no key configured means no check."""
    if api_key is None:
        return
    got = request.headers.get("authorization", "")
    scheme, _, token = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise P.APIError(401, "Invalid or missing API key: send the header 'Authorization: Bearer <key>'.",
                         code="invalid_api_key", type="authentication_error")


def create_app(chat_model: ChatModel, api_key: str | None = None, max_batch: int = 64,
               engine: Engine | None = None) -> FastAPI:
    """Build the FastAPI app for ``chat_model``; the engine thread runs while the app is up."""
    engine = engine or chat_model.engine(max_batch=max_batch)
    created = P.now()

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.shutdown()

    app = FastAPI(title="nanoseek", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.chat_model = engine, chat_model

    @app.exception_handler(P.APIError)
    async def _api_error(request: Request, e: P.APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse(P.error_body(str(e.detail), code=str(e.status_code)), status_code=e.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": chat_model.name, "active_rows": engine.active_rows}

    @app.get("/v1/models")
    @app.get("/models")
    async def models(request: Request):
        check_auth(request, api_key)
        return P.model_list(chat_model.name, created, chat_model.context_length)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request, api_key)
        req = await parse_request(request)
        if req.model is not None and req.model != chat_model.name:
            raise P.APIError(404, f"The model `{req.model}` does not exist. This server serves `{chat_model.name}`.",
                             param="model", code="model_not_found")
        try:
            ids = chat_model.encode([{"role": m.role, "content": m.text()} for m in req.messages])
        except PromptError as e:
            raise P.APIError(400, str(e), param="messages") from None
        ctx = chat_model.context_length
        if len(ids) >= ctx:
            raise P.APIError(400, f"This model's maximum context length is {ctx} tokens. However, your messages "
                             f"resulted in {len(ids)} tokens.", param="messages", code="context_length_exceeded")
        limit = req.token_limit()
        gen = GenerationRequest(ids, min(limit or ctx, ctx - len(ids)), req.n,
                                1.0 if req.temperature is None else float(req.temperature),
                                1.0 if req.top_p is None else float(req.top_p), req.stop or [], req.seed)
        handle = engine.submit(gen)
        meta = (P.new_id(), P.now(), chat_model.name)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _EngineStream(sse_events(request, handle, meta, include_usage), handle)
        try:
            return await complete(request, handle, meta)
        finally:
            handle.cancel()  # no-op when finished; stops generation if the client left

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html")

    return app


async def parse_request(request: Request) -> P.ChatCompletionRequest:
    """Body -> request model; any problem is a 400 naming the parameter."""
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise P.APIError(400, f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise P.APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return P.ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param(err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            msg = "is required"
        raise P.APIError(400, f"Invalid parameter `{param}`: {msg}.", param=param, code="invalid_value") from None


def _param(loc) -> str:
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


async def next_event(request: Request, handle: RequestHandle) -> ChoiceEvent | None:
    """The request's next event, or None once the client has disconnected."""
    while True:
        try:
            return await asyncio.wait_for(handle.events.get(), POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                handle.cancel()
                return None


async def complete(request: Request, handle: RequestHandle, meta) -> JSONResponse:
    """Collect every choice for a non-streamed response (same deltas as a stream would carry)."""
    cid, created, model = meta
    n = handle.req.n
    deltas = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    ctoks = rtoks = 0
    while sum(f is not None for f in finish) < n:
        ev = await next_event(request, handle)
        if ev is None:
            return JSONResponse(P.error_body("client disconnected"), status_code=499)
        if ev.error:
            return JSONResponse(P.error_body(ev.error, type="server_error"), status_code=500)
        deltas[ev.index].extend(ev.deltas)
        if ev.finish_reason:
            finish[ev.index] = ev.finish_reason
            ctoks += ev.completion_tokens
            rtoks += ev.reasoning_tokens
    choices = []
    for i in range(n):
        reasoning, content = collect(deltas[i])
        choices.append(P.choice(i, content, reasoning, finish[i]))
    return JSONResponse(P.completion(cid, created, model, choices, P.usage(len(handle.req.prompt_ids), ctoks, rtoks)))


def _sse(obj) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


async def sse_events(request: Request, handle: RequestHandle, meta, include_usage: bool):
    cid, created, model = meta
    n = handle.req.n
    yield "".join(_sse(P.chunk(cid, created, model, i, P.role_delta())) for i in range(n))
    done = ctoks = rtoks = 0
    while done < n:
        ev = await next_event(request, handle)
        if ev is None:
            return
        if ev.error:
            yield _sse(P.error_body(ev.error, type="server_error")) + "data: [DONE]\n\n"
            return
        parts = [_sse(P.chunk(cid, created, model, ev.index, P.text_delta(d.kind, d.text))) for d in ev.deltas]
        if ev.finish_reason:
            parts.append(_sse(P.chunk(cid, created, model, ev.index, {}, ev.finish_reason)))
            done += 1
            ctoks += ev.completion_tokens
            rtoks += ev.reasoning_tokens
        if parts:
            yield "".join(parts)
    if include_usage:
        yield _sse(P.usage_chunk(cid, created, model, P.usage(len(handle.req.prompt_ids), ctoks, rtoks)))
    yield "data: [DONE]\n\n"


class _EngineStream(StreamingResponse):
    """An SSE response that cancels its generation however the response ends (done, client gone,
    server shutdown)."""

    def __init__(self, content, handle: RequestHandle) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.handle = handle

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.handle.cancel()


# ------------------------------------------------------------------------------- running it
def run_server(app: FastAPI, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn on ``host:port`` in this thread until interrupted (``nanoseek serve``)."""
    uvicorn.run(app, host=host, port=port, log_level="info")


class ServerThread:
    """uvicorn in a background thread (tests, benchmarks, ``nanoseek chat`` without a server).

    ``with ServerThread(app) as url:`` binds ``host`` (127.0.0.1) on a free port unless ``port`` is
    given, waits until it accepts connections, and stops it on exit.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, name="nanoseek-uvicorn", daemon=True)
        self.host = host

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
