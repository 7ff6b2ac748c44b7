"""``nanoseek r1``: the four-stage DeepSeek-R1 recipe, with the R1-Zero run of the same base beside it.

With no arguments it runs the embedded CPU recipe ``configs/r1-cpu.toml`` (see ``nanoseek.recipes.r1``)::

    nanoseek r1                                   # base, R1-Zero, cold start, reasoning RL, rejection SFT, RL
    nanoseek r1 --resume runs/r1-cpu-X            # continue a stopped run (finished stages are skipped)
    nanoseek r1 --resume runs/r1-cpu-X --from rejection_sft --set rejection.sample.samples=4
    nanoseek r1 --until cold_start                # stop after a stage
"""

from __future__ import annotations

import argparse

from nanoseek.config import apply_overrides
from nanoseek.recipes.config import resume_or_recipe_dict, run_out
from nanoseek.recipes.r1 import STAGES, build_r1_config, run_r1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``nanoseek r1`` flags on ``p`` (each names the config field it sets in brackets)."""
    p.add_argument("--config", default="r1-cpu", help="recipe TOML file or built-in recipe name (default: r1-cpu)")
    p.add_argument("--out", help="run directory (default: runs/<recipe>-<timestamp>); never overwritten")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run; finished stages are skipped")
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="with --resume: redo this stage and every later one")
    p.add_argument("--until", choices=STAGES, help="stop after this stage")
    p.add_argument("--model", help="start from this base model instead of pretraining one  [model.path]")
    p.add_argument("--seed", type=int, help="run seed  [run.seed]")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config field")


def run(args) -> int:
    """Run ``nanoseek r1`` with the parsed arguments."""
    out = run_out(args.resume, args.out)
    data = resume_or_recipe_dict(args.resume, args.config)
    overrides = list(args.set) + ([f"run.seed={args.seed}"] if args.seed is not None else [])
    apply_overrides(data, overrides)
    if args.model:
        data["model"] = {"path": args.model}
    cfg = build_r1_config(data)
    run_r1(cfg, out=out or cfg.run.out, resume=bool(args.resume), from_stage=args.from_stage, until=args.until,
           command=getattr(args, "_argv", "nanoseek r1"))
    return 0
