"""Supervised fine-tuning (``nanoseek sft``): cold start, rejection-sampling SFT and distillation.

DeepSeek-R1 fine-tunes on chat data three times: the cold start (thousands of long, readable CoT
examples, R1 paper v1 sec. 2.3.1), the rejection-sampling SFT of the base model (about 800k
samples for two epochs, sec. 2.3.3) and distillation into small dense models (the same 800k
samples, SFT only, sec. 2.4). All three are this module: chat JSONL (``nanoseek.train.sft_data``) in,
next-token cross-entropy on completion tokens only, averaged over those tokens in the batch.

Defaults follow the papers where they say: 2 epochs (R1 sec. 2.3.3); cosine learning rate from
5e-6 down to 1e-6, i.e. ``min_lr_ratio = 0.2`` (DeepSeek-V3 sec. 5.1, its SFT); AdamW with
β = (0.9, 0.95) as in V3 pre-training (the SFT betas are not given). Not given anywhere, chosen
here: batch size 32, no warm-up, no weight decay, gradient clipping at 1.0.

Runs use the conventions of GRPO runs (``nanoseek.runs.rundir``): ``RUN_DIR/config.toml``,
``metrics.jsonl`` (``sft/loss``, ``sft/accuracy``, lr, grad norm, tokens/s per step),
``checkpoints/step-N/`` (a Hugging Face folder + optimizer, RNG and data position), resume from
the newest checkpoint with the same data order, a progress bar, ``plots/`` and ``report.md`` with
held-out evaluation before and after when a task is given.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import EvalConfig
from nanoseek.recipes.config import RunConfig, TaskConfig
from nanoseek.train.sft_data import SFTBatch, SFTSchedule, encode_chats, load_chat_jsonl


@dataclass
class SFTConfig:
    """Supervised fine-tuning on chat data (see the module docstring for sources).

    ``steps`` > 0 overrides ``epochs``. ``max_length`` > 0 drops longer sequences (and is the row
    length when ``packing``). ``seed`` orders the data (per epoch).
    """

    epochs: float = 2.0
    steps: int = 0
    batch_size: int = 32
    lr: float = 5e-6
    min_lr_ratio: float = 0.2
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_length: int = 0
    packing: bool = False
    seed: int = 0
    eval_every: int = 0

    def __post_init__(self):
        if self.batch_size < 1:
            raise NanoseekError(f"sft.batch_size must be >= 1, got {self.batch_size}")
        if self.steps < 0 or self.epochs < 0 or (self.steps == 0 and self.epochs == 0):
            raise NanoseekError("sft needs epochs > 0 or steps > 0")

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.steps or max(1, math.ceil(self.epochs * steps_per_epoch))


@dataclass
class SFTRecipe:
    """``nanoseek sft``: a model (``model.path``), chat JSONL files (``data``), ``[sft]`` settings and
    an optional held-out evaluation (``task.name`` set and ``eval.limit`` > 0)."""

    run: RunConfig = field(default_factory=lambda: RunConfig(name="sft"))
    model: dict = field(default_factory=dict)
    data: list = field(default_factory=list)
    sft: SFTConfig = field(default_factory=SFTConfig)
    task: TaskConfig = field(default_factory=lambda: TaskConfig(name=""))
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------------------- loss
def sft_loss(model, batch: SFTBatch) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the completion tokens of ``batch`` (+ the MoE balance loss if on).

    Position t predicts token t+1, which counts when ``loss_mask[t+1]`` is 1. Returns
    ``(loss, metrics)`` with ``sft/loss``, ``sft/accuracy`` (greedy next-token accuracy on those
    tokens) and ``sft/tokens``.
    """
    kw = {"position_ids": batch.position_ids} if batch.position_ids is not None else {}
    out = model(batch.input_ids, attention_mask=batch.attention_mask, **kw)
    logits = out.logits[:, :-1].float()  # [B, T-1, V]
    target = batch.input_ids[:, 1:]
    weight = batch.loss_mask[:, 1:].float()
    n = weight.sum().clamp(min=1)
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none").view_as(target)
    loss = (ce * weight).sum() / n
    with torch.no_grad():
        acc = ((logits.argmax(-1) == target).float() * weight).sum() / n
    metrics = {"sft/loss": float(loss.detach()), "sft/accuracy": float(acc), "sft/tokens": int(weight.sum())}
    aux = getattr(out, "aux_loss", None)
    if aux is not None:
        loss = loss + aux
        metrics["sft/balance_loss"] = float(aux.detach())
    return loss, metrics


def make_optimizer(model, cfg: SFTConfig) -> torch.optim.Optimizer:
    """The SFT optimizer: ``nanoseek.train.pretrain.make_adamw`` at ``cfg.lr`` / ``cfg.weight_decay``."""
    from nanoseek.train.pretrain import make_adamw

    return make_adamw(model, cfg.lr, cfg.weight_decay)


# ----------------------------------------------------------------------------------------- loop
def train_sft(policy, schedule: SFTSchedule, cfg: SFTConfig, run, run_cfg: RunConfig, eval_fn=None,
              desc: str = "sft", fault_hook=None, wall_start: float | None = None) -> int:
    """Train ``policy.model`` in place for ``cfg.total_steps`` steps, resuming from ``run``'s newest
    checkpoint; checkpoint every ``run_cfg.checkpoint_every`` steps and at the end. ``eval_fn(desc)``
    returns eval metrics to log every ``cfg.eval_every`` steps. Returns the steps done (fewer when
    ``run_cfg.max_wall_seconds`` ran out: the run stops with a checkpoint)."""
    from nanoseek.runs.checkpoint import resume_from_latest, save_checkpoint
    from nanoseek.train.pretrain import lr_at
    from nanoseek.progress import Progress

    model = policy.model
    steps = cfg.total_steps(schedule.steps_per_epoch)
    optimizer = make_optimizer(model, cfg)
    start = resume_from_latest(run, model, optimizer)
    if start:
        print(f"[nanoseek] {desc}: resumed from {run.latest_checkpoint()} (step {start})", flush=True)
    t_start = wall_start if wall_start is not None else time.time()
    bar = Progress(steps, desc, initial=start)
    done = start
    model.train()
    for step in range(start, steps):
        t0 = time.perf_counter()
        lr = lr_at(step, steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = schedule.batch(step, policy.pad_id)
        loss, metrics = sft_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip else torch.tensor(0.0)
        optimizer.step()
        done = step + 1
        rec = {"step": done, "phase": "sft", **metrics, "lr": lr, "grad_norm": float(gnorm),
               "epoch": done / schedule.steps_per_epoch,
               "tokens_per_s": int(batch.attention_mask.sum()) / max(1e-9, time.perf_counter() - t0)}
        if eval_fn is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < steps:
            rec.update(eval_fn(f"eval step {done}"))
            model.train()
        run.log_metrics(rec)
        bar.update(1, loss=metrics["sft/loss"], acc=metrics["sft/accuracy"])
        out_of_time = run_cfg.max_wall_seconds and time.time() - t_start > run_cfg.max_wall_seconds
        if done % max(1, run_cfg.checkpoint_every) == 0 or done == steps or out_of_time:
            save_checkpoint(run, done, model, policy.tokenizer, {"step": done, "optimizer": optimizer.state_dict()},
                            meta={"phase": "sft", "data_position": done * cfg.batch_size},
                            keep_last=run_cfg.keep_checkpoints, before_rename=fault_hook)
        if out_of_time:
            print(f"[nanoseek] {desc}: wall-time limit reached after step {done}; resume with --resume", flush=True)
            break
    bar.close()
    model.eval()
    return done


# -------------------------------------------------------------------------------------- a stage
def eval_metrics_record(m: dict) -> dict:
    return {"eval/pass@1": m["pass@1"], "eval/well_formed": m["well_formed"], "eval/thinking": m["thinking"],
            "eval/mean_length": m["mean_length"]}


def sft_stage(policy, chats: list[list[dict]], cfg: SFTConfig, run, run_cfg: RunConfig, *, task=None,
              eval_cfg: EvalConfig | None = None, before: dict | None = None, title: str = "nanoseek sft",
              command: str = "nanoseek sft", fault_hook=None) -> dict:
    """Fine-tune ``policy`` on ``chats`` inside the run directory ``run`` (resumable) and write its
    summary and report. With a ``task``, the held-out split is evaluated before (unless ``before``,
    a stored evaluation of this same model, is given) and after. Returns the summary."""
    from nanoseek.atomic import atomic_write_json
    from nanoseek.evaluation.evaluate import results_as_dicts
    from nanoseek.recipes.zero import run_eval

    t_start = time.time()
    wall_path = run.path / "wall.json"
    prior = json.loads(wall_path.read_text())["seconds"] if wall_path.exists() else 0.0
    examples, dropped = encode_chats(chats, policy.tokenizer, cfg.max_length)
    schedule = SFTSchedule(examples, cfg.batch_size, cfg.seed, cfg.packing, cfg.max_length)
    steps = cfg.total_steps(schedule.steps_per_epoch)
    n_tok = sum(sum(e.completion) for e in examples)
    print(f"[nanoseek] {title}: {len(chats)} chats -> {len(examples)} sequences ({dropped} over max_length dropped), "
          f"{n_tok} completion tokens, {steps} steps", flush=True)
    evaluate = task is not None and eval_cfg is not None and eval_cfg.limit != 0
    holder = SimpleNamespace(eval=eval_cfg)
    before_samples: list[dict] = []
    if evaluate and before is None:
        path = run.path / "eval_before.json"
        if path.exists():
            stored = json.loads(path.read_text())
        else:
            m, res = run_eval(policy, task, holder, "eval before")
            stored = {"metrics": m, "samples": results_as_dicts(res[:4 * eval_cfg.samples:eval_cfg.samples])}
            atomic_write_json(path, stored)
            run.log_metrics({"step": 0, **eval_metrics_record(m)})
        before, before_samples = stored["metrics"], stored["samples"]

    def eval_fn(desc):
        return eval_metrics_record(run_eval(policy, task, holder, desc)[0])

    t_train = time.time()
    done = train_sft(policy, schedule, cfg, run, run_cfg, eval_fn if evaluate else None, title.split(":")[-1].strip(),
                     fault_hook, wall_start=t_start - prior)
    train_seconds = time.time() - t_train  # this call's training only (after a crash, the resumed part)
    summary = {"title": title, "examples": len(examples), "chats": len(chats), "dropped_too_long": dropped,
               "completion_tokens": n_tok, "steps": done, "planned_steps": steps, "command": command,
               "train_seconds": round(train_seconds, 1)}
    if done < steps:  # stopped by run.max_wall_seconds: no final evaluation; summary.json means finished
        atomic_write_json(wall_path, {"seconds": time.time() - t_start + prior})
        return {**summary, "stopped": True}
    after_samples: list[dict] = []
    if evaluate:
        final, res = run_eval(policy, task, holder, "eval after")
        run.log_metrics({"step": done, **eval_metrics_record(final)})
        summary.update({"task": task.name, "base": before, "final": final})
        after_samples = results_as_dicts(res[:4 * eval_cfg.samples:eval_cfg.samples])
        atomic_write_json(run.path / "eval_after.json", {"metrics": final, "samples": after_samples})
    wall = time.time() - t_start + prior
    atomic_write_json(wall_path, {"seconds": wall})
    summary["wall_seconds"] = round(wall, 1)
    run.write_summary(summary)
    write_sft_report(run, summary, before_samples, after_samples)
    return summary


def write_sft_report(run, summary: dict, before: list[dict], after: list[dict]) -> None:
    from nanoseek.runs.plots import PlotSpec, plot_run
    from nanoseek.runs.report import write_report
    from nanoseek.recipes.zero import _sample_view

    series = {"loss": PlotSpec("SFT loss (completion tokens)", "cross-entropy", ("sft/loss",)),
              "token_accuracy": PlotSpec("SFT next-token accuracy", "accuracy", ("sft/accuracy",), unit_range=True)}
    plots = plot_run(run.read_metrics(), run.plots_dir, series=series)
    notes = [f"{summary['chats']} chats, {summary['examples']} training sequences, {summary['completion_tokens']} "
             f"completion tokens; loss on completion tokens only."]
    write_report(run, title=summary["title"], summary=summary, plots=plots,
                 samples_before=[_sample_view(s) for s in before], samples_after=[_sample_view(s) for s in after],
                 notes=notes)


# ------------------------------------------------------------------------------------ the command
def load_policy(path: str, system_prompt: str | None = None):
    """A ``Policy`` for the model at ``path`` (run directory, checkpoint or Hugging Face folder)."""
    from nanoseek.model.hf import load_model, resolve_model_dir
    from nanoseek.policy.policy import Policy
    from nanoseek.tokenizer import load_tokenizer

    folder = resolve_model_dir(path)
    return Policy(load_model(folder), load_tokenizer(folder), system_prompt)


def run_sft(recipe: SFTRecipe, out: str | None = None, resume: bool = False, command: str = "nanoseek sft") -> Path:
    """Run (or resume) ``nanoseek sft``; return the run directory."""
    from nanoseek.runs.rundir import RunDir
    from nanoseek.config import to_dict

    if not recipe.model.get("path"):
        raise NanoseekError("nanoseek sft needs --model (a run directory, checkpoint or Hugging Face folder)")
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    chats = load_chat_jsonl(recipe.data)  # before a run directory is made: bad data fails at once
    task = None
    if recipe.task.name and recipe.eval.limit != 0:
        from nanoseek.tasks import get_task

        task = get_task(recipe.task.name, data_dir=recipe.task.data_dir, **recipe.task.options)
    policy = load_policy(recipe.model["path"], recipe.task.system_prompt)
    from nanoseek.runs.rundir import default_path

    run = RunDir.create(Path(out) if out else default_path(recipe.run.name), to_dict(recipe), resume=resume)
    print(f"[nanoseek] run directory: {run.path}", flush=True)
    torch.manual_seed(recipe.run.seed)
    summary = sft_stage(policy, chats, recipe.sft, run, recipe.run, task=task, eval_cfg=recipe.eval,
                        title=f"nanoseek sft: {Path(str(recipe.model['path'])).name}", command=command)
    if summary.get("stopped"):
        print(f"[nanoseek] stopped at step {summary['steps']} of {summary['planned_steps']}; continue with "
              f"nanoseek sft --resume {run.path}", flush=True)
        return run.path
    if "final" in summary:
        print(f"[nanoseek] pass@1 {summary['base']['pass@1']:.3f} -> {summary['final']['pass@1']:.3f}", flush=True)
    print(f"[nanoseek] report: {run.report_path}", flush=True)
    return run.path
