"""``nanoseek sft`` and the SFT stages of the recipes: fine-tune a policy on chat data inside a run
directory, with held-out evaluation before and after, ``summary.json`` and ``report.md``.

The loss, the loop and the paper defaults are ``nanoseek.train.sft``; the chat data is
``nanoseek.train.sft_data``. Runs use the conventions of GRPO runs (``nanoseek.runs.rundir``):
``RUN_DIR/config.toml``, ``metrics.jsonl``, ``checkpoints/step-N/``, resume from the newest
checkpoint, ``plots/`` and ``report.md``; ``eval_before.json`` / ``eval_after.json`` when a task is
given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanoseek.atomic import atomic_write_json
from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import EvalConfig, eval_metrics_record
from nanoseek.recipes.common import (WallClock, create_run, finished_run, first_samples, is_eval_record, load_policy,
                                     load_task, log, report_sample, run_eval, stored_eval, use_threads)
from nanoseek.recipes.config import ModelSource, RunConfig, TaskConfig, build_recipe, recipe_dict
from nanoseek.runs.plots import PlotSpec, plot_run
from nanoseek.runs.report import write_report
from nanoseek.runs.rundir import RunDir
from nanoseek.train.sft import SFTConfig, train_sft
from nanoseek.train.sft_data import SFTSchedule, encode_chats, load_chat_jsonl


@dataclass
class SFTRecipe:
    """``nanoseek sft``: a model (``model.path``), chat JSONL files (``data``), ``[sft]`` settings and
    an optional held-out evaluation (``task.name`` set and ``eval.limit`` > 0)."""

    run: RunConfig = field(default_factory=lambda: RunConfig(name="sft"))
    model: ModelSource = field(default_factory=ModelSource)
    data: list = field(default_factory=list)
    sft: SFTConfig = field(default_factory=SFTConfig)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(name=""))
    eval: EvalConfig = field(default_factory=EvalConfig)


def build_sft_recipe(data: dict) -> SFTRecipe:
    """Build and validate an ``SFTRecipe`` from a dict (unknown keys raise ``NanoseekError``)."""
    return build_recipe(SFTRecipe, data)


def sft_stage(policy, chats: list[list[dict]], cfg: SFTConfig, run: RunDir, run_cfg: RunConfig, *, task=None,
              eval_cfg: EvalConfig | None = None, before: dict | None = None, title: str = "nanoseek sft",
              command: str = "nanoseek sft", fault_hook=None) -> dict:
    """Fine-tune ``policy`` on ``chats`` inside the run directory ``run`` (resumable; checkpoint cadence
    and wall-time limit from ``run_cfg``) and write its summary and report. With a ``task``, the
    held-out split is evaluated before (unless ``before``, a stored evaluation of this same model,
    is given) and after. Returns the summary (``stopped`` set when the wall-time limit stopped it)."""
    clock = WallClock(run.path / "wall.json")
    clock.start()
    try:
        return _sft_stage(policy, chats, cfg, run, run_cfg, clock, task=task, eval_cfg=eval_cfg, before=before,
                          title=title, command=command, fault_hook=fault_hook)
    finally:
        clock.stop()


def _sft_stage(policy, chats, cfg: SFTConfig, run: RunDir, run_cfg: RunConfig, clock: WallClock, *, task, eval_cfg,
               before, title: str, command: str, fault_hook) -> dict:
    examples, dropped = encode_chats(chats, policy.tokenizer, cfg.max_length)
    schedule = SFTSchedule(examples, cfg.batch_size, cfg.seed, cfg.packing, cfg.max_length)
    steps = cfg.total_steps(schedule.steps_per_epoch)
    n_tok = sum(sum(e.completion) for e in examples)
    log(f"{title}: {len(chats)} chats -> {len(examples)} sequences ({dropped} over max_length dropped), "
        f"{n_tok} completion tokens, {steps} steps")
    evaluate = task is not None and eval_cfg is not None and eval_cfg.limit != 0
    before_samples: list[dict] = []
    if evaluate and before is None:
        stored = stored_eval(run.path / "eval_before.json", run, policy, task, eval_cfg, "eval before")
        before, before_samples = stored["metrics"], stored["samples"]

    def eval_fn(desc):
        return eval_metrics_record(run_eval(policy, task, eval_cfg, desc)[0])

    t_train = time.time()
    done = train_sft(policy, schedule, cfg, run, eval_fn=eval_fn if evaluate else None, desc=title.split(":")[-1].strip(),
                     checkpoint_every=run_cfg.checkpoint_every, keep_checkpoints=run_cfg.keep_checkpoints,
                     max_wall_seconds=run_cfg.max_wall_seconds, wall_start=clock.origin, fault_hook=fault_hook)
    train_seconds = time.time() - t_train  # this call's training only (after a crash, the resumed part)
    summary = {"title": title, "examples": len(examples), "chats": len(chats), "dropped_too_long": dropped,
               "completion_tokens": n_tok, "steps": done, "planned_steps": steps, "command": command,
               "train_seconds": round(train_seconds, 1)}
    if done < steps:  # stopped by run.max_wall_seconds: no final evaluation; summary.json means finished
        clock.save()
        return {**summary, "stopped": True}
    after_samples: list[dict] = []
    if evaluate:
        final, res = run_eval(policy, task, eval_cfg, "eval after")
        run.drop_records(lambda r: r.get("step") == done and is_eval_record(r), samples=False)  # a killed call's
        run.log_metrics({"step": done, **eval_metrics_record(final)})
        summary.update({"task": task.name, "base": before, "final": final})
        after_samples = first_samples(res, eval_cfg.samples)
        atomic_write_json(run.path / "eval_after.json", {"metrics": final, "samples": after_samples})
    clock.stop()
    summary["wall_seconds"] = round(clock.save(), 1)
    write_sft_report(run, summary, before_samples, after_samples)
    run.write_summary(summary)  # last: it marks the run complete
    return summary


def write_sft_report(run: RunDir, summary: dict, before: list[dict], after: list[dict]) -> None:
    """``plots/`` (loss, token accuracy) and ``report.md`` of an SFT run; ``before``/``after`` are
    stored evaluation samples."""
    series = {"loss": PlotSpec("SFT loss (completion tokens)", "cross-entropy", ("sft/loss",)),
              "token_accuracy": PlotSpec("SFT next-token accuracy", "accuracy", ("sft/accuracy",), unit_range=True)}
    plots = plot_run(run.read_metrics(), run.plots_dir, series=series)
    notes = [f"{summary['chats']} chats, {summary['examples']} training sequences, {summary['completion_tokens']} "
             f"completion tokens; loss on completion tokens only."]
    write_report(run, title=summary["title"], summary=summary, plots=plots,
                 samples_before=[report_sample(s) for s in before], samples_after=[report_sample(s) for s in after],
                 notes=notes)


def run_sft(recipe: SFTRecipe, out: str | None = None, resume: bool = False, command: str = "nanoseek sft") -> Path:
    """Run (or resume) ``nanoseek sft``; return the run directory. Raises ``NanoseekError`` without a
    model, or for bad data (before a run directory is made)."""
    if not recipe.model.path:
        raise NanoseekError("nanoseek sft needs --model (a run directory, checkpoint or Hugging Face folder)")
    if resume and out and RunDir(out).summary_path.exists():  # written only when the run finished
        return finished_run(RunDir(out), recipe_dict(recipe), "fine-tuning finished")
    use_threads(recipe.run.threads)
    chats = load_chat_jsonl(recipe.data)  # before a run directory is made: bad data fails at once
    task = load_task(recipe.task) if recipe.task.name and recipe.eval.limit != 0 else None
    policy = load_policy(recipe.model.path, recipe.task.system_prompt)
    run = create_run(recipe, out, resume)
    command = run.record_command(command)[0]  # the report shows the command that started the run
    torch.manual_seed(recipe.run.seed)
    summary = sft_stage(policy, chats, recipe.sft, run, recipe.run, task=task, eval_cfg=recipe.eval,
                        title=f"nanoseek sft: {Path(str(recipe.model.path)).name}", command=command)
    if summary.get("stopped"):
        log(f"stopped at step {summary['steps']} of {summary['planned_steps']}; continue with "
            f"nanoseek sft --resume {run.path}")
        return run.path
    if "final" in summary:
        log(f"pass@1 {summary['base']['pass@1']:.3f} -> {summary['final']['pass@1']:.3f}")
    log(f"report: {run.report_path}")
    return run.path
