"""The grader's fast path: plain numbers, simple fractions, percent, choice letters, lists of those.

``parse_simple(answer)`` turns an answer into a ``Num`` (an exact ``Fraction`` with flags), a
``Choice`` letter, or an ``AnswerList`` of those, or returns ``None`` when the answer needs math-verify;
``simple_equal(pred, ref)`` compares two parsed answers. Pure functions, microseconds per call; the
rules are listed in ``nanoseek.rewards.grading``'s module docstring.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from fractions import Fraction


def brace_end(text: str, start: int) -> int:
    """Index just past the brace group opening at ``text[start] == '{'``, or -1 if unbalanced."""
    depth, i, n = 0, start, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip escaped characters such as \{ and \}
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


@dataclass(frozen=True)
class Num:
    """A parsed number: its exact ``value``, whether it carried a percent sign, and whether it was
    written exactly (a decimal literal such as 0.333 may be a rounding, see ``simple_equal``)."""

    value: Fraction
    percent: bool = False
    exact: bool = True  # False for a decimal literal (it may be a rounding)


@dataclass(frozen=True)
class Choice:
    """A multiple-choice letter, upper case (``(C)``, ``\\text{(C)}`` and ``C`` all parse to ``C``)."""

    letter: str


@dataclass(frozen=True)
class AnswerList:
    """A comma-separated answer (or a ``\\{…\\}`` set) of ``Num``/``Choice`` items, compared as a multiset."""

    items: tuple


_WRAP_RE = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|mbox|textrm|operatorname)\s*\{(.*)\}$", re.DOTALL)
_NUM_BODY = r"(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_NUM_RE = re.compile(rf"^([+-]?)\s*({_NUM_BODY})$")
# Scientific notation: 1e-70, 1.5E+3, 1.5 \times 10^{-9}, 3 \cdot 10^4 (exponent in braces, or digits).
_SCI_RE = re.compile(rf"^([+-]?)\s*({_NUM_BODY})\s*(?:[eE]([+-]?\d{{1,6}})|(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*"
                     r"(?:\{\s*([+-]?\d{1,6})\s*\}|(\d{1,6})))$")
# An integer power: 2^{-60}, 10^{400}, 2^-60, 2^10, (-2)^{3} (a braced exponent, or a signed digit run).
_POW_RE = re.compile(r"^(?:(\d{1,50})|\(\s*([+-]?\d{1,50})\s*\))\s*\^\s*(?:\{\s*([+-]?\d{1,6})\s*\}|([+-]?\d{1,6}))$")
_INT_ATOM_RE = re.compile(r"^([+-]?)\s*(\d{1,200})$")
_FRAC_HEAD_RE = re.compile(r"^([+-]?)\s*\\frac\s*")
_SLASH_RE = re.compile(r"^([+-]?)\s*([^/]+?)\s*/\s*([^/]+)$")
MAX_DIGITS = 4000  # exact values larger or smaller than 10^±4000 are left to math-verify (in its subprocess)
_UNIT_RE = re.compile(
    r"\s*(?:\\(?:text|mbox|mathrm|textrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}|[a-zA-Z]{2,}(?:\s+[a-zA-Z]+)*\.?)$"
)
_DEGREE_RE = re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree|degrees?)$")
_PERCENT_RE = re.compile(r"\s*(?:\\%|%|percent)$")
_CURRENCY_RE = re.compile(r"^(?:\\\$|\$|£|€|\\euro\s*)\s*")
_VAR_RE = re.compile(r"^[a-zA-Z]\s*=\s*")
_CHOICE_RE = re.compile(r"^\(?([A-Z])\)?$|^\(([a-e])\)$")
# Words after a number that change its value or meaning, so they are not units to drop
# ("10 thousand" is not 10, "5 pi" is not 5, "2 or 3" is not 2).
_NOT_UNITS = {"pi", "sqrt", "infty", "or", "and", "cdot", "times", "hundred", "hundreds", "thousand",
              "thousands", "million", "millions", "billion", "billions", "trillion", "dozen", "dozens",
              "squared", "cubed", "half", "halves", "third", "thirds", "quarter", "quarters", "percent",
              "plus", "minus", "over", "divided", "to", "of", "less", "more", "than", "not", "no"}


def _strip_outer(s: str) -> str:
    """Remove math delimiters, markdown bold, wrappers and a final period around a whole answer."""
    for _ in range(4):
        before = s
        s = s.strip().strip("*").strip()
        if s.startswith("$") and s.endswith("$"):
            s = s.strip("$")
        for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(a) and s.endswith(b):
                s = s[2:-2]
        m = _WRAP_RE.match(s)
        if m and brace_end(s, s.index("{")) == len(s):
            s = m.group(1)
        if s.endswith(".") and not re.search(r"\d\.$", s[-2:]):
            s = s[:-1]
        if s.startswith("\\boxed{") and brace_end(s, 6) == len(s):
            s = s[7:-1]
        if s == before:
            break
    return s.strip()


def _normalize(s: str) -> str:
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("−", "-")
    s = s.replace("{,}", ",").replace("\\!", "").replace("\\left", "").replace("\\right", "")
    s = re.sub(r"(?<=\d)\\,(?=\d{3})", "", s)  # 1\,000 (thin-space thousands)
    s = s.replace("\\ ", " ").replace("~", " ").replace("\\displaystyle", "")
    return _strip_outer(s)


def _split_top(s: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _parse_number(s: str) -> Num | None:
    s = _CURRENCY_RE.sub("", s.strip())
    percent = False
    for _ in range(3):  # strip a percent sign, degrees, units in any order ("45^\circ F", "5 \%")
        before = s
        if _PERCENT_RE.search(s):
            s, percent = _PERCENT_RE.sub("", s), True
        s = _DEGREE_RE.sub("", s)
        m = _UNIT_RE.search(s)
        if m and m.start() > 0 and not _NOT_UNITS.intersection(re.findall(r"[a-z]+", m.group(0).lower())):
            s = s[: m.start()]
        s = _strip_outer(_CURRENCY_RE.sub("", s.strip()))
        if s == before:
            break
    value = _exact_value(s)
    if value is None:
        return None
    return Num(value[0], percent, exact=value[1])


def _power(s: str) -> Fraction | None:
    """The value of an integer or an integer power (``7``, ``-2^{4}`` = -16, ``2^{-60}``, ``(-2)^3``), or
    ``None`` (also when the result would have more than ``MAX_DIGITS`` digits)."""
    m = _INT_ATOM_RE.match(s)
    if m:
        return Fraction(int(m.group(2)) * (-1 if m.group(1) == "-" else 1))
    sign = -1 if s[:1] == "-" else 1
    m = _POW_RE.match(s[1:].strip() if s[:1] in "+-" else s)
    if not m:
        return None
    base, exp = int(m.group(1) or m.group(2)), int(m.group(3) or m.group(4))
    if base == 0 and exp < 0 or abs(exp) * math.log10(max(2, abs(base))) > MAX_DIGITS:
        return None
    return sign * Fraction(base) ** exp


def _frac_parts(s: str) -> tuple[str, str, str] | None:
    """(sign, numerator, denominator) of ``\\frac{a}{b}`` / ``\\frac12`` / ``\\frac{a}2``, or ``None``."""
    m = _FRAC_HEAD_RE.match(s)
    if not m:
        return None
    parts, i = [], m.end()
    for _ in range(2):
        i += len(s[i:]) - len(s[i:].lstrip())
        if s[i:i + 1] == "{":
            end = brace_end(s, i)
            if end < 0:
                return None
            parts.append(s[i + 1:end - 1])
            i = end
        elif s[i:i + 1].isdigit():
            parts.append(s[i])
            i += 1
        else:
            return None
    return (m.group(1), parts[0], parts[1]) if not s[i:].strip() else None


def _exact_value(s: str) -> tuple[Fraction, bool] | None:
    """(exact value, written exactly) of a number on its own: a decimal, scientific notation, an
    integer power, or a fraction of integers or integer powers (``\\frac{1}{2^{60}}``, ``3/4``).
    A decimal literal is not "written exactly" (it may be a rounding)."""
    m = _NUM_RE.match(s)
    if m:
        body = m.group(2).replace(",", "")
        value = Fraction(body.rstrip(".") if body.endswith(".") else body)
        return (-value if m.group(1) == "-" else value), "." not in body
    m = _SCI_RE.match(s)
    if m:
        body = m.group(2).replace(",", "")
        exp = int(m.group(3) or m.group(4) or m.group(5))
        if abs(exp) + len(body) > MAX_DIGITS:
            return None
        value = Fraction(body.rstrip(".") if body.endswith(".") else body) * Fraction(10) ** exp
        return (-value if m.group(1) == "-" else value), "." not in body
    value = _power(s)
    if value is not None:
        return value, True
    parts = _frac_parts(s)
    if parts is None:
        m = _SLASH_RE.match(s)
        parts = (m.group(1), m.group(2), m.group(3)) if m else None
    if parts is None:
        return None
    num, den = _power(parts[1].strip()), _power(parts[2].strip())
    if num is None or not den:
        return None
    value = num / den
    return (-value if parts[0] == "-" else value), True


def _parse_item(s: str):
    s = _strip_outer(s)
    s = _VAR_RE.sub("", s, count=1)
    m = _CHOICE_RE.match(s)
    if m:
        return Choice((m.group(1) or m.group(2)).upper())
    return _parse_number(s)


_INT_RE = re.compile(r"\s*(-?\d{1,50})\s*")


@functools.lru_cache(maxsize=1 << 16)
def parse_simple(answer: str):
    """Parse an answer the fast path can decide: a number, a choice letter or a list of those.

    Returns ``None`` when the answer needs math-verify (anything symbolic, tuples, intervals, ...).
    Results are immutable and cached (references repeat across a GRPO group).
    """
    m = _INT_RE.fullmatch(answer)
    if m:  # the common case (GSM8K, the built-in task): a bare integer
        return Num(Fraction(int(m.group(1))))
    s = _normalize(answer)
    if not s or len(s) > 200:
        return None
    if s.startswith("\\{") and s.endswith("\\}"):
        s = s[2:-2].strip()
    elif s[:1] in "([" and s[-1:] in ")]" and "," in s:
        return None  # ordered tuple or interval: math-verify decides
    s = re.sub(r"\s*(?:\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b)\s*", ",", s) if "," in s else s
    if "," in s and not any(r.match(_CURRENCY_RE.sub("", s)) for r in (_NUM_RE, _SCI_RE)):
        parts = [p.strip() for p in _split_top(s)]
        if len(parts) < 2 or not all(parts):
            return None
        items = tuple(_parse_item(p) for p in parts)
        if any(i is None or isinstance(i, AnswerList) for i in items):
            return None
        return AnswerList(items)
    return _parse_item(s)


def _terminates(x: Fraction) -> bool:
    """Whether ``x`` has a finite decimal expansion (its denominator is 2^a 5^b)."""
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _num_eq(a: Num, b: Num) -> bool:
    """Exact equality, with two allowances: a percent sign on one side also allows the value / 100,
    and a decimal literal matches a non-terminating fraction (1/3, 2/7) within a relative error of
    1e-6 of the larger value (a rounding such as 0.333333; the same in both orders). Two terminating
    values must be exactly equal, and no absolute tolerance ever applies (0.0001 != 0.0002)."""

    def close(x: Fraction, y: Fraction) -> bool:
        if x == y:
            return True
        inexact = (not a.exact and not _terminates(y)) or (not b.exact and not _terminates(x))
        return inexact and abs(x - y) <= max(abs(x), abs(y)) * Fraction(1, 10**6)

    pairs = [(a.value, b.value)]
    if a.percent != b.percent:
        pairs += [(a.value / 100, b.value)] if a.percent else [(a.value, b.value / 100)]
    return any(close(x, y) for x, y in pairs)


def simple_equal(p, r) -> bool:
    """Equality of two ``parse_simple`` results (lists as multisets)."""
    if isinstance(p, Num) and isinstance(r, Num):
        return _num_eq(p, r)
    if isinstance(p, Choice) and isinstance(r, Choice):
        return p.letter == r.letter
    if isinstance(p, AnswerList) and isinstance(r, AnswerList):
        if len(p.items) != len(r.items):
            return False
        unused = list(p.items)
        for ri in r.items:
            hit = next((k for k, pi in enumerate(unused) if simple_equal(pi, ri)), None)
            if hit is None:
                return False
            unused.pop(hit)
        return True
    return False


_LAST_NUM_RE = re.compile(rf"(?<![\w.])([+-]?(?:{_NUM_BODY})(?:[eE][+-]?\d{{1,6}})?)(?!\w)")


def last_number(text: str):
    """The last number of an unmarked sentence ("So she sold 72 clips."), parsed, or ``None``."""
    nums = _LAST_NUM_RE.findall(text[-2000:])
    if not nums:
        return None
    return _parse_number(nums[-1].rstrip("."))
