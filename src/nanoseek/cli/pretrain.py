"""``nanoseek pretrain``: the R1-Zero recipe's base-model pretraining as its own command (see
``nanoseek.recipes.pretrain``).

Without ``--data`` it is exactly the base stage of ``nanoseek zero`` (the recipe's ``[model]`` +
``[pretrain]`` on the task's generated corpus), so ``nanoseek zero --model RUN_DIR`` continues from
it. With ``--data`` it pretrains on the user's corpus: a text file, or JSONL with a ``text`` (or
``messages``) field per line, in windows of ``--seq-len`` tokens. ``--model`` continues pretraining
an existing model instead of a fresh ``[model]``.

Output: ``RUN_DIR/base/`` (a Hugging Face folder; ``--model RUN_DIR`` finds it through
``checkpoints/latest``), ``checkpoints/step-N/`` while training, ``metrics.jsonl``,
``plots/pretrain_loss.png``, ``report.md`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nanoseek.cli.args import ranged
from nanoseek.config import apply_overrides, load, range_problem
from nanoseek.errors import NanoseekError
from nanoseek.recipes.config import build_zero_config, run_out
from nanoseek.recipes.pretrain import run_pretrain
from nanoseek.runs.rundir import RunDir


SEQ_LEN = ">= 2"  # a window of one token has no next token to predict


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``nanoseek pretrain`` flags on ``p`` (each names the config field it sets in brackets)."""
    p.add_argument("--config", default="zero-cpu", help="recipe whose [model] and [pretrain] to use (default: zero-cpu)")
    p.add_argument("--data", help="corpus: a text file, or JSONL with a 'text' (or 'messages') field per line "
                                  "(default: the task's generated corpus)")
    p.add_argument("--seq-len", type=ranged(int, SEQ_LEN), default=256, help="tokens per training window with --data (default: 256)")
    p.add_argument("--model", help="continue pretraining this model instead of a fresh [model]  [model.path]")
    p.add_argument("--steps", type=int, help="optimizer steps  [pretrain.steps]")
    p.add_argument("--out", help="run directory (default: runs/pretrain-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config field")


def run(args) -> int:
    """Run ``nanoseek pretrain`` with the parsed arguments."""
    out = run_out(args.resume, args.out)
    if args.resume:
        data = RunDir(args.resume).read_config() if Path(args.resume).is_dir() else None
        if data is None:
            raise NanoseekError(f"cannot resume: {args.resume} is not a run directory")
        apply_overrides(data, list(args.set))
    else:
        data = load(args.config, args.set)
    corpus = data.pop("corpus", {}) or {}
    if args.data:
        corpus = {"path": args.data, "seq_len": args.seq_len}
    if corpus and (problem := range_problem(corpus.get("seq_len"), SEQ_LEN)) is not None:  # a resumed run's [corpus]
        raise NanoseekError(f"config key corpus.seq_len must be {problem}, got {corpus.get('seq_len')!r}")
    if args.model:
        data["model"] = {"path": args.model}
    if args.steps is not None:
        data.setdefault("pretrain", {})["steps"] = args.steps
    data.setdefault("run", {})["name"] = "pretrain"
    cfg = build_zero_config(data)
    run_pretrain(cfg, corpus, out=out, resume=bool(args.resume),
                 command=getattr(args, "_argv", "nanoseek pretrain"))
    return 0
