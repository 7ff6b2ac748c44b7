"""The grading subprocess: math-verify behind a JSON-lines pipe, with numbers compared relatively.

``nanoseek.rewards.grading_pool`` runs this file as a script (``runpy.run_path``), so a worker imports
neither the nanoseek package nor torch: only the standard library, sympy and math-verify (about
0.8 s to start instead of ~3 s, which matters because a worker killed at its timeout is replaced).
It must therefore import nothing from nanoseek. Protocol: see ``grading_pool``.

Relative comparison. math-verify decides numeric equality with absolute tolerances: floats are
rounded to 6 decimal places (``1e-7 == 2e-7``), and other numbers are compared as
``(a - b).evalf(chop=True) == 0``, which chops any difference below about 1e-15 to zero
(``2^{-60} == 2^{-70}``, ``x = 10^{-70}`` == ``x = 10^{-80}``, ``e^{-100} == e^{-101}``). This module
wraps ``math_verify.grader.sympy_numeric_eq`` (every route of ``verify`` that compares numbers
goes through it: scalars, matrix entries, set and tuple elements, interval ends, both sides of a
relation) so that a "yes" from math-verify stands only when the two values also agree to a
relative error of ``REL_TOL``. The wrapper only ever turns "equal" into "different", never the
reverse, and keeps math-verify's answer where it cannot evaluate the values (the comparison is
then math-verify's own).
"""

from __future__ import annotations

import json
import logging
import signal
import sys

import sympy
from math_verify import grader, parse, verify
from sympy import Float, Integer, Number, Rational
from sympy.matrices import MatrixBase
from sympy.matrices.expressions import MatrixExpr

# Relative tolerance of the numeric veto: a value rounded to 6 significant digits (0.141421 for
# sqrt(2)/10, 0.333333 for 1/3) is off by at most 5e-6 of itself, so it still matches; two values
# that differ by more than 1e-5 of the larger one never do, however small they are.
REL_TOL = 1e-5
DIGITS = 40  # working precision of the veto's evaluation (far beyond REL_TOL; sympy Floats never underflow)
# The child's own deadline for a request is this much before the parent's, so that it usually answers
# "timeout" itself (and lives on) rather than being killed and replaced.
SOFT_MARGIN = 0.3

_math_verify_numeric_eq = grader.sympy_numeric_eq


def _exact_route(a, b) -> bool:
    """Whether math-verify compared ``a`` and ``b`` exactly (both rationals, or both integers with
    percent signs stripped: ``9% = 9``): then its answer stands as it is."""
    if isinstance(a, (MatrixBase, MatrixExpr)) or isinstance(b, (MatrixBase, MatrixExpr)):
        return True  # their entries come back through the wrapper one by one
    either_float = grader.is_atomic_or_pct_atomic(a, Float) or grader.is_atomic_or_pct_atomic(b, Float)
    some_number = grader.is_atomic_or_pct_atomic(a, Number) or grader.is_atomic_or_pct_atomic(b, Number)
    return some_number and not either_float


def _magnitude(x) -> Float | None:
    """``|x|`` evaluated to ``DIGITS`` digits, or ``None`` when ``x`` is not a finite number."""
    v = sympy.N(x, DIGITS)
    if not v.is_number or v.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    return abs(v)


def numbers_apart(a, b) -> bool:
    """True when ``a`` and ``b`` evaluate to values that differ by more than ``REL_TOL`` of the larger.

    Numbers are evaluated directly. When ``a - b`` is a number but ``a`` and ``b`` have symbols (two
    relations ``x - 2^{-60}`` and ``x - 2^{-70}``), the difference is measured against their
    constant terms. Otherwise the symbols get fixed generic values (17/7, 19/7, ...) first. False
    whenever a value cannot be evaluated to a finite number (math-verify's answer then stands).
    """
    if _exact_route(a, b):
        return False
    a, b = grader.safe_sympy_doit(a), grader.safe_sympy_doit(b)
    diff = sympy.expand(a - b)
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    if symbols and not diff.free_symbols:
        a, b = a.as_independent(*symbols, as_Add=True)[0], b.as_independent(*symbols, as_Add=True)[0]
    elif symbols:
        point = {s: Rational(17 + 2 * k, 7) for k, s in enumerate(symbols)}
        a, b = a.subs(point), b.subs(point)
        diff = a - b
    d, x, y = _magnitude(diff), _magnitude(a), _magnitude(b)
    if d is None or x is None or y is None:
        return False
    return bool(d > REL_TOL * max(x, y))


def relative_numeric_eq(a, b, float_rounding: int, numeric_precision: int) -> bool:
    """math-verify's ``sympy_numeric_eq``, vetoed when the values are ``numbers_apart``."""
    if not _math_verify_numeric_eq(a, b, float_rounding, numeric_precision):
        return False
    try:
        return not numbers_apart(a, b)
    except Exception:  # an expression sympy cannot evaluate: math-verify's own answer stands
        return True


grader.sympy_numeric_eq = relative_numeric_eq  # verify() looks the name up in its module at call time


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) > 1 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s


def judge(pred: str, gold: str, raw: bool) -> str:
    """``"equal"``, ``"different"``, ``"bad_reference"`` or ``"parse_failure"`` for one request.

    math-verify's own per-step timeouts (whole-second ``signal.alarm`` calls) are off: the caller
    bounds the whole request with one timer (``child_main``)."""
    gold_parsed = parse("$" + _strip_dollars(gold) + "$", parsing_timeout=None)
    if not gold_parsed:
        return "bad_reference"
    pred_parsed = parse(pred, parsing_timeout=None) if raw else []
    if not pred_parsed:
        pred_parsed = parse("$" + _strip_dollars(pred) + "$", parsing_timeout=None)
    if not pred_parsed:
        return "parse_failure"
    return "equal" if verify(gold_parsed, pred_parsed, timeout_seconds=None) else "different"


class SoftTimeout(BaseException):
    """The request's time is up (a ``BaseException``, so math-verify's ``except Exception`` lets it out)."""


def _time_up(signum, frame):
    raise SoftTimeout


def answer(req: dict) -> str:
    """The status of one request, ``"timeout"`` when it is not decided within ``req["t"] - SOFT_MARGIN``
    seconds (a timer interrupts Python code anywhere; only a long C-level computation, such as one
    huge integer power, runs past it, and the parent then kills this process)."""
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, max(0.01, float(req["t"]) - SOFT_MARGIN))
            return judge(req["p"], req["g"], bool(req.get("raw")))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except SoftTimeout:
        return "timeout"


def child_main() -> None:  # pragma: no cover - runs in the subprocess
    """Answer one JSON request line at a time until stdin closes (protocol: ``grading_pool``)."""
    logging.disable(logging.CRITICAL)  # math-verify logs every timeout/parse error
    signal.signal(signal.SIGALRM, _time_up)
    judge("\\frac{x+1}{2}", "0.5x+\\frac{1}{2}", False)  # loads the LaTeX grammar now, not in a check's time
    sys.stdout.write('{"ready": true}\n')
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            status = answer(json.loads(line))
        except SoftTimeout:  # the timer fired between the answer and its disarming
            status = "timeout"
        except BaseException:  # noqa: BLE001 - any failure is reported as "error" and the worker lives on
            status = "error"
        sys.stdout.write(json.dumps({"s": status}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    child_main()
