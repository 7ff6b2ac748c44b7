"""``nanoseek zero``: the R1-Zero recipe from the command line.

With no arguments it runs the embedded CPU recipe ``configs/zero-cpu.toml``. Every flag maps to a
config field; ``--set section.key=value`` reaches any other field.
"""

from __future__ import annotations

import argparse

from nanoseek.config import apply_overrides
from nanoseek.model.load import resolve_model_dir
from nanoseek.recipes.config import build_zero_config, resume_or_recipe_dict, run_out
from nanoseek.recipes.zero import run_zero


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``nanoseek zero`` flags on ``p`` (each names the config field it sets in brackets)."""
    p.add_argument("--config", default="zero-cpu", help="recipe TOML file or built-in recipe name (default: zero-cpu)")
    p.add_argument("--task", help="task name (chain, gsm8k, math, math500, countdown) or a JSONL file  [task.name]")
    p.add_argument("--model", help="base model: a run directory, checkpoint folder, Hugging Face folder or short name  [model.path]")
    p.add_argument("--data-dir", help="data root holding gsm8k/, math500/, ... (default: $NANOSEEK_DATA_DIR or ./data)  [task.data_dir]")
    p.add_argument("--out", help="run directory (default: runs/<recipe>-<timestamp>); never overwritten  [run.out]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--seed", type=int, help="run seed  [run.seed]")
    p.add_argument("--steps", type=int, help="GRPO steps  [grpo.steps]")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config field (repeatable)")


def resolve_config(args) -> tuple[dict, str | None, bool]:
    """The config dict for these arguments, the output directory and whether this is a resume."""
    out, resume = run_out(args.resume, args.out), bool(args.resume)
    data = resume_or_recipe_dict(args.resume, args.config)
    overrides = list(args.set)
    if args.task and args.task != data.get("task", {}).get("name"):
        # another task: the recipe's task options (e.g. chain's min_terms) do not carry over
        data.setdefault("task", {})["options"] = {}
        overrides.append(f"task.name={toml_string(args.task)}")
    if args.model:
        data["model"] = {"path": args.model}
    if args.data_dir:
        overrides.append(f"task.data_dir={toml_string(args.data_dir)}")
    if args.seed is not None:
        overrides.append(f"run.seed={args.seed}")
    if args.steps is not None:
        overrides.append(f"grpo.steps={args.steps}")
    apply_overrides(data, overrides)
    if out is None:
        out = data.get("run", {}).get("out")
    return data, out, resume


def toml_string(s: str) -> str:
    """``s`` as a TOML basic string (quoted, backslashes and quotes escaped), for a ``--set`` value."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run(args) -> int:
    """Run ``nanoseek zero`` with the parsed arguments."""
    data, out, resume = resolve_config(args)
    cfg = build_zero_config(data)
    if cfg.model.path:
        resolve_model_dir(cfg.model.path)  # fail early, before a run directory is made
    run_zero(cfg, out=out, resume=resume, command=args._argv)
    return 0
