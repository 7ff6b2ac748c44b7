"""``nanoseek sample``: rejection sampling into chat JSONL ready for ``nanoseek sft`` (see ``nanoseek.recipes.rejection``).

Examples::

    nanoseek sample --model runs/r1-cpu-X --task chain --out data/r1_chain.jsonl --prompts 1000 --samples 4
    nanoseek sample --endpoint http://127.0.0.1:8000/v1 --model deepseek-reasoner --task gsm8k --out gsm8k_r1.jsonl

Prints how many candidates each filter dropped and writes them to ``OUT.report.json``.
"""

from __future__ import annotations

import argparse

from nanoseek.config import apply_overrides, build, load
from nanoseek.evaluation.run import EvalSettings, model_run_config
from nanoseek.recipes.rejection import RejectionSamplingConfig, run_sample
from nanoseek.tasks import get_task


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the ``nanoseek sample`` flags on ``p``."""
    p.add_argument("--model", required=True, help="a run directory, checkpoint or Hugging Face folder; with --endpoint the remote model name")
    p.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible base URL ending in /v1")
    p.add_argument("--api-key", help="bearer token for --endpoint (default: $OPENAI_API_KEY)")
    p.add_argument("--task", help="task whose prompts to sample and whose rewards grade them (default: the model's run's "
                                 "task, else chain)  [task.name]")
    p.add_argument("--data-dir", help="data root holding gsm8k/, math500/, ... (default: $NANOSEEK_DATA_DIR or ./data)")
    p.add_argument("--out", required=True, help="output chat JSONL file")
    p.add_argument("--config", help="TOML file with a [sample] table (and optionally [task])")
    p.add_argument("--split", help="task split to draw prompts from (default: train)  [sample.split]")
    p.add_argument("--prompts", type=int, help="prompts to sample, 0 = all (default: 256)  [sample.prompts]")
    p.add_argument("--samples", type=int, help="samples per prompt, k (default: 4)  [sample.samples]")
    p.add_argument("--temperature", type=float, help="(default 0.6)  [sample.temperature]")
    p.add_argument("--max-tokens", type=int, help="completion token budget (default 4096)  [sample.max_new_tokens]")
    p.add_argument("--threshold", type=float, help="decontamination n-gram overlap threshold (default 0.5)  [sample.decontam_threshold]")
    p.add_argument("--no-decontaminate", action="store_true", help="skip decontamination  [sample.decontaminate]")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config field")


def run(args) -> int:
    """Run ``nanoseek sample`` with the parsed arguments."""
    data = load(args.config) if args.config else {}
    flags = {"split": args.split, "prompts": args.prompts, "samples": args.samples, "temperature": args.temperature,
             "max_new_tokens": args.max_tokens, "decontam_threshold": args.threshold}
    sample = {**data.get("sample", {}), **{k: v for k, v in flags.items() if v is not None}}
    if args.no_decontaminate:
        sample["decontaminate"] = False
    data["sample"] = sample
    apply_overrides(data, list(args.set))
    cfg = build(RejectionSamplingConfig, data["sample"], "sample")
    task_cfg = data.get("task", {})
    if not task_cfg and not args.endpoint:  # a nanoseek run: its own task and options, as nanoseek eval does
        task_cfg = model_run_config(EvalSettings(model=args.model)).get("task") or {}
    name = args.task or task_cfg.get("name") or "chain"
    options = task_cfg.get("options", {}) if name == task_cfg.get("name") else {}
    task = get_task(name, data_dir=args.data_dir or task_cfg.get("data_dir"), **options)
    run_sample(args.model, task, cfg, args.out, endpoint=args.endpoint, api_key=args.api_key, data_dir=args.data_dir)
    return 0
