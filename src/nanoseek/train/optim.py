"""The optimizer and learning-rate schedules shared by pretraining, SFT and GRPO.

* :func:`make_adamw`: AdamW with DeepSeek-V3's betas and weight decay on matrices only
  (pretraining, SFT), or, with ``decay="all"`` and GRPO's betas, one group over every trainable
  parameter (the GRPO trainer).
* :func:`lr_at`: ``warmup`` steps of linear warm-up from ``lr / warmup`` to ``lr``, then one of
  :data:`LR_SCHEDULES` (``cosine`` or ``linear`` decay to ``lr * min_ratio`` at ``total``).
* :func:`set_lr`: write a learning rate into every parameter group before a step.

Where each optimizer default comes from (the learning rates, warm-up, weight decay and clipping of
each stage are in its config class: ``train.pretrain.PretrainConfig``, ``train.sft.SFTConfig``,
``rl.config.GRPOConfig``):

* ``ADAMW_BETAS = (0.9, 0.95)``: DeepSeek-V3 report sec. 4.2 (pre-training AdamW, with weight decay
  0.1 and gradient clipping 1.0); SFT reuses them (neither V3 nor R1 gives SFT betas).
* ``GRPO_BETAS = (0.9, 0.999)``: no DeepSeek paper gives RL betas (DeepSeekMath sec. 4.2 and
  R1-Nature give only the learning rate), so the GRPO trainer takes the reference implementation's:
  TRL's ``GRPOTrainer`` builds its AdamW from ``transformers.TrainingArguments`` defaults,
  ``adam_beta1 = 0.9``, ``adam_beta2 = 0.999``, ``adam_epsilon = 1e-8`` (TRL 1.16, transformers 5.24;
  ``tests/test_trainer_optim.py`` reads them from transformers). It was (0.9, 0.99), a value with no
  source, before; a resumed run keeps the betas saved in its optimizer state (``load_state_dict``).
* ``ADAMW_EPS = 1e-8``: the same ``adam_epsilon`` (and PyTorch's default); no DeepSeek paper gives one.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

# DeepSeek-V3 sec. 4.2 (pre-training); SFT reuses them (V3 and R1 give none for SFT).
ADAMW_BETAS = (0.9, 0.95)
# TRL GRPOTrainer = transformers.TrainingArguments adam_beta1 / adam_beta2 (no DeepSeek paper gives RL betas).
GRPO_BETAS = (0.9, 0.999)
# transformers.TrainingArguments adam_epsilon (= PyTorch's AdamW default); no DeepSeek paper gives one.
ADAMW_EPS = 1e-8


def make_adamw(model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
               betas: tuple[float, float] = ADAMW_BETAS, decay: str = "matrices") -> torch.optim.Optimizer:
    """AdamW (``eps`` = ``ADAMW_EPS``, 1e-8) over the trainable parameters.

    Args:
        model_or_params: a module (its parameters with ``requires_grad``) or the parameters.
        lr: initial learning rate (the schedule overwrites it each step, :func:`set_lr`).
        weight_decay: decoupled weight decay.
        betas: ``ADAMW_BETAS`` (DeepSeek-V3 sec. 4.2) or ``GRPO_BETAS`` (TRL's, via transformers).
        decay: ``"matrices"``: two groups, ``weight_decay`` on parameters with ``dim >= 2`` and
            none on norms, biases and other vectors; ``"all"``: one group, ``weight_decay`` on
            every parameter (the GRPO trainer's optimizer, whose checkpoints hold one group).

    Raises:
        ValueError: for another ``decay``.
    """
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    params = [p for p in params if p.requires_grad]
    if decay == "all":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=ADAMW_EPS, weight_decay=weight_decay)
    if decay != "matrices":
        raise ValueError(f"decay must be 'matrices' or 'all', got {decay!r}")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=ADAMW_EPS)


def cosine_decay(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of ``lr`` after warm-up: half a cosine from 1 at ``warmup`` to ``min_ratio`` at
    ``total`` (1 when ``total <= warmup``; ``min_ratio = 1`` is a constant rate)."""
    if total <= warmup:
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def linear_decay(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of ``lr`` after warm-up: a straight line from 1 at ``warmup`` to ``min_ratio`` at ``total``."""
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1 - (1 - min_ratio) * t


LR_SCHEDULES: dict[str, Callable[[int, int, int, float], float]] = {"cosine": cosine_decay, "linear": linear_decay}


def lr_at(step: int, total: int, lr: float, warmup: int, min_ratio: float, schedule: str = "cosine") -> float:
    """Learning rate of 0-based ``step`` of ``total``: linear warm-up over ``warmup`` steps
    (``lr * (step + 1) / warmup``), then ``LR_SCHEDULES[schedule]`` decay to ``lr * min_ratio``.

    Raises:
        KeyError: for a schedule not in ``LR_SCHEDULES`` (configs check their names first).
    """
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    return lr * LR_SCHEDULES[schedule](step, total, warmup, min_ratio)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Use ``lr`` in every parameter group for the next step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
