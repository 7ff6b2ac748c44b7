"""Answer extraction and equivalence for verifiable math rewards.

Two public functions carry the whole rule-based grader (DeepSeek-R1 paper v1 §2.2.2: "the model is
required to provide the final answer in a specified format (e.g., within a box)"):

* ``extract_answer(completion, think_prefilled=False) -> str | None``: the final answer of a
  completion, in this order: the body of the last ``<answer>…</answer>`` (and inside it the last
  ``\\boxed{}`` body if there is one), else the last balanced ``\\boxed{…}`` / ``\\boxed 2`` /
  ``\\fbox{…}``, else a GSM8K-style ``#### N``, else a stated "final answer: …" / "the answer is …".
  When the completion has a think block (or ``think_prefilled`` says the template opened one), only
  the text after the first ``</think>`` counts; a think block that never closes gives ``None``.
* ``is_equivalent(prediction, reference) -> bool``: prediction first (a whole completion or an
  extracted answer). A fast path decides plain numbers, simple fractions, percentages, choice
  letters and comma-separated lists of those in microseconds with exact rational arithmetic; every
  other pair goes to math-verify in a killable subprocess pool (``nanoseek.rewards.grading_pool``) with a
  hard timeout, so pathological answers (towers of powers, huge factorials) cannot hang the caller:
  a call returns within its ``timeout`` (default 2 s), waiting for a free worker included.
  The fast path lives in ``nanoseek.rewards.grading_fast``, the subprocess pool in ``nanoseek.rewards.grading_pool``.

Rules the fast path follows (each one a documented deviation from "compare the strings"):
  * thousands separators only when real: ``1,000`` = 1000, ``12,345.5`` = 12345.5; ``0,1`` and
    ``1,5`` are lists of two values, never 0.1 / 1.5; LaTeX ``1{,}000`` and ``1\\,000`` are 1000.
  * ``\\frac12``, ``\\dfrac{1}{2}``, ``1/2``, ``0.5`` are the same number; ``\\frac21`` is 2.
  * ``\\text{}``, ``\\mathrm{}``, ``$`` and trailing unit words (``5 \\text{ cm}``, ``72 apples``) are
    dropped, but not words that change the value (``10 thousand``, ``5 pi``, ``2 or 3``);
    ``30^\\circ`` = 30; ``28\\%`` = 28 = 0.28 (a percent sign on either side allows the /100).
  * scientific notation (``1e-70``, ``1.5\\times 10^{-9}``), integer powers (``2^{-60}``, ``(-2)^3``) and
    fractions of those (``\\frac{1}{2^{60}}``) are exact numbers too, up to 10^±4000.
  * numbers compare exactly; a decimal matches a non-terminating fraction (1/3, 2/7) only within a
    *relative* error of 1e-6 (never an absolute tolerance, so 0.0001 ≠ 0.0002, 1000000.5 ≠ 1000000,
    2^{-60} ≠ 2^{-70}). On the math-verify path, whose own numeric comparison is absolute (6 decimal
    places, or a difference chopped below ~1e-15), a "yes" stands only when the values also agree to
    a relative 1e-5 (``nanoseek.rewards.grading_child``).
  * ``(C)``, ``\\text{(C)}`` and ``C`` are the same choice letter.
  * comma lists (and ``\\{…\\}`` sets) compare as multisets: any order, but every element must match,
    so a partial answer to a "find all" question is wrong; tuples and intervals go to math-verify.
  * a matrix never equals a scalar (math-verify alone accepts ``6`` for ``6I``).

A prediction with no answer marker at all is graded as an answer on its own ("2k") or, when it is
prose ("So she sold 72 clips."), by its last number (numeric reference) or math-verify's own
extraction; a prediction with a marker that yields no answer (an unclosed box or think block) is 0.

Everything that happened (fast/slow path, timeouts, parse failures, unjudgeable references,
missing answers) is counted in a ``GradeCounts`` object the caller passes in (``counts=``); there
is no process-wide counter.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field, fields
from fractions import Fraction

from nanoseek.rewards.grading_fast import Num, brace_end, last_number, parse_simple, simple_equal
from nanoseek.rewards.grading_pool import DEFAULT_TIMEOUT, get_pool, slow_verify

# ----------------------------------------------------------------------------------------------
# counters


@dataclass
class GradeCounts:
    """What happened while grading, counted (thread-safe increments).

    The caller owns the object: it passes one to ``grade``/``is_equivalent`` or to a reward
    function (``counts=``) and reads it afterwards, so the counts travel with the rewards they
    explain (the GRPO trainer uses one per step and logs ``grader/*`` from it). Without one nothing
    is counted.

    Fields:
        calls: equivalence checks (``is_equivalent``/``grade``).
        fast_path: checks decided by the fast path (no math-verify).
        slow_path: checks sent to math-verify.
        cache_hits: slow-path checks answered from the result cache.
        timeouts: slow-path checks not decided within the timeout (graded 0.0), waiting for a free
            worker included.
        queue_timeouts: the part of ``timeouts`` spent entirely waiting for a free worker (the
            pool was busy: raise its workers or lower the grading threads if this is not 0).
        parse_failures: predictions math-verify could not parse (graded 0.0).
        no_answer: completions with no extractable answer (graded 0.0).
        bad_references: references that cannot be parsed (graded ``None``: not judged).
        errors: unexpected internal errors caught by the grader (graded 0.0).
        worker_restarts: grading subprocesses killed (timeout) or found dead; replaced at once.
        reward_errors: reward name -> completions that reward failed to score (an exception it
            caught and graded 0.0, or a grader error); in ``snapshot()`` as ``reward_errors/<name>``.
    """

    calls: int = 0
    fast_path: int = 0
    slow_path: int = 0
    cache_hits: int = 0
    timeouts: int = 0
    queue_timeouts: int = 0
    parse_failures: int = 0
    no_answer: int = 0
    bad_references: int = 0
    errors: int = 0
    worker_restarts: int = 0
    reward_errors: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (one of the fields above)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def add_reward_error(self, reward: str, n: int = 1) -> None:
        """Count ``n`` completions that the reward called ``reward`` failed to score."""
        with self._lock:
            self.reward_errors[reward] = self.reward_errors.get(reward, 0) + n

    def merge(self, snapshot: dict[str, int]) -> None:
        """Add another ``snapshot()`` (of a per-item or per-rank ``GradeCounts``) to these counts."""
        for key, n in snapshot.items():
            if key.startswith("reward_errors/"):
                self.add_reward_error(key[len("reward_errors/"):], n)
            elif n:
                self.add(key, n)

    def for_reward(self, name: str) -> "RewardCounts":
        """The view of these counts that the reward called ``name`` gets (see ``RewardCounts``)."""
        return RewardCounts(self, name)

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict of ints (safe to log, to sum, or to send to another process)."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in fields(self)
                   if not f.name.startswith("_") and f.name != "reward_errors"}
            out.update({f"reward_errors/{k}": v for k, v in self.reward_errors.items()})
            return out


class RewardCounts:
    """``GradeCounts`` as one named reward function of a weighted sum sees them.

    Grading events go to the shared counts unchanged; the reward's failures are counted under the
    name it has in the sum (``combine_rewards``'s key, e.g. ``"format"``), whatever name the
    function itself uses, so ``reward_errors/<name>`` lines up with ``reward/<name>``.
    """

    def __init__(self, counts: GradeCounts, name: str) -> None:
        self.counts, self.name = counts, name

    def add(self, name: str, n: int = 1) -> None:
        """``GradeCounts.add`` on the shared counts."""
        self.counts.add(name, n)

    def add_reward_error(self, reward: str, n: int = 1) -> None:
        """Count failures under this view's reward name (``reward`` is the function's own name)."""
        self.counts.add_reward_error(self.name, n)

    def merge(self, snapshot: dict[str, int]) -> None:
        """``GradeCounts.merge``, with reward failures counted under this view's name."""
        for key, n in snapshot.items():
            if key.startswith("reward_errors/"):
                self.add_reward_error(key, n)
            elif n:
                self.add(key, n)

    def snapshot(self) -> dict[str, int]:
        """The shared counts' snapshot."""
        return self.counts.snapshot()


def _uncounted(name: str, n: int = 1) -> None:
    """``GradeCounts.add`` for a caller that passed no counts: nothing is kept."""


# ----------------------------------------------------------------------------------------------
# extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_FINAL_RE = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:|=)?\s*:?[ \t]*(?:\n\s*)?([^\n]*)", re.IGNORECASE
)
MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers (and would only slow the slow path)
MAX_RAW_CHARS = 2000  # unmarked free text: only its end is searched for a final value


def last_boxed(text: str) -> str | None:
    """Body of the last ``\\boxed{…}`` / ``\\boxed N`` / ``\\fbox{…}`` in ``text``.

    Returns ``None`` when there is no box or when the last one is unbalanced (``\\boxed{3``): a box
    that never closes is not an answer, and an earlier box was retracted by the later one.
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        start = end + (len(rest) - len(stripped))
        close = brace_end(text, start)
        return text[start + 1 : close - 1] if close > 0 else None
    if rest[:1] in (" ", "\t"):  # "\boxed 2": one token
        m = re.match(r"\s*([^\s$]+)", rest)
        return m.group(1).rstrip(".,;") if m else None
    return None


def _clean_stated(s: str) -> str:
    s = s.strip().replace("**", "").strip()
    s = re.sub(r"^\\\[|\\\]$", "", s).strip()
    if s.startswith("$"):
        m = re.match(r"\$+([^$]*)\$+", s)  # the first inline math group is the answer
        if m:
            return m.group(1).strip()
    return re.sub(r"[.;]+$", "", s).strip()


def extract_answer(completion: str, think_prefilled: bool = False) -> str | None:
    """The final answer of a model completion, or ``None`` (see the module docstring for the order).

    Args:
        completion: the generated text only (never the prompt: a prompt's own "put your answer in
            \\boxed{}" must not count).
        think_prefilled: the template already opened ``<think>``, so the completion starts inside
            the think block and only text after its first ``</think>`` can hold the answer.

    Returns:
        The answer text, stripped (e.g. ``"72"``, ``"\\frac{1}{\\sqrt{2}}"``), or ``None``. Never raises.
    """
    if not isinstance(completion, str):
        return None
    text = completion
    if think_prefilled or "<think>" in text or "</think>" in text:
        close = text.find("</think>")
        if close < 0:
            return None
        text = text[close + len("</think>") :]
    ans: str | None = None
    close = text.rfind("</answer>")
    open_ = text.rfind("<answer>", 0, close) if close >= 0 else -1
    if open_ >= 0:  # the last complete <answer>…</answer> block (found in linear time)
        body = text[open_ + len("<answer>") : close]
        ans = last_boxed(body) if _BOX_RE.search(body) else body
    elif _BOX_RE.search(text):
        ans = last_boxed(text)
    else:
        hashes = _HASH_RE.findall(text)
        if hashes and hashes[-1].strip():
            ans = hashes[-1]
        else:
            stated = _FINAL_RE.findall(text)
            if stated:
                ans = _clean_stated(stated[-1])
    if ans is None:
        return None
    ans = ans.strip()
    if not ans or len(ans) > MAX_ANSWER_CHARS:
        return None
    return ans


# ----------------------------------------------------------------------------------------------
# the public grading API


def parse_number(answer: str | None) -> Fraction | None:
    """The exact value of a plain-number answer ("1,234", "-0.5", "\\frac{3}{4}", "$72$", "28\\%" → 28),
    or ``None`` when the answer is not a single plain number (the fast path's number parser)."""
    if not isinstance(answer, str):
        return None
    try:
        parsed = parse_simple(answer)
    except Exception:
        return None
    return parsed.value if isinstance(parsed, Num) else None


def check_reference(reference, deep: bool = False) -> bool:
    """Whether a reference answer can be graded.

    The default check is syntactic and takes microseconds (it runs on every row when a task loads):
    non-empty text, balanced braces, not absurdly long. ``deep=True`` also asks math-verify to parse
    it (milliseconds; the slow path). References failing only the deep check are still caught, and
    counted as ``bad_references``, when they are graded.
    """
    if not isinstance(reference, str):
        return False
    if deep and check_reference(reference) and parse_simple(reference) is None:
        return get_pool().check(reference, reference, False, DEFAULT_TIMEOUT) not in ("bad_reference", "timeout")
    s = reference.strip()
    if not s or len(s) > MAX_ANSWER_CHARS:
        return False
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
        i += 1
    return depth == 0


_TEXT_CMD_RE = re.compile(r"\\(?:text|mbox|mathrm|textbf|operatorname|begin|end)\s*\{[^{}]*\}|\\[a-zA-Z]+")
_WORD2_RE = re.compile(r"[A-Za-z]{2,}")


def looks_like_text(s: str) -> bool:
    """True for prose ("So she sold 72 clips."), False for an answer on its own ("2k", "45 \\text{ units}^2",
    "Monday"): prose has two or more words outside LaTeX commands and ``\\text{}``, or a think tag."""
    if "<think>" in s or "</think>" in s:
        return True
    return len(_WORD2_RE.findall(_TEXT_CMD_RE.sub(" ", s))) >= 2


_MARKER_RE = re.compile(r"\\boxed|\\fbox|</?answer>|</?think>|####")
_MATRIX_RE = re.compile(r"\\begin\{[pbvBV]?matrix\}")


def grade(prediction: str | None, reference: str, timeout: float | None = None,
          counts: GradeCounts | None = None) -> float | None:
    """Grade one prediction against one reference: 1.0 (equivalent), 0.0 (not, or no answer, or a
    timeout / parse failure), or ``None`` when the reference itself cannot be parsed (not judged).

    ``prediction`` may be a whole completion (its answer is extracted) or an extracted answer.
    Never raises; every outcome is added to ``counts`` when one is given.
    """
    count = counts.add if counts is not None else _uncounted
    count("calls")
    start = time.monotonic()
    try:
        if not check_reference(reference):
            count("bad_references")
            return None
        if prediction is None or not isinstance(prediction, str) or not prediction.strip():
            count("no_answer")
            return 0.0
        pred = extract_answer(prediction)
        raw = False
        if pred is None:
            if _MARKER_RE.search(prediction):  # a broken box, an unclosed think block, ...: no answer
                count("no_answer")
                return 0.0
            # no marker at all: an answer on its own ("2k") or free text ("So she sold 72 clips.")
            pred = prediction.strip()[-MAX_RAW_CHARS:]
            raw = looks_like_text(pred)
        pred_matrix, ref_matrix = _MATRIX_RE.search(pred) is not None, _MATRIX_RE.search(reference) is not None
        if ref_matrix and not pred_matrix or (pred_matrix and not ref_matrix and not raw):
            count("fast_path")  # a matrix never equals a scalar (math-verify broadcasts 6 == 6I)
            return 0.0
        ref_s = parse_simple(reference)
        if ref_s is not None:
            pred_s = parse_simple(pred) if len(pred) <= 200 else None
            if pred_s is None and raw:
                pred_s = last_number(pred)
            if pred_s is not None:
                count("fast_path")
                return 1.0 if simple_equal(pred_s, ref_s) else 0.0
        budget = DEFAULT_TIMEOUT if timeout is None else float(timeout)  # parsing above counts against it
        return slow_verify(pred, reference, raw=raw, timeout=max(0.0, budget - (time.monotonic() - start)),
                           counts=counts)
    except Exception:  # never raise on model output
        count("errors")
        return 0.0


def is_equivalent(prediction: str, reference: str, timeout: float | None = None,
                  counts: GradeCounts | None = None) -> bool:
    """True when ``prediction`` (a completion or an extracted answer) states the ``reference`` answer.

    Fast path for plain numbers (exact rationals, real thousands separators, percent, units, choice
    letters, unordered lists); math-verify (``verify(parse("$ref$"), parse(pred))``) for the rest, in a
    killable subprocess with a hard ``timeout`` in seconds (default ``grading_pool.DEFAULT_TIMEOUT``).
    An unparsable reference is never equivalent to anything. Never raises; what happened is added
    to ``counts`` when one is given (see ``GradeCounts``).
    """
    return grade(prediction, reference, timeout=timeout, counts=counts) == 1.0
