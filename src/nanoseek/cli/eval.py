"""``nanoseek eval``: pass@1 over k samples, pass@k and cons@k on benchmarks, for a local model or
any OpenAI-compatible endpoint (DeepSeek-R1 sec. 3 settings by default).

Examples::

    nanoseek eval --model runs/zero-cpu-20250101-120000 --task gsm8k --limit 50 --samples 4 --max-tokens 256
    nanoseek eval --endpoint http://127.0.0.1:8000/v1 --model deepseek-reasoner --task math500 --samples 16

Writes results.json, results.md and samples.jsonl into --out (see ``nanoseek.evaluation.store``); the same
command again continues an interrupted evaluation.
"""

from __future__ import annotations

import argparse
import sys

from nanoseek.config import parse_value
from nanoseek.errors import NanoseekError
from nanoseek.evaluation.report import main_table
from nanoseek.evaluation.run import EvalSettings, default_out, run_evaluation


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``nanoseek eval`` flags on ``p``."""
    p.add_argument("--model", help="a run directory, checkpoint folder, Hugging Face folder or short name; "
                                   "with --endpoint: the remote model name, sent as is")
    p.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible base URL ending in /v1 (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", help="bearer token for --endpoint (default: $OPENAI_API_KEY)")
    p.add_argument("--task", action="append", default=[], metavar="TASK",
                   help="task name (gsm8k, math500, math, countdown, chain) or a .jsonl file; repeat or comma-separate "
                        "for several (default for a run directory: the run's task)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the task, e.g. test_seed=7 for freshly generated problems (repeatable; the "
                        "value is read as TOML, else as a string; over a run's recorded task options)")
    p.add_argument("--data-dir", help="data root holding gsm8k/, math500/, ... (default: $NANOSEEK_DATA_DIR or ./data)")
    p.add_argument("--limit", type=int, help="first N problems of each task's test split (default: all)")
    p.add_argument("--samples", type=int, default=4, help="samples per problem, k (default: 4; DeepSeek-R1 used 4-64)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: 0.6, DeepSeek-R1)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95, DeepSeek-R1)")
    p.add_argument("--max-tokens", type=int, default=4096,
                   help="completion token budget (default: 4096; DeepSeek-R1 used 32768)")
    p.add_argument("--concurrency", type=int,
                   help="endpoint: requests in flight (default 16); local model: samples per batch (default 256)")
    p.add_argument("--seed", type=int, default=1234, help="sampling seed; sample j of problem i uses a seed derived from (seed, i, j)")
    p.add_argument("--instruction", default="auto",
                   help="'auto' (R1 math instruction for math tasks in the R1 chat format, none for R1-Zero "
                        "checkpoints), 'none', or a text appended to every question")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request to --endpoint (default: 600)")
    p.add_argument("--retries", type=int, default=6, help="retries per request on 429/5xx/connection errors (default: 6)")
    p.add_argument("--threads", type=int, help="torch threads for a local model (default: the run's run.threads, "
                                               "else torch's default; 0: torch's default)")
    p.add_argument("--out", help="output directory (default: evals/eval-<model>-<time>); rerun with it to continue")


def settings_from_args(args) -> EvalSettings:
    """The ``EvalSettings`` of parsed ``nanoseek eval`` arguments (``--task`` split on commas)."""
    tasks = [t.strip() for item in args.task for t in item.split(",") if t.strip()]
    return EvalSettings(model=args.model, endpoint=args.endpoint, tasks=tasks, limit=args.limit, samples=args.samples,
                        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                        concurrency=args.concurrency, seed=args.seed, out=args.out, instruction=args.instruction,
                        api_key=args.api_key, data_dir=args.data_dir, timeout=args.timeout, retries=args.retries,
                        threads=args.threads, task_options=task_options(args.task_option))


def task_options(items: list[str]) -> dict:
    """``--task-option KEY=VALUE`` flags as a dict (values parsed as TOML, else kept as strings).
    Raises ``NanoseekError`` for an item without ``=``."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise NanoseekError(f"--task-option {item!r} must look like KEY=VALUE (e.g. test_seed=7)")
        out[key.strip()] = parse_value(value.strip())
    return out


def run(args) -> int:
    """Run ``nanoseek eval``; print the main table; 130 when interrupted (finished samples kept)."""
    settings = settings_from_args(args)
    settings.out = settings.out or str(default_out(settings))
    try:
        metrics = run_evaluation(settings, command=getattr(args, "_argv", "nanoseek eval"))
    except KeyboardInterrupt:
        print(f"nanoseek eval: interrupted; the finished samples are saved in {settings.out}: rerun with "
              f"--out {settings.out} and the same settings to continue", file=sys.stderr)
        return 130
    print(main_table(metrics), end="")
    return 0
