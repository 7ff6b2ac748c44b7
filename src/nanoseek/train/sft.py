"""Supervised fine-tuning: the loss and the training loop of cold start, rejection-sampling SFT and distillation.

DeepSeek-R1 fine-tunes on chat data three times: the cold start (thousands of long, readable CoT
examples, R1 paper v1 sec. 2.3.1), the rejection-sampling SFT of the base model (about 800k
samples for two epochs, sec. 2.3.3) and distillation into small dense models (the same 800k
samples, SFT only, sec. 2.4). All three are this module: chat JSONL (``nanoseek.train.sft_data``) in,
next-token cross-entropy on completion tokens only, averaged over those tokens in the batch.

Defaults follow the papers where they say: 2 epochs (R1 sec. 2.3.3); cosine learning rate from
5e-6 down to 1e-6, i.e. ``min_lr_ratio = 0.2`` (DeepSeek-V3 sec. 5.1, its SFT); AdamW with
β = (0.9, 0.95) as in V3 pre-training (the SFT betas are not given). Not given anywhere, chosen
here: batch size 32, no warm-up, no weight decay, gradient clipping at 1.0.

``train_sft`` trains inside a run directory with the conventions of GRPO runs (``nanoseek.runs``):
``metrics.jsonl`` (``sft/loss``, ``sft/accuracy``, lr, grad norm, tokens/s per step),
``checkpoints/step-N/`` (a Hugging Face folder + optimizer, RNG and data position), resume from
the newest checkpoint with the same data order, and a progress bar. The ``nanoseek sft`` command
and the SFT stages of the recipes (evaluation before and after, summary, report) are
``nanoseek.recipes.sft``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanoseek.config import check_ranges
from nanoseek.errors import NanoseekError
from nanoseek.progress import Progress
from nanoseek.runs.checkpoint import resume_from_latest, save_checkpoint
from nanoseek.train.optim import lr_at, make_adamw, set_lr
from nanoseek.train.sft_data import SFTBatch, SFTSchedule


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
        check_ranges(self, "sft", {
            "epochs": ">= 0", "steps": ">= 0", "batch_size": ">= 1", "lr": "> 0", "min_lr_ratio": "[0, 1]",
            "warmup_steps": ">= 0", "weight_decay": ">= 0", "grad_clip": ">= 0", "max_length": ">= 0", "seed": ">= 0",
            "eval_every": ">= 0"})
        if self.steps == 0 and self.epochs == 0:
            raise NanoseekError("sft needs epochs > 0 or steps > 0")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps: ``steps``, else ``epochs`` of ``steps_per_epoch`` (at least one)."""
        return self.steps or max(1, math.ceil(self.epochs * steps_per_epoch))


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


# ----------------------------------------------------------------------------------------- loop
def train_sft(policy, schedule: SFTSchedule, cfg: SFTConfig, run, *, eval_fn=None, desc: str = "sft",
              checkpoint_every: int = 50, keep_checkpoints: int = 2, max_wall_seconds: float = 0.0,
              wall_start: float | None = None, fault_hook=None) -> int:
    """Train ``policy.model`` in place for ``cfg.total_steps`` steps in the run directory ``run``,
    resuming from its newest checkpoint; checkpoint every ``checkpoint_every`` steps (keeping the
    last ``keep_checkpoints``) and at the end. ``eval_fn(desc)`` returns eval metrics to log every
    ``cfg.eval_every`` steps. Returns the steps done: fewer when ``max_wall_seconds`` (> 0) have
    passed since ``wall_start`` (a ``time.time()``; default now), and the run stops with a
    checkpoint. ``fault_hook(tmp_dir)`` runs inside every checkpoint write, before its rename."""
    model = policy.model
    steps = cfg.total_steps(schedule.steps_per_epoch)
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay)
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
        set_lr(optimizer, lr)
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
        out_of_time = max_wall_seconds and time.time() - t_start > max_wall_seconds
        if done % max(1, checkpoint_every) == 0 or done == steps or out_of_time:
            save_checkpoint(run, done, model, policy.tokenizer, {"step": done, "optimizer": optimizer.state_dict()},
                            meta={"phase": "sft", "data_position": done * cfg.batch_size},
                            keep_last=keep_checkpoints, before_rename=fault_hook)
        if out_of_time:
            print(f"[nanoseek] {desc}: wall-time limit reached after step {done}; resume with --resume", flush=True)
            break
    bar.close()
    model.eval()
    return done
