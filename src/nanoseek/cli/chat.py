"""``nanoseek chat``: a terminal chat with a model, streaming its reasoning (dimmed) and its answer.

It runs the same engine as ``nanoseek serve`` in-process (no HTTP), so the text is split into
reasoning and answer exactly as the API splits it. Earlier answers (never earlier reasoning) are
kept as context, as the DeepSeek API does. Commands: ``/new`` starts over, ``/think`` shows or hides
the reasoning, ``/exit`` (or Ctrl-D) quits; Ctrl-C stops the current reply.
Sampling defaults follow the DeepSeek-R1 README usage recommendations (temperature 0.6, top-p 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from nanoseek.cli.serve import ANSWER_TAGS, add_model_arguments
from nanoseek.errors import NanoseekError
from nanoseek.serve.chat_model import ChatModel
from nanoseek.serve.engine import GenerationRequest
from nanoseek.serve.reasoning import collect

DIM, RESET, BOLD = "\033[2m", "\033[0m", "\033[1m"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, checkpoint folder or Hugging Face folder")
    p.add_argument("--system", help="system message put before the conversation")
    p.add_argument("--max-tokens", type=int, help="most tokens per reply, reasoning included (default: the context left)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6, R1 README)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95, R1 README)")
    p.add_argument("--seed", type=int, help="seed of the first reply (later replies use seed + turn)")
    p.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning")
    p.add_argument("--no-color", action="store_true", help="plain text (no ANSI dimming)")
    add_model_arguments(p)


async def _reply(engine, req, show_thinking: bool, color: bool, out=None) -> tuple[str | None, str]:
    """Stream one reply to ``out`` (default: the current ``sys.stdout``); returns (content, finish_reason)."""
    out = out if out is not None else sys.stdout
    handle = engine.submit(req)
    deltas, phase = [], None
    dim, reset = (DIM, RESET) if color else ("", "")
    try:
        while True:
            ev = await handle.events.get()
            for d in ev.deltas:
                deltas.append(d)
                if d.kind == "reasoning" and show_thinking:
                    if phase is None:
                        out.write(f"{dim}[thinking]\n")
                        phase = "r"
                    out.write(d.text)
                elif d.kind == "content":
                    if phase == "r":
                        out.write(f"{reset}\n\n")
                    elif phase is None:
                        out.write(reset)
                    phase = "c"
                    out.write(d.text)
                out.flush()
            if ev.finish_reason:
                if phase == "r":
                    out.write(reset)
                out.write("\n" + (f"[{ev.error}]\n" if ev.error else "") +
                          (f"{dim}[stopped: max tokens]{reset}\n" if ev.finish_reason == "length" else ""))
                return collect(deltas)[1], ev.finish_reason
    finally:
        handle.cancel()


def run(args) -> int:
    if not 0 < args.top_p <= 1 or args.temperature < 0:
        raise NanoseekError("--temperature must be >= 0 and --top-p in (0, 1]")
    cm = ChatModel.load(args.model, device=args.device, answer_tags=ANSWER_TAGS[args.answer_tags])
    engine = cm.engine(max_batch=1).start()
    color = not args.no_color and sys.stdout.isatty()
    show = not args.hide_thinking
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    print(f"nanoseek chat with {cm.name} (context {cm.context_length} tokens). /new, /think, /exit; Ctrl-C stops a reply.")
    turn = 0
    try:
        while True:
            try:
                line = input(f"{BOLD if color else ''}you> {RESET if color else ''}")
            except EOFError:
                print()
                return 0
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return 0
            if text == "/new":
                history = history[:1] if args.system else []
                print("(new conversation)")
                continue
            if text == "/think":
                show = not show
                print(f"(reasoning {'shown' if show else 'hidden'})")
                continue
            msgs = history + [{"role": "user", "content": text}]
            ids = cm.encode(msgs)
            room = cm.context_length - len(ids)
            if room <= 0:
                print(f"(the conversation is {len(ids)} tokens, over the {cm.context_length}-token context: /new to start over)")
                continue
            seed = None if args.seed is None else args.seed + turn
            req = GenerationRequest(ids, min(args.max_tokens or room, room), 1, args.temperature, args.top_p, [], seed)
            sys.stdout.write(f"{cm.name}> ")
            try:
                content, _ = asyncio.run(_reply(engine, req, show, color))
            except KeyboardInterrupt:
                print(f"\n{DIM if color else ''}[stopped]{RESET if color else ''}")
                content = None
            history = msgs + [{"role": "assistant", "content": content or ""}]
            turn += 1
    finally:
        engine.shutdown()
