"""``nanoseek serve``: the DeepSeek-compatible chat API and the web chat app for one model.

``nanoseek serve --model PATH`` loads a run directory, checkpoint folder or Hugging Face folder and
serves ``POST /v1/chat/completions`` (streamed ``reasoning_content`` / ``content``), ``GET /v1/models``,
``GET /health`` and the web app at ``/`` on http://127.0.0.1:8000 (see ``nanoseek.serve.app``).
It binds to 127.0.0.1 unless ``--host`` says otherwise; ``--api-key`` (or ``$NANOSEEK_API_KEY``)
makes every API call need ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from nanoseek.cli.args import PORT, ranged
from nanoseek.errors import NanoseekError
from nanoseek.serve.app import create_app, run_server
from nanoseek.serve.chat_model import ChatModel
from nanoseek.serve.intake import DEFAULT_MAX_REQUEST_BYTES

ANSWER_TAGS = {"auto": None, "on": True, "off": False}  # --answer-tags -> ChatModel(answer_tags=...)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--answer-tags``: how the served model is loaded (``serve`` and ``chat``)."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto: cuda when available)")
    p.add_argument("--answer-tags", choices=tuple(ANSWER_TAGS), default="auto",
                   help="content = the body of <answer>...</answer> (R1-Zero models); auto: when the tokenizer has the tag")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, checkpoint folder or Hugging Face folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=ranged(int, PORT), default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--served-model-name", help="model name clients send and see (default: from the path)")
    p.add_argument("--api-key", default=os.environ.get("NANOSEEK_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on API calls (default: $NANOSEEK_API_KEY, else none)")
    p.add_argument("--max-batch", type=ranged(int, ">= 1"), default=64, help="most sequences decoded together (default 64)")
    p.add_argument("--max-request-bytes", type=ranged(int, ">= 1"), default=DEFAULT_MAX_REQUEST_BYTES,
                   help=f"refuse larger request bodies with 413 (default {DEFAULT_MAX_REQUEST_BYTES}: 2 MiB)")
    p.add_argument("--context-length", type=ranged(int, ">= 1"), help="override the model's context length in tokens")
    add_model_arguments(p)


def check_can_listen(host: str, port: int) -> None:
    """Raise ``NanoseekError`` (one line) when ``host:port`` cannot be bound: an unknown host, a port
    in use or one that needs privileges. Checked before the model loads; uvicorn binds the same way
    (``SO_REUSEADDR``), so what passes here binds there unless another process takes it meanwhile."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise NanoseekError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise NanoseekError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def run(args) -> int:
    check_can_listen(args.host, args.port)
    cm = ChatModel.load(args.model, name=args.served_model_name, device=args.device, context_length=args.context_length,
                        answer_tags=ANSWER_TAGS[args.answer_tags])
    app = create_app(cm, api_key=args.api_key, max_batch=args.max_batch, max_request_bytes=args.max_request_bytes)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"nanoseek serve: warning: listening on {args.host} without --api-key", file=sys.stderr)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"nanoseek serve: {cm.name} (context {cm.context_length} tokens, think pre-filled: {cm.think_prefilled}, "
          f"answer tags: {cm.answer_tags})\n  web app  http://{shown}:{args.port}/\n"
          f"  API      http://{shown}:{args.port}/v1  (OpenAI/DeepSeek client base_url)", file=sys.stderr)
    run_server(app, args.host, args.port)
    return 0
