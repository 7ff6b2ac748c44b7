"""Countdown's own verifier: a small safe arithmetic evaluator (never Python ``eval``) and the reward.

An answer is an equation over the given numbers with ``+ - * /`` and parentheses, e.g.
``(93 + 30) - 100``. It is tokenised and parsed by a recursive-descent parser into exact
``Fraction`` arithmetic (so ``8 / 3 * 3`` is exactly 8, and no float tolerance is needed); any other
character, a number not on offer, a number used too often, a division by zero or more than
``MAX_TOKENS`` tokens makes it invalid.

Number-use rule. The issue asks for "each given number used at most once (TinyZero's rule)" as the
default and "exactly once" as an option. Note that TinyZero's code
(``verl/utils/reward_score/countdown.py``, ``validate_equation``) actually compares the sorted lists,
i.e. *exactly once*, while its prompt says "each number can only be used once"; set
``exactly_once=True`` to reproduce TinyZero's scores bit for bit.

Partial score. TinyZero gives 0.1 (``format_score``) to a well-formed equation (one that parses and
uses allowed numbers) whose value is wrong; the default here is 0.0 (accuracy only), set
``format_score=0.1`` to reproduce TinyZero.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from fractions import Fraction
from typing import Sequence

from nanoseek.rewards import grading
from nanoseek.rewards.base import completion_text, per_item

MAX_TOKENS = 64  # a 4-number equation needs about 15 tokens; longer input is not an answer
MAX_DIGITS = 6  # numbers on offer are at most 3 digits; caps the exact-arithmetic cost

_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()×÷]))")


class EquationError(ValueError):
    """The text is not a well-formed equation (bad character, unbalanced, division by zero, ...)."""


def tokenize(expr: str) -> list[str]:
    """Split ``expr`` into integer literals and operator tokens; anything else is an error."""
    tokens, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m or m.end() == pos:
            raise EquationError(f"unexpected character {expr[pos]!r} at {pos}")
        tok = m.group(1) or {"×": "*", "÷": "/"}.get(m.group(2), m.group(2))
        if m.group(1) and len(tok) > MAX_DIGITS:
            raise EquationError("number too long")
        tokens.append(tok)
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
        if len(tokens) > MAX_TOKENS:
            raise EquationError("equation too long")
    if not tokens:
        raise EquationError("empty equation")
    return tokens


def evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value of ``expr`` and the integer literals it uses, in order.

    Grammar: ``expr := term (('+'|'-') term)*``, ``term := factor (('*'|'/') factor)*``,
    ``factor := '-' factor | '(' expr ')' | INT``. Raises ``EquationError`` if malformed.
    """
    tokens = tokenize(expr)
    numbers: list[int] = []
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def parse_expr() -> Fraction:
        value = parse_term()
        while peek() in ("+", "-"):
            value = value + parse_term() if take() == "+" else value - parse_term()
        return value

    def parse_term() -> Fraction:
        value = parse_factor()
        while peek() in ("*", "/"):
            op, rhs = take(), parse_factor()
            if op == "/" and rhs == 0:
                raise EquationError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def parse_factor() -> Fraction:
        tok = peek()
        if tok is None:
            raise EquationError("unexpected end")
        if tok == "-":  # unary minus (TinyZero's eval accepts it too)
            take()
            return -parse_factor()
        if tok == "(":
            take()
            value = parse_expr()
            if peek() != ")":
                raise EquationError("unbalanced parentheses")
            take()
            return value
        if tok.isdigit():
            take()
            numbers.append(int(tok))
            return Fraction(int(tok))
        raise EquationError(f"unexpected {tok!r}")

    value = parse_expr()
    if pos != len(tokens):
        raise EquationError(f"unexpected {tokens[pos]!r} after the equation")
    return value, numbers


def uses_numbers(used: Sequence[int], nums: Sequence[int], exactly_once: bool = False) -> bool:
    """Each number in ``used`` is one of ``nums``, each given number used at most once (or exactly
    once with ``exactly_once``)."""
    have, want = Counter(used), Counter(nums)
    if exactly_once:
        return have == want
    return all(have[k] <= want[k] for k in have)


def _equation_part(answer: str, target) -> str:
    """Accept ``lhs = target`` as well as a bare ``lhs``: keep the side without the target."""
    parts = [p.strip() for p in answer.split("=")]
    if len(parts) == 2:
        lhs, rhs = parts
        if re.fullmatch(r"-?\d+", rhs) and int(rhs) == int(target):
            return lhs
        if re.fullmatch(r"-?\d+", lhs) and int(lhs) == int(target):
            return rhs
    return answer


def score_equation(answer: str | None, nums: Sequence[int], target: int, exactly_once: bool = False,
                   format_score: float = 0.0) -> float:
    """1.0 for a valid equation equal to ``target``; ``format_score`` for a well-formed equation over
    allowed numbers that is wrong or breaks the number rule; 0.0 when there is no equation or it is
    malformed. Never raises."""
    if not answer:
        return 0.0
    try:
        value, used = evaluate(_equation_part(answer.replace("\\times", "*").replace("\\div", "/"), target))
    except (EquationError, ValueError, ZeroDivisionError, RecursionError):
        return 0.0
    if not uses_numbers(used, nums, exactly_once):
        return format_score
    return 1.0 if value == Fraction(target) else format_score


def countdown_reward(completions: Sequence, nums: Sequence[Sequence[int]], target: Sequence[int],
                     think_prefilled: bool = False, exactly_once: bool = False, format_score: float = 0.0,
                     counts: grading.GradeCounts | None = None, **_) -> list[float]:
    """Countdown accuracy: 1.0 when the answer is an equation over ``nums`` that equals ``target``.

    Range: {0.0, ``format_score``, 1.0}. Source: TinyZero ``verl/utils/reward_score/countdown.py``
    (exact-rational evaluation instead of ``eval`` + 1e-5 tolerance; see the module docstring for the
    number rule and the 0.1 partial score). The equation is the completion's final answer
    (``nanoseek.rewards.grading.extract_answer``: ``<answer>…</answer>`` or ``\\boxed{}``). ``nums`` and
    ``target`` are the example's metadata columns. A row that cannot be scored (bad metadata, an
    unexpected exception) gets 0.0 and is counted in ``counts`` as a reward error of ``"countdown"``.
    """
    n = len(completions)
    prefilled = per_item(think_prefilled, n)
    out = []
    for completion, ns, t, pre in zip(completions, nums, target, prefilled):
        try:
            ans = grading.extract_answer(completion_text(completion), think_prefilled=bool(pre))
            out.append(score_equation(ans, [int(x) for x in ns], int(t), exactly_once, format_score))
        except Exception:  # never raise on model output: scored 0.0, counted
            if counts is not None:
                counts.add_reward_error("countdown")
            out.append(0.0)
    return out


def _ops(x: int, y: int):
    """(value, operator, swapped) for each Stream-of-Search step on x and y."""
    yield x + y, "+", False
    yield x * y, "*", False
    yield (x - y, "-", False) if x >= y else (y - x, "-", True)
    if y and x % y == 0:
        yield x // y, "/", False
    if x and y % x == 0:
        yield y // x, "/", True


@functools.lru_cache(maxsize=None)
def _split_masks(n: int) -> tuple:
    """Index splits of n items into two non-empty parts, each unordered split once (item 0 left)."""
    return tuple((tuple(i for i in range(n) if m >> i & 1), tuple(i for i in range(n) if not m >> i & 1))
                 for m in range(1, (1 << n) - 1) if m & 1)


def _splits(nums: tuple[int, ...]):
    """Each split of the sorted tuple ``nums`` into two non-empty sorted sub-tuples."""
    for li, ri in _split_masks(len(nums)):
        yield tuple(nums[i] for i in li), tuple(nums[i] for i in ri)


@functools.lru_cache(maxsize=1 << 18)
def _reachable(nums: tuple[int, ...]) -> frozenset:
    """Every value reachable using all of ``nums`` (sorted) once."""
    if len(nums) == 1:
        return frozenset(nums)
    out = set()
    for left, right in _splits(nums):
        for x in _reachable(left):
            for y in _reachable(right):
                out.update(v for v, _, _ in _ops(x, y))
    return frozenset(out)


def _reaches(nums: tuple[int, ...], target: int) -> bool:
    """``target in _reachable(nums)`` without building the top-level set: for each split and each
    left value, look up the right values that would give ``target`` (cached sub-sets only)."""
    if len(nums) <= 2:
        return target in _reachable(nums)
    for left, right in _splits(nums):
        rr = _reachable(right)
        for x in _reachable(left):
            need = [target - x, x - target, x + target]  # x + y, |x - y|
            if x:
                need.append(x * target)  # y / x
                if target % x == 0:
                    need.append(target // x)  # x * y
                if target and x % target == 0:
                    need.append(x // target)  # x / y
            if not rr.isdisjoint(need):
                return True
    return False


def _expression(nums: tuple[int, ...], target: int) -> str:
    """An expression over all of ``nums`` equal to ``target`` (which must be reachable)."""
    if len(nums) == 1:
        return str(nums[0])
    for left, right in _splits(nums):
        for x in _reachable(left):
            for y in _reachable(right):
                for v, op, swapped in _ops(x, y):
                    if v == target:
                        a, b = _expression(left, x), _expression(right, y)
                        a, b = (b, a) if swapped else (a, b)
                        wrap = (lambda e: e if e.isdigit() else f"({e})")
                        return f"{a} {op} {wrap(b)}" if op in "+" else f"{wrap(a)} {op} {wrap(b)}"
    raise AssertionError("target not reachable")


def solve(nums: Sequence[int], target: int, use_all: bool = True) -> str | None:
    """A solution equation for a Countdown puzzle, or ``None``.

    The search is the Stream-of-Search generator's rule (``src/countdown.py``): each step combines
    two numbers into ``a+b``, ``a*b``, ``|a-b|`` or ``a/b`` (only when it divides exactly), so every
    intermediate is a non-negative integer. With ``use_all`` every number is used exactly once, else
    the best subset may do. Memoised over sorted operand tuples (microseconds per repeated sub-set).
    """
    nums, target = tuple(sorted(int(x) for x in nums)), int(target)
    subsets = [nums] if use_all else [tuple(x for i, x in enumerate(nums) if m >> i & 1) for m in range(1, 1 << len(nums))]
    for sub in subsets:
        if _reaches(sub, target):
            return _expression(sub, target)
    return None
