"""GRPO policy loss, its registered loss aggregations, and the per-token log-prob / entropy helpers.

Pure tensor-in, tensor-out functions: no model, no trainer. Shapes: ``B`` completions, ``T``
padded completion length, ``V`` vocabulary. ``mask`` is the ``[B, T]`` bool completion mask from
``nanoseek.rl.masks.completion_mask`` (built from generated lengths).

The loss variants (``loss_type``) differ only in how the ``[B, T]`` per-token losses become one
number. Each is a small pure function registered with :func:`register_loss` (as verl's
``core_algos`` registers its policy losses and aggregation modes); ``LOSS_AGGREGATIONS`` maps
the name to it and to the unit it divides by, which the trainer needs to rescale micro-batches
(``nanoseek.rl.update``), and ``GRPOConfig`` checks ``loss_type`` against it.

Masked positions never reach the loss or the gradient, even when ``logp`` / ``old_logp`` /
``ref_logp`` / ``advantages`` hold NaN or inf there: they are replaced with ``torch.where``
*before* any arithmetic (multiplying by the mask would give ``0 * nan = nan``, and ``where`` after
the arithmetic would still send ``0 * nan`` gradients back through the discarded branch).

Differences from TRL 1.16 ``GRPOTrainer._compute_loss`` (otherwise equal, see
``tests/test_grpo_trl_parity.py``): masking with ``where`` instead of multiplication (NaN-safe);
``"grpo"`` averages over non-empty completions only (TRL counts empty ones as zero-loss rows); no
gradient-accumulation division (the trainer scales the loss); k3 computed as ``expm1(d) - d``
(same value to ~1e-7); the KL is not importance-weighted unless ``kl_importance_weight=True``
(TRL's default is True).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from nanoseek.rl.kl import kl_k3

# What a loss variant divides by: completions with a token in the loss, tokens in the loss, or
# completions x max_completion_length ("slots").
LOSS_UNITS = ("completions", "tokens", "slots")


@dataclass(frozen=True)
class LossAggregation:
    """A registered ``loss_type``.

    ``aggregate(per_token, mask, *, max_completion_length, num_items) -> loss``: ``per_token``
    ``[B, T]`` (zero where masked), ``mask`` ``[B, T]`` bool, returns the 0-dim loss. ``unit``
    (one of ``LOSS_UNITS``) names what it divides by.
    """

    name: str
    aggregate: Callable[..., Tensor]
    unit: str


LOSS_AGGREGATIONS: dict[str, LossAggregation] = {}
# DEEPSEEK.md §5.2: keep the paper form under verl's name for it too.
LOSS_ALIASES = {"seq-mean-token-mean": "grpo"}


def register_loss(name: str, unit: str) -> Callable:
    """Decorator registering ``fn`` as ``loss_type`` ``name`` dividing by ``unit`` (``LOSS_UNITS``).

    Raises:
        ValueError: for a name already registered or an unknown unit.
    """
    if name in LOSS_AGGREGATIONS or name in LOSS_ALIASES:
        raise ValueError(f"loss_type {name!r} is already registered")
    if unit not in LOSS_UNITS:
        raise ValueError(f"unit must be one of {LOSS_UNITS}, got {unit!r}")

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        LOSS_AGGREGATIONS[name] = LossAggregation(name, fn, unit)
        return fn

    return register


@register_loss("grpo", unit="completions")
def seq_mean_token_mean(per_token: Tensor, mask: Tensor, *, max_completion_length: int | None = None,
                        num_items: int | Tensor | None = None) -> Tensor:
    """Mean over each completion's tokens, then mean over completions (DeepSeekMath eq. 3,
    ``1/G sum_i 1/|o_i| sum_t``; verl's ``"seq-mean-token-mean"``). Completions with no unmasked
    token are left out of the mean over completions."""
    row_tok = mask.sum(1)                                                 # (B,)
    row_loss = per_token.sum(1) / row_tok.clamp(min=1)
    return row_loss.sum() / (row_tok > 0).sum().clamp(min=1)


@register_loss("bnpo", unit="tokens")
def token_mean(per_token: Tensor, mask: Tensor, *, max_completion_length: int | None = None,
               num_items: int | Tensor | None = None) -> Tensor:
    """Token-level mean over the batch's unmasked tokens (verl's ``"token-mean"``)."""
    return per_token.sum() / mask.sum().clamp(min=1)


@register_loss("dr_grpo", unit="slots")
def token_sum_constant_norm(per_token: Tensor, mask: Tensor, *, max_completion_length: int | None = None,
                            num_items: int | Tensor | None = None) -> Tensor:
    """Sum over tokens / (``B`` x ``max_completion_length``, None means ``T``): a constant
    normaliser, so neither length nor batch content rescales the gradient (Dr. GRPO, Liu et al.
    2025, §3.1; verl's ``"seq-mean-token-sum-norm"``)."""
    B, T = mask.shape
    L = T if max_completion_length is None else int(max_completion_length)
    return per_token.sum() / (B * L)


@register_loss("dapo", unit="tokens")
def token_sum_over_items(per_token: Tensor, mask: Tensor, *, max_completion_length: int | None = None,
                         num_items: int | Tensor | None = None) -> Tensor:
    """Token-level sum / ``num_items``, the number of unmasked tokens in the whole generation
    batch (DAPO, Yu et al. 2025, §3.3 "token-level policy gradient loss"; use
    ``epsilon_high=0.28`` for clip-higher, §3.1). With ``num_items=None`` it is this batch's token
    count, i.e. the same as ``"bnpo"``; pass the global count when one generation batch is split
    into several gradient-accumulation micro-batches."""
    n_tok = mask.sum()
    denom = n_tok if num_items is None else torch.as_tensor(num_items, device=per_token.device)
    return per_token.sum() / denom.to(per_token.dtype).clamp(min=1)


LOSS_TYPES = tuple(LOSS_AGGREGATIONS)


def loss_aggregation(loss_type: str) -> LossAggregation:
    """The registered ``LossAggregation`` for ``loss_type`` (or its alias in ``LOSS_ALIASES``).

    Raises:
        ValueError: for a name that is not registered.
    """
    name = LOSS_ALIASES.get(loss_type, loss_type)
    if name not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {tuple(LOSS_AGGREGATIONS)}, got {loss_type!r}")
    return LOSS_AGGREGATIONS[name]


def clipped_surrogate(lp: Tensor, old: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate, negated: ``(-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), rho)``
    with ``rho = exp(lp - old)``; all ``[B, T]``, already masked (DeepSeekMath §4.1.1 eq. 3)."""
    ratio = torch.exp(lp - old)                                           # (B, T), 1 where masked
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return -torch.min(ratio * adv, clipped * adv), ratio


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    ref_logp: Tensor | None = None,
    *,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    max_completion_length: int | None = None,
    num_items: int | Tensor | None = None,
    kl_importance_weight: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped GRPO surrogate plus ``beta`` x k3 KL, negated for minimisation.

    Per token (DeepSeekMath §4.1.1 eq. 3), with ``rho = exp(logp - old_logp)``::

        l[b,t] = -min(rho * A[b], clip(rho, 1 - eps_low, 1 + eps_high) * A[b]) + beta * k3[b,t]

    aggregated by the registered ``loss_type`` (``LOSS_AGGREGATIONS``: ``"grpo"``,
    ``"bnpo"``, ``"dr_grpo"``, ``"dapo"``; alias ``"seq-mean-token-mean"``), see each function.

    Args:
        logp: ``[B, T]`` log pi_theta of the sampled tokens (requires grad).
        old_logp: ``[B, T]`` log pi_theta_old from sampling time, or None for the on-policy case
            (mu = 1): ``logp.detach()`` is used, so the ratio is 1 but the gradient still flows.
        advantages: ``[B]`` (outcome supervision) or ``[B, T]`` (process supervision).
        mask: ``[B, T]`` bool completion mask.
        ref_logp: ``[B, T]`` log pi_ref; required when ``beta != 0``. When given with
            ``beta == 0`` the KL is only reported in the metrics.
        loss_type: a name in ``LOSS_AGGREGATIONS`` or ``LOSS_ALIASES``.
        epsilon_low: lower clip range, ratio >= 1 - eps_low (PPO's 0.2; DeepSeekMath gives none).
        epsilon_high: upper clip range; None means ``epsilon_low`` (symmetric PPO clip).
        beta: KL coefficient (DeepSeekMath 0.04, R1-Zero 0.001; see ``nanoseek.rl.presets``).
        max_completion_length: ``dr_grpo`` normaliser; None means ``T``.
        num_items: ``dapo`` normaliser (unmasked tokens in the generation batch).
        kl_importance_weight: multiply the per-token k3 by the (differentiable) ratio ``rho`` so
            the KL gradient is the unbiased reverse-KL gradient off-policy (DeepSeek-V3.2 paper,
            "Unbiased KL Estimate"). Off by default: DeepSeekMath eq. 3 and R1 use plain k3.
            TRL 1.16 turns it on by default (``use_bias_correction_kl=True``); it changes the KL
            gradient even on-policy, since ``d rho / d logp = 1`` at ``rho = 1``.

    Returns:
        ``(loss, metrics)``: 0-dim loss; metrics as :func:`clip_metrics`.

    Raises:
        ValueError: for an unknown ``loss_type``, or ``beta != 0`` without ``ref_logp``.
    """
    aggregation = loss_aggregation(loss_type)
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp")
    eps_low = float(epsilon_low)
    eps_high = eps_low if epsilon_high is None else float(epsilon_high)
    mask = mask.to(torch.bool)
    B, T = mask.shape
    zero = logp.new_zeros(())
    lp = torch.where(mask, logp, zero)                                    # (B, T)
    old = lp.detach() if old_logp is None else torch.where(mask, old_logp.to(lp.dtype), zero)
    adv = advantages.to(lp.dtype)
    adv = torch.where(mask, adv[:, None].expand(B, T) if adv.dim() == 1 else adv, zero)  # (B, T)
    per_tok, ratio = clipped_surrogate(lp, old, adv, eps_low, eps_high)
    kl = None
    if ref_logp is not None:
        ref = torch.where(mask, ref_logp.to(lp.dtype), zero)
        kl = kl_k3(lp if beta != 0.0 else lp.detach(), ref)              # (B, T), 0 where masked
        if kl_importance_weight:
            kl = kl * ratio
        if beta != 0.0:
            per_tok = per_tok + beta * kl
    per_tok = torch.where(mask, per_tok, zero)
    loss = aggregation.aggregate(per_tok, mask, max_completion_length=max_completion_length, num_items=num_items)
    return loss, clip_metrics(ratio, adv, mask, kl, eps_low, eps_high)


@torch.no_grad()
def clip_metrics(ratio: Tensor, adv: Tensor, mask: Tensor, kl: Tensor | None, eps_low: float,
                 eps_high: float) -> dict[str, Tensor]:
    """Detached 0-dim token means over ``mask`` (all inputs ``[B, T]``, masked): ``clip_ratio/low``
    (ratio < 1 - eps_low with A < 0), ``clip_ratio/high`` (ratio > 1 + eps_high with A > 0),
    ``clip_ratio/region`` (either), ``ratio``, and ``kl`` when given (the per-token KL as it
    enters the loss, i.e. ratio-weighted when ``kl_importance_weight``; TRL logs the same)."""
    tok = mask.sum().clamp(min=1).to(ratio.dtype)
    low = mask & (ratio < 1.0 - eps_low) & (adv < 0)
    high = mask & (ratio > 1.0 + eps_high) & (adv > 0)
    metrics = {
        "clip_ratio/low": low.sum() / tok,
        "clip_ratio/high": high.sum() / tok,
        "clip_ratio/region": (low | high).sum() / tok,
        "ratio": torch.where(mask, ratio, ratio.new_zeros(())).sum() / tok,
    }
    if kl is not None:
        metrics["kl"] = kl.detach().sum() / tok
    return metrics


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """``log softmax(logits / temperature)[b, t, targets[b, t]]``.

    Args:
        logits: ``[B, T, V]``; position ``t`` must be the logits that predicted ``targets[:, t]``
            (i.e. already shifted by one).
        targets: ``[B, T]`` long, valid indices everywhere (padding included; mask afterwards).
        temperature: divide logits first, the same temperature used to sample
            (R1-Zero rollouts use 1.0, R1 stage 2 0.7; R1-Nature §2 / Suppl. 3.2.2).

    Returns:
        ``[B, T]`` float32 (float64 for float64 logits).

    Computed as ``logit[target] - logsumexp(logits)`` one batch row at a time, so at most one
    ``[T, V]`` float32 copy exists at once instead of a full ``[B, T, V]`` log-softmax (bf16 logits
    are upcast per row for accuracy).
    """
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows = []
    for row, tgt in zip(logits, targets):                                 # row: (T, V)
        row = row.to(out_dtype)
        if temperature != 1.0:
            row = row / temperature
        picked = row.gather(-1, tgt[:, None]).squeeze(-1)                 # (T,)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows) if rows else logits.new_zeros(targets.shape, dtype=out_dtype)


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy ``H = logsumexp(z) - sum softmax(z) * z`` of each position's distribution, ``z = logits / temperature``.

    Args:
        logits: ``[B, T, V]``. temperature: as in :func:`token_logprobs`.

    Returns:
        ``[B, T]`` float32 (float64 for float64 logits), in nats; computed row by row like
        :func:`token_logprobs`.
    """
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows = []
    for row in logits:                                                    # (T, V)
        row = row.to(out_dtype)
        if temperature != 1.0:
            row = row / temperature
        lse = torch.logsumexp(row, dim=-1)                                # (T,)
        p = torch.softmax(row, dim=-1)
        rows.append(lse - (p * torch.where(p > 0, row, 0.0)).sum(-1))  # 0*(-inf) -> 0
    return torch.stack(rows) if rows else logits.new_zeros(logits.shape[:2], dtype=out_dtype)
