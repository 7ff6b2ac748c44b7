"""The HTTP server: a DeepSeek/OpenAI-compatible chat-completions API and the web chat app.

Routes (``/v1`` optional, as on api.deepseek.com, DEEPSEEK.md §3):

* ``POST /v1/chat/completions`` — with ``stream: true`` a Server-Sent-Events stream of
  ``chat.completion.chunk`` objects: per choice a first chunk with ``delta.role``, then reasoning
  deltas (``content: null``), then content deltas (``reasoning_content: null``), then a chunk with
  ``finish_reason``; an optional usage chunk (``stream_options.include_usage``); ``data: [DONE]``.
* ``GET /v1/models``, ``GET /health``, and the web app at ``/`` (plain files in ``static/``).

Every bad request gets a 4xx OpenAI-shaped error (``protocol.APIError``) and nothing is streamed
before the request is known to be good (prompt length included); an unexpected failure is a JSON
500 of the same shape and the connection stays usable (``ErrorGuard``). One request cannot freeze
the others: a body over ``max_request_bytes`` is refused with 413 as soon as its ``Content-Length``
(or, for a chunked body, its running size) says so, and parsing, the chat template and tokenization
run in a worker thread (``intake.prepare``), not on the event loop that carries the streams.
A generation ends when its client goes away, streamed or not: a task waits for the ASGI
``http.disconnect`` message, cancels the request (the engine drops its rows at the next step) and
wakes the response with a ``None`` event.
FastAPI/uvicorn are imported here only (STYLE lesson 10).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from nanoseek.serve import protocol as P
from nanoseek.serve.chat_model import ChatModel
from nanoseek.serve.engine import ChoiceEvent, Engine, RequestHandle
from nanoseek.serve.intake import DEFAULT_MAX_REQUEST_BYTES, prepare, too_large
from nanoseek.serve.reasoning import collect

STATIC = Path(__file__).parent / "static"
INTAKE_NICENESS = 10  # the intake thread yields the CPU to the engine thread on a busy machine


def lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: a thread is a task with its own nice
    value), so that tokenizing a large prompt takes the cores the engine thread leaves idle instead
    of slowing every running stream. Elsewhere the thread keeps the process's priority."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + INTAKE_NICENESS))
    except (AttributeError, OSError) as e:  # no per-thread priorities here (macOS, Windows): run as is
        logging.getLogger(__name__).info("intake thread keeps the process priority: %s", e)


log = logging.getLogger("nanoseek.serve")


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
               engine: Engine | None = None, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """Build the FastAPI app for ``chat_model``; the engine thread runs while the app is up.
    Request bodies over ``max_request_bytes`` get a 413."""
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be at least 1, got {max_request_bytes}")
    engine = engine or chat_model.engine(max_batch=max_batch)
    created = P.now()

    @asynccontextmanager
    async def lifespan(app):
        # one intake thread: prompts are tokenized one at a time, never on the event loop, using at
        # most one core (a Hugging Face fast tokenizer can also fail with "Already borrowed" when two
        # threads use it at once)
        app.state.intake = ThreadPoolExecutor(1, thread_name_prefix="nanoseek-intake", initializer=lower_priority)
        engine.start()
        yield
        engine.shutdown()
        app.state.intake.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="nanoseek", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.chat_model = engine, chat_model
    app.add_middleware(ErrorGuard)

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
        body = await read_body(request, max_request_bytes)
        prepared = await asyncio.get_running_loop().run_in_executor(app.state.intake, prepare, chat_model, body)
        req = prepared.request
        handle = engine.submit(prepared.generation)
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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed ``limit`` bytes: from
    ``Content-Length`` before reading any of it, else (chunked) once the bytes read pass the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class ErrorGuard:
    """ASGI middleware: an exception no route turned into a response becomes a 500 in OpenAI's error
    shape. (Starlette's own handler answers in plain text and re-raises, and uvicorn then closes
    the connection, so a keep-alive client loses its next requests too.) Once a response has
    started the exception goes on as before: a half-sent response cannot be repaired."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except ClientDisconnect:
            return  # gone while sending its body: nobody to answer
        except Exception:
            if started:
                raise
            log.exception("request failed")
            body = P.error_body("The server had an error while processing your request.", type="server_error")
            await JSONResponse(body, status_code=500)(scope, receive, send)


async def watch_disconnect(request: Request, handle: RequestHandle) -> None:
    """Wait for the client to go away (the ASGI ``http.disconnect`` message, which arrives once the
    body has been read), then cancel the request and wake its reader with a ``None`` event."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    handle.cancel()
    handle.events.put_nowait(None)


async def complete(request: Request, handle: RequestHandle, meta) -> JSONResponse:
    """Collect every choice for a non-streamed response (same deltas as a stream would carry)."""
    cid, created, model = meta
    n = handle.req.n
    deltas = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    ctoks = rtoks = 0
    watcher = asyncio.create_task(watch_disconnect(request, handle))
    try:
        while sum(f is not None for f in finish) < n:
            ev: ChoiceEvent | None = await handle.events.get()
            if ev is None:
                return JSONResponse(P.error_body("client disconnected"), status_code=499)
            if ev.error:
                return JSONResponse(P.error_body(ev.error, type="server_error"), status_code=500)
            deltas[ev.index].extend(ev.deltas)
            if ev.finish_reason:
                finish[ev.index] = ev.finish_reason
                ctoks += ev.completion_tokens
                rtoks += ev.reasoning_tokens
    finally:
        watcher.cancel()
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
    watcher = asyncio.create_task(watch_disconnect(request, handle))
    try:
        yield "".join(_sse(P.chunk(cid, created, model, i, P.role_delta())) for i in range(n))
        done = ctoks = rtoks = 0
        while done < n:
            ev = await handle.events.get()
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
    finally:
        watcher.cancel()


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
