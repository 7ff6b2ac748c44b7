"""Reward functions (TRL protocol) and their weighted combination.

The protocol, one for the whole project:

    fn(completions: list[str], **columns) -> list[float | None]

* ``completions``: the generated texts only (a chat-format completion, a list of messages, is also
  accepted: its last message's ``content`` is graded).
* ``columns``: the examples' fields as lists aligned with ``completions`` (``answer``, ``prompt``,
  metadata keys such as ``nums``/``target``), plus ``think_prefilled: bool`` (a scalar) when the
  template already opened ``<think>``, and whatever else the trainer passes (``completion_ids``,
  ...). Unknown columns are ignored (``**_``).
* Returns exactly one value per completion, in order. Never raises on model output: an unparsable
  completion or a grader timeout gives 0.0 (and is counted). ``None`` means "cannot judge this
  example" (e.g. its reference answer cannot be parsed): the trainer leaves it out of the group
  statistics and of the loss.

Counters: ``stats()`` returns the grading counters of ``nanoseek.rewards.grading.GradeStats`` (fast/slow
path, timeouts, parse failures, ``no_answer``, ``bad_references``, ...); ``reset_stats()`` zeroes
them. The trainer reads and resets them once per step (the counters are per process: a trainer that
grades in worker processes sums their snapshots).

Rewards (each documents its range and source):
  accuracy_reward          {0, 1} or None   R1 paper v1 §2.2.2 (rule-based accuracy reward)
  format_reward            {0, 1}           R1 paper v1 §2.2.2 + Table 1 (R1-Zero template)
  language_consistency_reward  [0, 1]       R1 paper v1 §2.3.2 / R1-Nature eq. 7
  overlong_penalty         [-1, 0]          DAPO (Yu et al. 2025, arXiv 2503.14476) §3.4 eq. 13
  countdown_reward         {0, 0.1, 1}      TinyZero ``countdown.py`` (see nanoseek.rewards.countdown)
``combine_rewards({"accuracy": 1.0, "format": 0.5})`` builds their weighted sum by name.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any, Callable, Mapping, Sequence

from nanoseek.rewards import grading

RewardFn = Callable[..., list]


def stats() -> dict[str, int]:
    """Counters of this process's reward/grading events since the last ``reset_stats()``."""
    return grading.stats()


def reset_stats() -> None:
    """Zero the counters read by ``stats()``."""
    grading.reset_stats()


def _text(completion: Any) -> str:
    """The text of a completion: a string, or the last message of a chat-format completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return _text(completion[-1])
    return "" if completion is None else str(completion)


def _per_item(value: Any, n: int) -> list:
    """A column as a list of length ``n``: lists are used as given, a scalar is repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"column has {len(value)} values for {n} completions")
        return list(value)
    return [value] * n


# ----------------------------------------------------------------------------------------------
# accuracy


def accuracy_reward(completions: Sequence, answer: Sequence[str], think_prefilled: bool = False, **_) -> list:
    """Rule-based accuracy: 1.0 when the completion's final answer equals the reference, else 0.0.

    Range: {0.0, 1.0}, or ``None`` for an example whose reference cannot be parsed.
    Source: DeepSeek-R1 paper v1 §2.2.2 ("accuracy rewards evaluate whether the response is
    correct ... the final answer in a specified format (e.g., within a box)").

    The answer is taken only from a marked place (``nanoseek.rewards.grading.extract_answer``: ``<answer>``,
    ``\\boxed{}``, ``####``, "final answer:"); a completion without one gets 0.0 (counted as
    ``no_answer``), never a match against a number buried in its reasoning. Comparison is
    ``nanoseek.rewards.grading.grade`` (exact fast path, math-verify with a hard timeout for the rest).
    """
    n = len(completions)
    refs = _per_item(answer, n)
    prefilled = _per_item(think_prefilled, n)
    out: list = []
    for completion, ref, pre in zip(completions, refs, prefilled):
        try:
            if not grading.check_reference(ref):
                grading.count("bad_references")
                out.append(None)
                continue
            pred = grading.extract_answer(_text(completion), think_prefilled=bool(pre))
            if pred is None:
                grading.count("no_answer")
                out.append(0.0)
                continue
            out.append(grading.grade(pred, ref))
        except Exception:
            grading.count("errors")
            out.append(0.0)
    return out


# ----------------------------------------------------------------------------------------------
# format

# End-of-turn / end-of-sequence tokens a decoder may leave at the end of the text.
_EOS_RE = re.compile(r"(?:\s*(?:<\|[^|<>]{1,40}\|>|<｜[^｜<>]{1,40}｜>|</s>|<eos>|<\|endoftext\|>))+\s*$")
_TAG_RE = re.compile(r"</?(?:think|answer)>")
_FORMAT_RE = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
_FORMAT_PREFILLED_RE = re.compile(r"^(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.DOTALL)


def strip_eos(text: str) -> str:
    """``text`` without trailing end-of-turn tokens (``<|im_end|>``, ``<｜end▁of▁sentence｜>``, ``</s>``, ...)."""
    return _EOS_RE.sub("", text)


def follows_format(completion: str, think_prefilled: bool = False) -> bool:
    """True when ``completion`` is exactly ``<think>…</think>`` then one ``<answer>…</answer>``.

    With ``think_prefilled`` the opening ``<think>`` is in the prompt, so the completion must start
    inside the think block (a second ``<think>`` is a nested block). Whitespace between the blocks,
    multi-line content and trailing end-of-turn tokens are fine; any other text after ``</answer>``,
    a repeated or nested tag, an empty answer or a missing block is not.
    """
    text = strip_eos(completion)
    m = (_FORMAT_PREFILLED_RE if think_prefilled else _FORMAT_RE).match(text)
    if not m:
        return False
    think, ans = m.group(1), m.group(2)
    return not _TAG_RE.search(think) and not _TAG_RE.search(ans) and bool(ans.strip())


def format_reward(completions: Sequence, think_prefilled: bool = False, **_) -> list[float]:
    """R1-Zero format reward: 1.0 when the completion is ``<think>…</think><answer>…</answer>``.

    Range: {0.0, 1.0}. Source: DeepSeek-R1 paper v1 §2.2.2 ("format reward ... enforces the model
    to put its thinking process between '<think>' and '</think>' tags") and the answer tags of the
    R1-Zero template (Table 1). Rules in ``follows_format``; ``think_prefilled`` (scalar or per
    completion) says the template already opened ``<think>``.
    """
    n = len(completions)
    prefilled = _per_item(think_prefilled, n)
    out = []
    for completion, pre in zip(completions, prefilled):
        try:
            ok = follows_format(_text(completion), bool(pre))
        except Exception:
            ok = False
        out.append(1.0 if ok else 0.0)
    return out


# ----------------------------------------------------------------------------------------------
# language consistency


def _script(ch: str) -> str | None:
    """The writing system of a letter: "latin", "han", "cyrillic", ... (None for non-letters)."""
    if not ch.isalpha():
        return None
    if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf":
        return "han"
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    for script in ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "HIRAGANA", "KATAKANA", "HANGUL", "DEVANAGARI", "THAI"):
        if name.startswith(script):
            return script.lower()
    return "other"


# Target language -> scripts whose words count as that language.
LANGUAGE_SCRIPTS = {
    "en": {"latin"}, "fr": {"latin"}, "de": {"latin"}, "es": {"latin"}, "it": {"latin"}, "pt": {"latin"},
    "zh": {"han"}, "ja": {"han", "hiragana", "katakana"}, "ko": {"hangul", "han"}, "ru": {"cyrillic"},
    "ar": {"arabic"}, "he": {"hebrew"}, "hi": {"devanagari"}, "th": {"thai"}, "el": {"greek"},
}
_WORD_RE = re.compile(r"[^\W\d_]+")
_LATEX_CMD_RE = re.compile(r"\\[a-zA-Z]+")


def language_share(text: str, language: str = "en") -> float:
    """Share of the words of ``text`` written in ``language``'s script, in [0, 1] (0.0 if no words).

    Words are runs of letters; each Han/kana character counts as one word (Chinese has no spaces);
    LaTeX commands and single Latin letters (math variables) are ignored.
    """
    scripts = LANGUAGE_SCRIPTS.get(language)
    if scripts is None:
        raise ValueError(f"unknown language {language!r}; known: {', '.join(sorted(LANGUAGE_SCRIPTS))}")
    total = hits = 0
    for word in _WORD_RE.findall(_LATEX_CMD_RE.sub(" ", text)):
        groups: list[tuple[str, int]] = []
        for ch in word:  # split a run at script changes ("数学math" is one han and one latin word)
            s = _script(ch)
            per_char = s in ("han", "hiragana", "katakana")
            if groups and groups[-1][0] == s and not per_char:
                groups[-1] = (s, groups[-1][1] + 1)
            else:
                groups.append((s, 1))
        for s, length in groups:
            if s is None or (s == "latin" and length == 1):
                continue
            total += 1
            hits += s in scripts
    return hits / total if total else 0.0


def language_consistency_reward(
    completions: Sequence, think_prefilled: bool = False, language: str | Sequence[str] = "en", **_
) -> list[float]:
    """Language consistency: the share of the chain of thought written in the target language.

    Range: [0.0, 1.0]. Source: DeepSeek-R1 paper v1 §2.3.2 ("calculated as the proportion of target
    language words in the CoT"), R1-Nature eq. 7; added to the accuracy reward with weight 1 in R1.
    The CoT is the think block (the text before the first ``</think>``; the whole completion when
    there is no think block or it never closes; ``think_prefilled`` needs no special case). ``language``
    is a column or a scalar (default "en"; see ``LANGUAGE_SCRIPTS``); a CoT with no words scores 0.0
    (an empty CoT is not rewarded for being consistent). An unknown language raises ``ValueError``
    (a configuration error).
    """
    n = len(completions)
    langs = _per_item(language, n)
    out = []
    for completion, lang in zip(completions, langs):
        try:
            text = _text(completion)
            close = text.find("</think>")
            if close >= 0:
                text = text[:close]  # else: an unclosed or absent think block, all of it is reasoning
            out.append(language_share(text.replace("<think>", " "), lang or "en"))
        except ValueError:
            raise
        except Exception:
            out.append(0.0)
    return out


# ----------------------------------------------------------------------------------------------
# DAPO soft overlong punishment

# DAPO §4.1: L_max = 20,480 tokens of which L_cache = 4,096 is the soft punishment interval.
DAPO_MAX_LENGTH = 20480
DAPO_CACHE_LENGTH = 4096


def overlong_penalty_value(length: int, max_length: int = DAPO_MAX_LENGTH, cache_length: int = DAPO_CACHE_LENGTH) -> float:
    """DAPO eq. 13: 0 up to ``max_length - cache_length`` tokens, then falling linearly to -1 at
    ``max_length``, and -1 beyond. Range [-1, 0]."""
    if not 0 <= cache_length <= max_length:
        raise ValueError(f"need 0 <= cache_length ({cache_length}) <= max_length ({max_length})")
    free = max_length - cache_length
    if length <= free:
        return 0.0
    if length <= max_length:
        return (free - length) / cache_length
    return -1.0


def overlong_penalty(
    completions: Sequence,
    completion_ids: Sequence[Sequence[int]] | None = None,
    max_length: int = DAPO_MAX_LENGTH,
    cache_length: int = DAPO_CACHE_LENGTH,
    **columns,
) -> list[float]:
    """DAPO's soft overlong punishment of a completion's length in tokens.

    Range: [-1.0, 0.0]. Source: DAPO (Yu et al. 2025, arXiv 2503.14476) §3.4, eq. 13; defaults
    L_max = 20480, L_cache = 4096 (§4.1). Set ``max_length`` to the generation limit plus nothing
    else: a completion cut at ``max_length`` gets -1. Lengths come from ``completion_ids`` (TRL
    passes it), else a ``completion_length`` column; without either the function raises
    ``ValueError`` (a configuration error, not bad model output). Bind other limits with
    ``combine_rewards(..., overlong={"max_length": 1024, "cache_length": 256})``.
    """
    n = len(completions)
    if completion_ids is not None:
        lengths = [len(ids) for ids in completion_ids]
    elif "completion_length" in columns:
        lengths = [int(x) for x in _per_item(columns["completion_length"], n)]
    else:
        raise ValueError("overlong_penalty needs completion_ids (or a completion_length column)")
    return [overlong_penalty_value(length, max_length, cache_length) for length in lengths]


# ----------------------------------------------------------------------------------------------
# registry and weighted sums


def _countdown_reward(*args, **kwargs):
    from nanoseek.rewards.countdown import countdown_reward

    return countdown_reward(*args, **kwargs)


REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "language": language_consistency_reward,
    "language_consistency": language_consistency_reward,
    "overlong": overlong_penalty,
    "countdown": _countdown_reward,
}


def get_reward(name: str, task=None) -> RewardFn:
    """A reward function by name: the task's own (``task.reward_funcs()``) first, then ``REWARDS``."""
    from nanoseek.errors import NanoseekError

    if task is not None:
        own = task.reward_funcs()
        if name in own:
            return own[name]
    if name in REWARDS:
        return REWARDS[name]
    known = sorted(set(REWARDS) | (set(task.reward_funcs()) if task is not None else set()))
    raise NanoseekError(f"unknown reward {name!r}; known rewards: {', '.join(known)}")


def combine_rewards(weights: Mapping[str, float], task=None, **options: Mapping[str, Any]) -> RewardFn:
    """A reward function returning ``sum(weight * reward)`` over the named rewards.

    Args:
        weights: reward name -> weight, e.g. ``{"accuracy": 1.0, "format": 0.5}`` (from the config).
        task: resolve names against ``task.reward_funcs()`` first (its ``accuracy`` may be a
            task-specific verifier, e.g. Countdown's).
        options: per-reward keyword arguments, e.g. ``overlong={"max_length": 1024}``.

    Range: the weighted sum of the parts' ranges. An item is ``None`` when any part with a non-zero
    weight is ``None`` for it (the example cannot be judged). The returned callable also exposes
    ``parts(completions, **columns) -> dict[name, list]`` for logging each component and
    ``combine(parts) -> list`` to sum parts computed once.
    """
    fns = {}
    for name, w in weights.items():
        fn = get_reward(name, task)
        if options.get(name):
            fn = functools.partial(fn, **options[name])
        fns[name] = (float(w), fn)

    def parts(completions, **columns) -> dict[str, list]:
        return {name: fn(completions, **columns) for name, (w, fn) in fns.items()}

    def combine(values: Mapping[str, list]) -> list:
        """Weighted sum of already computed ``parts`` (None where a weighted part is None)."""
        n = len(next(iter(values.values()))) if values else 0
        out = []
        for i in range(n):
            total: float | None = 0.0
            for name, (w, _) in fns.items():
                v = values[name][i]
                if w == 0:
                    continue
                if v is None:
                    total = None
                    break
                total += w * v
            out.append(total)
        return out

    def combined(completions, **columns) -> list:
        return combine(parts(completions, **columns))

    combined.__name__ = "+".join(f"{w:g}*{name}" for name, (w, _) in fns.items()) or "zero"
    combined.parts = parts  # type: ignore[attr-defined]
    combined.combine = combine  # type: ignore[attr-defined]
    return combined
