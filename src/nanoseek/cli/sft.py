"""``nanoseek sft``: supervised fine-tuning on chat-format JSONL (see ``nanoseek.recipes.sft``).

Examples::

    nanoseek sft --model runs/zero-cpu-X/base --data cold_start.jsonl --task chain --out runs/sft
    nanoseek sft --model Qwen2.5-0.5B-folder --data r1_samples.jsonl --epochs 2 --lr 1e-5 --packing --max-length 4096
    nanoseek sft --resume runs/sft

Every flag maps to a config field (``--set section.key=value`` reaches the others); ``--config``
reads a recipe file with ``[run]``, ``[model]``, ``data``, ``[sft]``, ``[task]``, ``[eval]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nanoseek.config import apply_overrides, load
from nanoseek.errors import NanoseekError
from nanoseek.model.load import resolve_model_dir
from nanoseek.recipes.config import run_out
from nanoseek.recipes.sft import SFTRecipe, build_sft_recipe, run_sft
from nanoseek.runs.rundir import RunDir


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``nanoseek sft`` flags on ``p`` (each names the config field it sets in brackets)."""
    p.add_argument("--model", help="model to fine-tune: run directory, checkpoint or Hugging Face folder  [model.path]")
    p.add_argument("--data", action="append", default=[], metavar="FILE.jsonl",
                   help="chat JSONL (messages, optional reasoning_content); repeatable  [data]")
    p.add_argument("--task", help="evaluate on this task's held-out split before and after  [task.name]")
    p.add_argument("--config", help="recipe TOML file with the sections above")
    p.add_argument("--epochs", type=float, help="epochs (default 2, DeepSeek-R1)  [sft.epochs]")
    p.add_argument("--steps", type=int, help="optimizer steps, overrides --epochs  [sft.steps]")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-6, DeepSeek-V3 SFT)  [sft.lr]")
    p.add_argument("--batch-size", type=int, help="sequences (or packed rows) per step  [sft.batch_size]")
    p.add_argument("--max-length", type=int, help="drop longer sequences; row length with --packing  [sft.max_length]")
    p.add_argument("--packing", action="store_true", help="pack sequences into rows of --max-length  [sft.packing]")
    p.add_argument("--out", help="run directory (default: runs/sft-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--seed", type=int, help="run seed  [run.seed]")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config field")


def recipe_from_args(args) -> SFTRecipe:
    """The ``SFTRecipe`` of the parsed arguments: the resumed run's config, else ``--config`` (or
    nothing), with the flags and ``--set`` overrides applied."""
    if args.resume:
        if not Path(args.resume).is_dir():
            raise NanoseekError(f"cannot resume: run directory {args.resume} does not exist")
        data = RunDir(args.resume).read_config()
    else:
        data = load(args.config) if args.config else {}
    flags = {"sft.epochs": args.epochs, "sft.steps": args.steps, "sft.lr": args.lr, "sft.batch_size": args.batch_size,
             "sft.max_length": args.max_length, "run.seed": args.seed, "sft.packing": True if args.packing else None}
    apply_overrides(data, [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in flags.items() if v is not None])
    apply_overrides(data, list(args.set))
    if args.model:
        data["model"] = {"path": args.model}
    if args.data:
        data["data"] = list(args.data)
    if args.task:
        data.setdefault("task", {})["name"] = args.task
    return build_sft_recipe(data)


def run(args) -> int:
    """Run ``nanoseek sft`` with the parsed arguments."""
    out = run_out(args.resume, args.out)
    recipe = recipe_from_args(args)
    if recipe.model.path:
        resolve_model_dir(recipe.model.path)  # fail early, before a run directory is made
    run_sft(recipe, out=out, resume=bool(args.resume), command=getattr(args, "_argv", "nanoseek sft"))
    return 0
