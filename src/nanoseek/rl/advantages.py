"""Group-relative advantages for GRPO (outcome supervision).

DeepSeekMath §4.1.2 (and R1-paper v1 §2.2.1, eq. 3): every token of completion ``o_i`` gets
``A_i = (r_i - mean(r)) / std(r)`` where ``r`` are the rewards of the ``G`` completions sampled
for the same prompt. Rewards arrive flat, group-major: ``rewards[q * G + i]`` is completion ``i``
of prompt ``q`` (the order TRL and the nanoseek sampler use).

Numerics (each case is tested in ``tests/test_grpo_numerics.py``):

* A group whose valid rewards are all equal gets **exactly** 0, whatever the value and ``eps``.
  Statistics are computed in float64 and zero-spread groups (``max == min``) are detected directly,
  so ``0.35 x 8`` or ``1e6 x 8`` never becomes a fake ``±1e-8 / eps`` advantage from rounding.
* A group with fewer than two valid rewards (a group of one) gets 0: nothing to compare against.
* Invalid rewards (``valid=False``, e.g. a reward function returned ``None``; or NaN / ±inf) are
  left out of *their own group's* mean and std, and get advantage 0. The caller must also drop
  those completions from the loss: :func:`reward_validity` returns the mask to use.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCALES = ("std", "batch", "none")


def reward_validity(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """Which rewards are usable: ``valid`` (if given) and finite.

    Args:
        rewards: ``[N*G]`` float rewards (NaN marks a missing reward).
        valid: optional ``[N*G]`` bool, False where the reward is missing (e.g. ``None``).

    Returns:
        ``[N*G]`` bool. Completions where this is False get advantage 0 from
        :func:`group_advantages` and should be masked out of the loss by the caller (zero their row
        of the completion mask, see ``nanoseek.rl.masks.completion_mask(..., drop=~ok)``).
    """
    ok = torch.isfinite(rewards)
    if valid is not None:
        ok = ok & valid.to(device=rewards.device, dtype=torch.bool)
    return ok


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale: str = "std",
    eps: float = 1e-4,
    valid: Tensor | None = None,
    *,
    unbiased: bool = True,
) -> Tensor:
    """Group-normalised advantages ``A_i = (r_i - mean_g) / (std_g + eps)``.

    Source: DeepSeekMath §4.1.2 (outcome supervision), R1-paper v1 §2.2.1 eq. 3.

    Args:
        rewards: ``[N*G]`` rewards, group-major (``N`` prompts x ``G = group_size`` completions).
        group_size: ``G``. ``rewards.numel()`` must be a multiple of it.
        scale: ``"std"`` divides by the group std (the paper's GRPO); ``"none"`` only subtracts the
            group mean (Dr. GRPO, Liu et al. 2025 §3.1: the std division biases towards
            too-easy / too-hard questions); ``"batch"`` divides by the std of all valid rewards in
            the batch (TRL ``scale_rewards="batch"``, REINFORCE++ style).
        eps: added to the std before dividing. 1e-4 is TRL's value (verl uses 1e-6). Zero-spread
            groups are handled before the division, so ``eps=0`` is safe.
        valid: optional ``[N*G]`` bool mask of usable rewards (see :func:`reward_validity`).
        unbiased: std convention. Default True = Bessel-corrected sample std (divide by ``n-1``),
            the convention of TRL (``nanstd``), verl and OpenRLHF (``torch.std``). The papers write
            ``std(r_1..r_G)`` without saying which; we follow the reference implementations so
            results can be compared with them. False = population std (divide by ``n``), which is
            ``sqrt((G-1)/G)`` smaller (3% at G=16).

    Returns:
        ``[N*G]`` advantages in ``rewards``' float dtype (float32 for integer rewards); exactly 0
        for invalid rewards, zero-spread groups and groups with < 2 valid rewards.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    ok = reward_validity(rewards, valid).view(-1, group_size)            # (N, G)
    r = torch.where(ok, rewards.view(-1, group_size).double(), 0.0)       # (N, G) float64
    n = ok.sum(1, keepdim=True)                                           # (N, 1)
    mean = r.sum(1, keepdim=True) / n.clamp(min=1)
    # Exact zero-spread detection: robust to any rounding in mean/std.
    hi = torch.where(ok, r, -torch.inf).amax(1, keepdim=True)
    lo = torch.where(ok, r, torch.inf).amin(1, keepdim=True)
    live = (n >= 2) & (hi > lo)                                           # (N, 1)
    adv = r - mean
    if scale != "none":
        if scale == "std":
            sq = torch.where(ok, adv, 0.0).square().sum(1, keepdim=True)
            std = (sq / (n - int(unbiased)).clamp(min=1)).sqrt()           # (N, 1)
        else:  # batch: one std over every valid reward, around each group's mean
            m = int(ok.sum())
            flat = rewards.double()[ok.view(-1)]
            std = flat.std(correction=int(unbiased)) if m > 1 else flat.new_zeros(())
            std = std.expand_as(n)
        denom = std + eps
        live = live & (denom > 0)
        adv = adv / torch.where(denom > 0, denom, 1.0)
    adv = torch.where(ok & live, adv, 0.0)
    return adv.view(-1).to(out_dtype)


def group_advantages_loop(
    rewards: list[float | None], group_size: int, scale: str = "std", eps: float = 1e-4, unbiased: bool = True
) -> list[float]:
    """Plain-Python reference of :func:`group_advantages` (``None`` / NaN = invalid), for tests.

    Args:
        rewards: flat list of ``N*G`` rewards, group-major. Returns a list of the same length.
    """
    out: list[float] = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        vals = [float(x) for x in group if x is not None and x == x and abs(x) != float("inf")]
        n = len(vals)
        mean = sum(vals) / n if n else 0.0
        if scale == "batch":
            raise NotImplementedError("the loop reference covers per-group scales only")
        var = sum((v - mean) ** 2 for v in vals) / max(n - int(unbiased), 1) if n else 0.0
        for x in group:
            bad = x is None or x != x or abs(x) == float("inf")
            if bad or n < 2 or max(vals) == min(vals):
                out.append(0.0)
            elif scale == "none":
                out.append(float(x) - mean)
            else:
                out.append((float(x) - mean) / (var**0.5 + eps))
    return out
