"""``nanoseek distill``: rejection-sample a teacher, SFT a smaller student, compare with GRPO alone.

Examples::

    nanoseek distill --teacher runs/r1-cpu-X                       # the CPU default student (configs/distill-cpu.toml)
    nanoseek distill --teacher runs/r1-cpu-X --student student.json   # a fresh nanoseek model from this config.json
    nanoseek distill --teacher deepseek-reasoner --teacher-endpoint https://api.deepseek.com/v1 \\
        --student path/to/Qwen2.5-0.5B --task gsm8k --no-compare
    nanoseek distill --resume runs/distill-cpu-X

See ``nanoseek.recipes.distill``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nanoseek.config import apply_overrides
from nanoseek.errors import NanoseekError
from nanoseek.model import hub
from nanoseek.model.load import resolve_model_dir
from nanoseek.recipes.config import resume_or_recipe_dict, run_out
from nanoseek.recipes.distill import build_distill_config, run_distill


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``nanoseek distill`` flags on ``p`` (each names the config field it sets in brackets)."""
    p.add_argument("--teacher", help="teacher: run directory (e.g. a nanoseek r1 run), checkpoint, Hugging Face folder; "
                                     "with --teacher-endpoint the remote model name  [teacher]")
    p.add_argument("--teacher-endpoint", metavar="URL", help="OpenAI-compatible base URL of the teacher  [teacher_endpoint]")
    p.add_argument("--api-key", help="bearer token for --teacher-endpoint (default: $OPENAI_API_KEY)")
    p.add_argument("--student", help="student: a model folder (any transformers causal LM or nanoseek checkpoint), or a "
                                     "config.json for a fresh nanoseek model (dense or MoE), pretrained first  [student]")
    p.add_argument("--task", help="task to distil on (default: the recipe's)  [task.name]")
    p.add_argument("--config", default="distill-cpu", help="recipe TOML file or built-in name (default: distill-cpu)")
    p.add_argument("--no-compare", action="store_true", help="skip the GRPO-only student  [compare_grpo]")
    p.add_argument("--out", help="run directory (default: runs/distill-cpu-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config field")


def student_spec(arg: str) -> dict:
    """The fields of a ``.json`` config for a fresh nanoseek model, else ``{"path": arg}`` (a model
    folder or run directory, checked by ``resolve_model_dir``, or a short name, converted only when
    loaded: after the whole config has been checked)."""
    p = Path(arg)
    if p.suffix == ".json":
        if not p.is_file():
            raise NanoseekError(f"--student {arg}: no such config file")
        try:
            fields = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise NanoseekError(f"--student {arg}: not valid JSON ({e})") from None
        return {k: v for k, v in fields.items() if k not in ("architectures", "model_type", "transformers_version")}
    if not (hub.is_short_name(arg) and not p.exists()):
        resolve_model_dir(arg)  # fail early with a one-line error
    return {"path": arg}


def run(args) -> int:
    """Run ``nanoseek distill`` with the parsed arguments."""
    out = run_out(args.resume, args.out)
    data = resume_or_recipe_dict(args.resume, args.config)
    apply_overrides(data, list(args.set))
    if args.teacher:
        data["teacher"] = args.teacher
    if args.teacher_endpoint:
        data["teacher_endpoint"] = args.teacher_endpoint
    if args.api_key:
        data["api_key"] = args.api_key
    if args.student:
        data["student"] = student_spec(args.student)
    if args.task:
        data.setdefault("task", {})["name"] = args.task
    if args.no_compare:
        data["compare_grpo"] = False
    cfg = build_distill_config(data)
    if not cfg.teacher_endpoint:
        resolve_model_dir(cfg.teacher)  # fail early, before a run directory is made
    run_distill(cfg, out=out or cfg.run.out, resume=bool(args.resume),
                command=getattr(args, "_argv", "nanoseek distill"))
    return 0
