"""The ``nanoseek`` command.

Subcommands: ``zero`` (the R1-Zero recipe; runs with no arguments on a laptop CPU) and the others
registered in ``COMMANDS``. Every user error (a flag or config value out of range, unknown task,
missing data file, unknown config key, a path that is not a model, a non-empty run directory) is
printed as one line naming the problem, with exit status 2 and no traceback, before any model is
loaded.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from nanoseek.errors import NanoseekError

# name -> (module, help). Each module defines ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = {
    "zero": ("nanoseek.cli.zero", "R1-Zero: pretrain a small base (or load --model), then GRPO with rule-based rewards"),
    "serve": ("nanoseek.cli.serve", "DeepSeek-compatible chat API (streamed reasoning_content) and web chat app for a model"),
    "chat": ("nanoseek.cli.chat", "terminal chat with a model: streamed answer, dimmed reasoning"),
    "eval": ("nanoseek.cli.eval", "evaluate a model or OpenAI-compatible endpoint: pass@1 over k samples, pass@k, cons@k"),
    "fetch": ("nanoseek.cli.fetch", "convert a short-name model (smollm2-135m) once into the local cache; prints its folder"),
    "pretrain": ("nanoseek.cli.pretrain", "pretrain a base model (the zero recipe's [model]+[pretrain]) on the task corpus or a text/JSONL corpus"),
    "sft": ("nanoseek.cli.sft", "supervised fine-tuning on chat JSONL (reasoning_content), loss on completion tokens only"),
    "sample": ("nanoseek.cli.sample", "rejection sampling: k samples per prompt, keep correct readable ones, decontaminate, write SFT data"),
    "r1": ("nanoseek.cli.r1", "DeepSeek-R1: cold start, reasoning RL, rejection sampling + SFT, RL; beside R1-Zero"),
    "distill": ("nanoseek.cli.distill", "distil a teacher into a smaller student by SFT, compared with GRPO alone"),
}


class UsageError(NanoseekError):
    """A command line argparse refuses (unknown flag, a value of the wrong type or out of range)."""

    def __init__(self, prog: str, message: str):
        self.prog = prog
        super().__init__(f"{message} (see {prog} --help)")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``UsageError``, exit 2 from ``main``) instead
    of the usage text and ``SystemExit``; subparsers are of this class too."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    """The ``nanoseek`` parser with one subparser per entry of ``COMMANDS``."""
    p = Parser(prog="nanoseek", description="nanoseek: a small, complete DeepSeek-R1 system.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default ``sys.argv[1:]``); return its exit status (2 for a
    ``NanoseekError``, printed as one line; 130 when interrupted)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    args._argv = "nanoseek " + " ".join(shlex.quote(a) for a in argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except NanoseekError as e:
        print(f"nanoseek {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nanoseek {args.command}: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
