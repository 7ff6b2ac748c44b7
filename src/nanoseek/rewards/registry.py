"""Rewards by name, and their weighted sum (what a config's ``reward_weights`` asks for).

``get_reward(name, task)`` looks a name up in the task's own rewards (``task.reward_funcs()``: a
task may bring its own verifier, e.g. Countdown's ``accuracy``), then in ``REWARDS``;
``combine_rewards({"accuracy": 1.0, "format": 0.5}, task)`` returns one reward function (the
protocol of ``nanoseek.rewards.base``) giving their weighted sum.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from nanoseek.errors import NanoseekError
from nanoseek.rewards.base import RewardFn
from nanoseek.rewards.countdown import countdown_reward
from nanoseek.rewards.grading import GradeCounts
from nanoseek.rewards.rules import accuracy_reward, format_reward, language_consistency_reward, overlong_penalty

REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "language": language_consistency_reward,
    "language_consistency": language_consistency_reward,
    "overlong": overlong_penalty,
    "countdown": countdown_reward,
}


def get_reward(name: str, task=None) -> RewardFn:
    """A reward function by name: the task's own (``task.reward_funcs()``) first, then ``REWARDS``.

    Raises ``NanoseekError`` for an unknown name, listing the known ones.
    """
    if task is not None:
        own = task.reward_funcs()
        if name in own:
            return own[name]
    if name in REWARDS:
        return REWARDS[name]
    known = sorted(set(REWARDS) | (set(task.reward_funcs()) if task is not None else set()))
    raise NanoseekError(f"unknown reward {name!r}; known rewards: {', '.join(known)}")


def weighted_sum(weights: Mapping[str, float], values: Mapping[str, list]) -> list:
    """``sum(weight * value)`` per item over the named reward ``values`` (lists of equal length).

    Parts with weight 0 are skipped; an item is ``None`` when any part with a non-zero weight is
    ``None`` for it (the example cannot be judged). Sums run in the order of ``weights``.
    """
    n = len(next(iter(values.values()))) if values else 0
    out = []
    for i in range(n):
        total: float | None = 0.0
        for name, w in weights.items():
            v = values[name][i]
            if w == 0:
                continue
            if v is None:
                total = None
                break
            total += w * v
        out.append(total)
    return out


def combine_rewards(weights: Mapping[str, float], task=None, **options: Mapping[str, Any]) -> RewardFn:
    """A reward function returning ``sum(weight * reward)`` over the named rewards.

    Args:
        weights: reward name -> weight, e.g. ``{"accuracy": 1.0, "format": 0.5}`` (from the config).
        task: resolve names against ``task.reward_funcs()`` first (its ``accuracy`` may be a
            task-specific verifier, e.g. Countdown's).
        options: per-reward keyword arguments, e.g. ``overlong={"max_length": 1024}``.

    Range: the weighted sum of the parts' ranges. An item is ``None`` when any part with a non-zero
    weight is ``None`` for it (see ``weighted_sum``). The returned callable also exposes
    ``parts(completions, **columns) -> dict[name, list]`` for logging each component and
    ``combine(parts) -> list`` to sum parts computed once. Every column reaches every part; so do
    ``counts`` (a ``GradeCounts`` to add grading events to), each part getting the view that counts
    its failures under its name here (``GradeCounts.for_reward``: ``reward_errors/<name>``).
    """
    fns = {}
    for name, w in weights.items():
        fn = get_reward(name, task)
        if options.get(name):
            fn = functools.partial(fn, **options[name])
        fns[name] = (float(w), fn)
    floats = {name: w for name, (w, _) in fns.items()}

    def parts(completions, **columns) -> dict[str, list]:
        counts = columns.pop("counts", None)
        out = {}
        for name, (w, fn) in fns.items():
            if isinstance(counts, GradeCounts):  # each part counts its failures under its own name
                out[name] = fn(completions, counts=counts.for_reward(name), **columns)
            elif counts is not None:
                out[name] = fn(completions, counts=counts, **columns)
            else:
                out[name] = fn(completions, **columns)
        return out

    def combine(values: Mapping[str, list]) -> list:
        """Weighted sum of already computed ``parts`` (None where a weighted part is None)."""
        return weighted_sum(floats, values)

    def combined(completions, **columns) -> list:
        return combine(parts(completions, **columns))

    combined.__name__ = "+".join(f"{w:g}*{name}" for name, (w, _) in fns.items()) or "zero"
    combined.parts = parts  # type: ignore[attr-defined]
    combined.combine = combine  # type: ignore[attr-defined]
    return combined
