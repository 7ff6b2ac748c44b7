"""The reward protocol, one for the whole project, and the helpers every reward function shares.

    fn(completions: list[str], **columns) -> list[float | None]

* ``completions``: the generated texts only (a chat-format completion, a list of messages, is also
  accepted: its last message's ``content`` is graded; see ``completion_text``).
* ``columns``: the examples' fields as lists aligned with ``completions`` (``answer``, ``prompt``,
  metadata keys such as ``nums``/``target``), plus ``think_prefilled: bool`` (a scalar) when the
  template already opened ``<think>``, and whatever else the trainer passes (``completion_ids``,
  ...). A column may also be a scalar meaning "the same for every completion" (``per_item``).
  Unknown columns are ignored (``**_``).
* ``counts``: an optional ``nanoseek.rewards.grading.GradeCounts`` the caller passes in; a reward
  that grades adds what happened to it (fast/slow path, timeouts, parse failures, ``no_answer``,
  ``bad_references``, ...). The trainer passes one per step and logs it with that step's rewards;
  rewards that grade nothing swallow it with the other unknown columns.
* Returns exactly one value per completion, in order. Never raises on model output: an unparsable
  completion or a grader timeout gives 0.0 (and is counted). ``None`` means "cannot judge this
  example" (e.g. its reference answer cannot be parsed): the trainer leaves it out of the group
  statistics and of the loss.

This is TRL's reward-function protocol (``GRPOTrainer(reward_funcs=...)``), so nanoseek's rewards
plug into TRL unchanged and TRL-style functions plug into nanoseek. The rewards themselves are in
``nanoseek.rewards.rules`` and ``nanoseek.rewards.countdown``; ``nanoseek.rewards.registry`` finds
them by name and builds weighted sums.
"""

from __future__ import annotations

from typing import Any, Callable

RewardFn = Callable[..., list]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the last message of a chat-format completion.

    A message is a dict whose ``content`` is taken; a list/tuple of messages gives its last one;
    ``None`` gives ``""`` and anything else its ``str()``. Never raises.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return completion_text(completion[-1])
    return "" if completion is None else str(completion)


def per_item(value: Any, n: int) -> list:
    """A column as a list of length ``n``: a list or tuple is used as given, a scalar is repeated.

    Raises ``ValueError`` when a list has another length than ``n`` (a caller's bug: the columns
    must be aligned with the completions).
    """
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"column has {len(value)} values for {n} completions")
        return list(value)
    return [value] * n
