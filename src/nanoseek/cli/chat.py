"""``nanoseek chat``: a terminal chat with a model, streaming its reasoning (dimmed) and its answer.

It runs the same engine as ``nanoseek serve`` in-process (no HTTP), so the text is split into
reasoning and answer exactly as the API splits it. Earlier answers (never earlier reasoning) are
kept as context, as the DeepSeek API does. Commands: ``/new`` starts over, ``/think`` shows or hides
the reasoning, ``/help`` lists the commands, ``/exit`` (or Ctrl-D) quits; Ctrl-C stops the current
reply. A line starting with ``/`` is a command and never goes to the model (an unknown one gets a
hint); ``//text`` sends ``/text``.
Sampling defaults follow the DeepSeek-R1 README usage recommendations (temperature 0.6, top-p 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from nanoseek.cli.args import ranged
from nanoseek.cli.serve import ANSWER_TAGS, add_model_arguments
from nanoseek.serve.chat_model import ChatModel
from nanoseek.serve.engine import GenerationRequest
from nanoseek.serve.reasoning import collect

DIM, RESET, BOLD = "\033[2m", "\033[0m", "\033[1m"
COMMANDS = {"/new": "start a new conversation", "/think": "show or hide the reasoning", "/help": "this list",
            "/exit": "quit (also /quit or Ctrl-D)"}
HELP = ("\n".join(f"  {c:7} {what}" for c, what in COMMANDS.items())
        + "\n  Ctrl-C stops a reply; //text sends a message that starts with /text")


def slash_command(line: str) -> str | None:
    """The command a typed line asks for (``"/new"``, ``"/exit"``, ...; ``"/quit"`` is ``"/exit"``;
    any other ``/word`` comes back as typed, for an "unknown command" hint), or None when the line
    is a message for the model (``//text`` is the message ``/text``)."""
    if not line.startswith("/") or line.startswith("//"):
        return None
    word = line.split()[0]
    return "/exit" if word == "/quit" else word


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run directory, checkpoint folder or Hugging Face folder")
    p.add_argument("--system", help="system message put before the conversation")
    p.add_argument("--max-tokens", type=ranged(int, ">= 1"), help="most tokens per reply, reasoning included (default: the context left)")
    p.add_argument("--temperature", type=ranged(float, ">= 0"), default=0.6, help="sampling temperature (default 0.6, R1 README)")
    p.add_argument("--top-p", type=ranged(float, "(0, 1]"), default=0.95, help="nucleus sampling (default 0.95, R1 README)")
    p.add_argument("--seed", type=ranged(int, ">= 0"), help="seed of the first reply (later replies use seed + turn)")
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
    cm = ChatModel.load(args.model, device=args.device, answer_tags=ANSWER_TAGS[args.answer_tags])
    engine = cm.engine(max_batch=1).start()
    color = not args.no_color and sys.stdout.isatty()
    show = not args.hide_thinking
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    print(f"nanoseek chat with {cm.name} (context {cm.context_length} tokens). /help lists the commands; "
          "Ctrl-C stops a reply.")
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
            cmd = slash_command(text)
            if cmd == "/exit":
                return 0
            if cmd == "/new":
                history = history[:1] if args.system else []
                print("(new conversation)")
            elif cmd == "/think":
                show = not show
                print(f"(reasoning {'shown' if show else 'hidden'})")
            elif cmd == "/help":
                print(HELP)
            elif cmd is not None:
                print(f"(unknown command {cmd}: /help lists the commands; //text sends /text to the model)")
            if cmd is not None:
                continue
            text = text[1:] if text.startswith("//") else text
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
