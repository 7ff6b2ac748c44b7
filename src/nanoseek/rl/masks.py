"""Completion masks built from generated lengths, never from token values.

A pad or EOS id can legitimately appear inside a completion (a model may emit the pad token), so
masking on ``ids != pad_id`` silently drops or keeps the wrong tokens. The sampler knows how many
tokens it generated for each completion; the mask comes from that.
"""

from __future__ import annotations

import torch
from torch import Tensor


def completion_mask(lengths: Tensor, max_len: int, drop: Tensor | None = None) -> Tensor:
    """``mask[b, t] = t < lengths[b]``, optionally with whole rows dropped.

    Args:
        lengths: ``[B]`` long, tokens generated per completion (EOS included if it was sampled).
            Values above ``max_len`` give a full row; 0 gives an empty row.
        max_len: ``T``, the padded completion length.
        drop: optional ``[B]`` bool; rows where True are all False in the mask. Use it for
            DAPO overlong filtering (DAPO §3.4: truncated completions are left out of the loss)
            and for completions whose reward is missing (``~reward_validity(...)``). Every
            ``grpo_loss`` normaliser then shrinks with the dropped tokens (for ``loss_type="grpo"``
            the dropped completions also leave the mean over completions).

    Returns:
        ``[B, T]`` bool.
    """
    t = torch.arange(max_len, device=lengths.device)
    mask = t[None, :] < lengths.to(torch.long)[:, None]                   # (B, T)
    if drop is not None:
        mask = mask & ~drop.to(device=mask.device, dtype=torch.bool)[:, None]
    return mask


def truncated(lengths: Tensor, max_len: int, eos_seen: Tensor) -> Tensor:
    """``[B]`` bool: completions that hit ``max_len`` without sampling EOS (overlong).

    Args:
        lengths: ``[B]`` long generated lengths.
        max_len: the generation limit (``max_completion_length``).
        eos_seen: ``[B]`` bool, True where generation stopped on an EOS / stop token.
    """
    return (lengths >= max_len) & ~eos_seen.to(torch.bool)
