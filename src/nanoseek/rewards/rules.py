"""The rule-based rewards of DeepSeek-R1 and DAPO (the protocol is in ``nanoseek.rewards.base``).

Rewards (each documents its range and source):
  accuracy_reward          {0, 1} or None   R1 paper v1 §2.2.2 (rule-based accuracy reward)
  format_reward            {0, 1}           R1 paper v1 §2.2.2 + Table 1 (R1-Zero template)
  language_consistency_reward  [0, 1]       R1 paper v1 §2.3.2 / R1-Nature eq. 7
  overlong_penalty         [-1, 0]          DAPO (Yu et al. 2025, arXiv 2503.14476) §3.4 eq. 13

Countdown's verifier is in ``nanoseek.rewards.countdown``; ``nanoseek.rewards.registry`` finds every
reward by name and builds weighted sums (``combine_rewards({"accuracy": 1.0, "format": 0.5})``).
Only ``accuracy_reward`` grades, so only it adds grading events to the caller's ``counts``
(``GradeCounts``); every reward counts there the completions it failed to score
(``GradeCounts.add_reward_error``: an exception turned into 0.0 is never silent).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from nanoseek.rewards import grading
from nanoseek.rewards.base import completion_text, per_item
from nanoseek.rewards.grading import GradeCounts


# ----------------------------------------------------------------------------------------------
# accuracy


def accuracy_reward(completions: Sequence, answer: Sequence[str], think_prefilled: bool = False,
                    counts: GradeCounts | None = None, **_) -> list:
    """Rule-based accuracy: 1.0 when the completion's final answer equals the reference, else 0.0.

    Range: {0.0, 1.0}, or ``None`` for an example whose reference cannot be parsed.
    Source: DeepSeek-R1 paper v1 §2.2.2 ("accuracy rewards evaluate whether the response is
    correct ... the final answer in a specified format (e.g., within a box)").

    The answer is taken only from a marked place (``nanoseek.rewards.grading.extract_answer``: ``<answer>``,
    ``\\boxed{}``, ``####``, "final answer:"); a completion without one gets 0.0 (counted as
    ``no_answer``), never a match against a number buried in its reasoning. Comparison is
    ``nanoseek.rewards.grading.grade`` (exact fast path, math-verify with a hard timeout for the rest).
    Every grading event is added to ``counts`` when the caller passes one; a completion the grader
    failed on (an internal error, graded 0.0) is also counted as a reward error of ``"accuracy"``.
    """
    counts = GradeCounts() if counts is None else counts  # a caller without one does not read them
    n = len(completions)
    refs = per_item(answer, n)
    prefilled = per_item(think_prefilled, n)
    out: list = []
    for completion, ref, pre in zip(completions, refs, prefilled):
        try:
            if not grading.check_reference(ref):
                counts.add("bad_references")
                out.append(None)
                continue
            pred = grading.extract_answer(completion_text(completion), think_prefilled=bool(pre))
            if pred is None:
                counts.add("no_answer")
                out.append(0.0)
                continue
            one = GradeCounts()  # this completion's events, to tell whether the grader failed on it
            out.append(grading.grade(pred, ref, counts=one))
            events = one.snapshot()
            counts.merge(events)
            if events["errors"]:
                counts.add_reward_error("accuracy")
        except Exception:  # never raise on model output: graded 0.0, counted
            counts.add("errors")
            counts.add_reward_error("accuracy")
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


def format_reward(completions: Sequence, think_prefilled: bool = False, counts: GradeCounts | None = None,
                  **_) -> list[float]:
    """R1-Zero format reward: 1.0 when the completion is ``<think>…</think><answer>…</answer>``.

    Range: {0.0, 1.0}. Source: DeepSeek-R1 paper v1 §2.2.2 ("format reward ... enforces the model
    to put its thinking process between '<think>' and '</think>' tags") and the answer tags of the
    R1-Zero template (Table 1). Rules in ``follows_format``; ``think_prefilled`` (scalar or per
    completion) says the template already opened ``<think>``. A completion that cannot be checked
    (an exception) scores 0.0 and is counted in ``counts`` as a reward error of ``"format"``.
    """
    n = len(completions)
    prefilled = per_item(think_prefilled, n)
    out = []
    for completion, pre in zip(completions, prefilled):
        try:
            ok = follows_format(completion_text(completion), bool(pre))
        except Exception:  # never raise on model output: scored 0.0, counted
            ok = False
            if counts is not None:
                counts.add_reward_error("format")
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
    completions: Sequence, think_prefilled: bool = False, language: str | Sequence[str] = "en",
    counts: GradeCounts | None = None, **_
) -> list[float]:
    """Language consistency: the share of the chain of thought written in the target language.

    Range: [0.0, 1.0]. Source: DeepSeek-R1 paper v1 §2.3.2 ("calculated as the proportion of target
    language words in the CoT"), R1-Nature eq. 7; added to the accuracy reward with weight 1 in R1.
    The CoT is the think block (the text before the first ``</think>``; the whole completion when
    there is no think block or it never closes; ``think_prefilled`` needs no special case). ``language``
    is a column or a scalar (default "en"; see ``LANGUAGE_SCRIPTS``); a CoT with no words scores 0.0
    (an empty CoT is not rewarded for being consistent). An unknown language raises ``ValueError``
    (a configuration error); a completion that cannot be scored (another exception) gets 0.0 and is
    counted in ``counts`` as a reward error of ``"language"``.
    """
    n = len(completions)
    langs = per_item(language, n)
    out = []
    for completion, lang in zip(completions, langs):
        try:
            text = completion_text(completion)
            close = text.find("</think>")
            if close >= 0:
                text = text[:close]  # else: an unclosed or absent think block, all of it is reasoning
            out.append(language_share(text.replace("<think>", " "), lang or "en"))
        except ValueError:
            raise
        except Exception:  # never raise on model output: scored 0.0, counted
            if counts is not None:
                counts.add_reward_error("language")
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
        lengths = [int(x) for x in per_item(columns["completion_length"], n)]
    else:
        raise ValueError("overlong_penalty needs completion_ids (or a completion_length column)")
    return [overlong_penalty_value(length, max_length, cache_length) for length in lengths]
