"""The optimizer and learning-rate schedules shared by pretraining, SFT and GRPO.

* :func:`make_adamw`: AdamW with DeepSeek-V3's betas and weight decay on matrices only
  (pretraining, SFT), or, with ``decay="all"`` and GRPO's betas, one group over every trainable
  parameter (the GRPO trainer).
* :func:`lr_at`: ``warmup`` steps of linear warm-up from ``lr / warmup`` to ``lr``, then one of
  :data:`LR_SCHEDULES` (``cosine`` or ``linear`` decay to ``lr * min_ratio`` at ``total``).
* :func:`set_lr`: write a learning rate into every parameter group before a step.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

# DeepSeek-V3 sec. 4.2 (pre-training); SFT reuses them (V3 and R1 give none for SFT).
ADAMW_BETAS = (0.9, 0.95)
# The GRPO trainer's betas (no paper gives RL betas; kept as the trainer has always used).
GRPO_BETAS = (0.9, 0.99)


def make_adamw(model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
               betas: tuple[float, float] = ADAMW_BETAS, decay: str = "matrices") -> torch.optim.Optimizer:
    """AdamW (``eps`` 1e-8, PyTorch's default) over the trainable parameters.

    Args:
        model_or_params: a module (its parameters with ``requires_grad``) or the parameters.
        lr: initial learning rate (the schedule overwrites it each step, :func:`set_lr`).
        weight_decay: decoupled weight decay.
        betas: ``ADAMW_BETAS`` (DeepSeek-V3 sec. 4.2) or ``GRPO_BETAS``.
        decay: ``"matrices"``: two groups, ``weight_decay`` on parameters with ``dim >= 2`` and
            none on norms, biases and other vectors; ``"all"``: one group, ``weight_decay`` on
            every parameter (the GRPO trainer's optimizer, whose checkpoints hold one group).

    Raises:
        ValueError: for another ``decay``.
    """
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    params = [p for p in params if p.requires_grad]
    if decay == "all":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if decay != "matrices":
        raise ValueError(f"decay must be 'matrices' or 'all', got {decay!r}")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


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
