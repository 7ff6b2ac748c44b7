"""The search task's own grader and detectors: the answer verifier, the reflection markers, the two
notations of a reasoning step and the notation-consistency reward (``nanoseek.tasks.signs``).

A search problem asks for ``+`` or ``-`` between given digits, in their order, so that the value is
the target modulo ``modulus``: for digits 7 3 8 2 and target 4 (mod 9) the answer is ``7+3-8+2``.

A reasoning step is written in one of two notations, and a trace may mix them:

* symbols: ``+3=1`` (add 3, the running value is now 1), ``-8=2``;
* words: `` plus 3 is 1``, `` minus 8 is 2``.

Reflection is marked by the task's own words, as R1-Zero's "aha moment" is by "wait" (DeepSeek-R1
sec. 2.2.4, Table 3): ``backtrack`` (abandon an attempt whose value missed the target and try the next
signs) and ``wait,`` (a step re-checked and redone after a slip).
"""

from __future__ import annotations

import re
from typing import Sequence

from nanoseek.rewards import grading
from nanoseek.rewards.base import completion_text, per_item

BACKTRACK = "backtrack"
WAIT = "wait,"
NOTATIONS = ("symbols", "words")
OP_WORDS = {"+": "plus", "-": "minus"}

_REFLECTION_RE = re.compile(r"\b(?:backtrack|wait)\b", re.IGNORECASE)
_SYMBOL_STEP_RE = re.compile(r"[+-]\d+=\d+")
_WORD_STEP_RE = re.compile(r"\b(?:plus|minus) \d+ is \d+")
_ANSWER_RE = re.compile(r"\d+(?:[+-]\d+)*")


# ---------------------------------------------------------------------------------- the answer
def normalize_answer(answer: str | None) -> str | None:
    """The answer without spaces and without a trailing ``=value``; ``None`` when it is not of the
    form ``d op d op ... d`` (digits joined by ``+``/``-``)."""
    if not answer:
        return None
    text = re.sub(r"\s+", "", str(answer))
    if text.count("=") == 1:
        text = text.split("=", 1)[0]
    return text if _ANSWER_RE.fullmatch(text) else None


def score_answer(answer: str | None, digits: Sequence[int], target: int, modulus: int = 9) -> float:
    """1.0 when ``answer`` puts ``+``/``-`` between exactly ``digits`` (in order) and its value is
    ``target`` modulo ``modulus``; else 0.0. A trailing ``=value`` must state the target (or its
    value before the modulus). Never raises."""
    try:
        text = normalize_answer(answer)
        if text is None:
            return 0.0
        claimed = re.sub(r"\s+", "", str(answer)).split("=")[1:]
        numbers = [int(x) for x in re.findall(r"\d+", text)]
        if numbers != [int(d) for d in digits]:
            return 0.0
        signs = re.findall(r"[+-]", text)
        value = numbers[0] + sum(n if s == "+" else -n for s, n in zip(signs, numbers[1:]))
        if claimed and int(claimed[0]) not in (value, value % modulus):
            return 0.0
        return 1.0 if value % modulus == int(target) % modulus else 0.0
    except (ValueError, TypeError, IndexError):
        return 0.0


def same_answer(a: str | None, b: str | None) -> bool:
    """Answer equivalence for majority voting (cons@k): equal after ``normalize_answer`` (exact,
    no math grader: two different sign patterns are different answers)."""
    na, nb = normalize_answer(a), normalize_answer(b)
    return na is not None and na == nb


def signs_accuracy(completions: Sequence, digits: Sequence[Sequence[int]], target: Sequence[int],
                    modulus: Sequence[int] | int = 9, think_prefilled: bool = False, **_) -> list[float]:
    """Accuracy: 1.0 when the completion's final answer (``<answer>…</answer>`` or ``\\boxed{}``,
    ``grading.extract_answer``) solves the problem (``score_answer``), else 0.0.

    Range: {0.0, 1.0}. ``digits``, ``target`` and ``modulus`` are the example's metadata columns.
    The rule-based accuracy reward of DeepSeek-R1 sec. 2.2.2, with this task's exact verifier.
    """
    n = len(completions)
    mods = per_item(modulus, n)
    out = []
    for completion, ds, t, m in zip(completions, digits, target, mods):
        ans = grading.extract_answer(completion_text(completion), think_prefilled=bool(think_prefilled))
        out.append(score_answer(ans, ds, int(t), int(m or 9)))
    return out


# ----------------------------------------------------------------------------- the reasoning
def reasoning_part(completion: str) -> str:
    """The chain of thought of a completion: the text before the first ``</think>`` (all of it when
    the think block never closes), without an opening ``<think>``."""
    text = completion_text(completion)
    close = text.find("</think>")
    if close >= 0:
        text = text[:close]
    return text.replace("<think>", " ")


def is_reflection(text: str | None) -> bool:
    """Whether reasoning ``text`` re-checks or backtracks (contains ``backtrack`` or ``wait``)."""
    return bool(text) and _REFLECTION_RE.search(text) is not None


def reflection_count(text: str | None) -> int:
    """How many reflection markers (``backtrack``, ``wait``) reasoning ``text`` holds."""
    return len(_REFLECTION_RE.findall(text or ""))


def notation_counts(text: str | None) -> dict[str, int]:
    """Reasoning steps of ``text`` in each notation: ``{"symbols": n, "words": m}``."""
    text = text or ""
    return {"symbols": len(_SYMBOL_STEP_RE.findall(text)), "words": len(_WORD_STEP_RE.findall(text))}


def notation_mix(text: str | None) -> bool:
    """Whether reasoning ``text`` mixes the two notations (at least one step in each)."""
    counts = notation_counts(text)
    return counts["symbols"] > 0 and counts["words"] > 0


def notation_share(text: str | None, notation: str = "symbols") -> float:
    """The share of the reasoning steps of ``text`` written in ``notation``, in [0, 1]; 0.0 when it
    has no step (an empty chain of thought is not rewarded for being consistent)."""
    if notation not in NOTATIONS:
        raise ValueError(f"notation must be one of {NOTATIONS}, got {notation!r}")
    counts = notation_counts(text)
    total = counts["symbols"] + counts["words"]
    return counts[notation] / total if total else 0.0


def notation_consistency_reward(completions: Sequence, notation: str = "symbols", **_) -> list[float]:
    """Language consistency for the search task: the share of the chain-of-thought steps written in
    the target ``notation`` (``notation_share`` of the think block).

    Range: [0.0, 1.0]. Source: DeepSeek-R1 paper v1 sec. 2.3.2 ("the proportion of target language
    words in the CoT"), with the two notations of a step in place of two languages. An unknown
    notation raises ``ValueError`` (a configuration error).
    """
    return [notation_share(reasoning_part(c), notation) for c in completions]
