"""Tests added for the mutants of the graders' number parsing and comparison that survived
bench/mutation_pass.py (issue 19, item 21). Every pair here is decided by the fast path (checked:
no math-verify call), so it pins nanoseek's own comparison, in both orders where order matters."""

from fractions import Fraction

import pytest

from nanoseek.rewards.grading import GradeCounts, grade, parse_number


def fast(pred: str, ref: str) -> float:
    """``grade(pred, ref)``, asserting the fast path decided it."""
    counts = GradeCounts()
    score = grade(pred, ref, counts=counts)
    assert counts.snapshot()["fast_path"] == 1 and counts.snapshot()["slow_path"] == 0, (pred, ref)
    return score


@pytest.mark.parametrize("answer, value", [
    ("1e-3", Fraction(1, 1000)), ("1.5E+3", Fraction(1500)), ("-1.5e3", Fraction(-1500)),  # scientific
    ("2^{-3}", Fraction(1, 8)), ("-2^{4}", Fraction(-16)), ("(-2)^{3}", Fraction(-8)),     # integer powers
    ("\\frac{-3}{4}", Fraction(-3, 4)), ("\\frac{3}{-4}", Fraction(-3, 4)), ("-3/4", Fraction(-3, 4)),
    ("28\\%", Fraction(28)),                                                                # the number as written
])
def test_exact_values(answer, value):
    """Mutants: a sign dropped (scientific, integer part of a fraction, power), an exponent's sign
    flipped or dropped, a percent answer divided by 100 in parse_number."""
    assert parse_number(answer) == value


@pytest.mark.parametrize("pred, ref", [("0.2000001", "\\frac{1}{5}"), ("\\frac{1}{5}", "0.2000001"),
                                       ("0.3334", "\\frac13"), ("\\frac13", "0.3334")])
def test_decimal_tolerance_only_for_non_terminating_fractions(pred, ref):
    """Mutants: 1/5 taken for non-terminating (only factors of 2 removed); a tolerance of 1e-3."""
    assert fast(pred, ref) == 0.0


@pytest.mark.parametrize("pred, ref, score", [
    ("0.0000001", "\\frac{1}{3000000}", 0.0), ("\\frac{1}{3000000}", "0.0000001", 0.0),
    ("0.000000333333333", "\\frac{1}{3000000}", 1.0), ("\\frac{1}{3000000}", "0.000000333333333", 1.0),
])
def test_tolerance_is_relative_on_tiny_values(pred, ref, score):
    """Mutant: an absolute tolerance (|x - y| <= 1e-6 would call 1e-7 and 3.3e-7 equal)."""
    assert fast(pred, ref) == score


@pytest.mark.parametrize("pred, ref", [("0.333333", "\\frac13"), ("\\frac13", "0.333333")])
def test_tolerance_boundary_is_1e6_of_the_larger_value(pred, ref):
    """Mutant: the tolerance scaled by the smaller value. 0.333333 is 1/3 x (1 - 1e-6): its error is
    exactly 1e-6 of the larger value, 1/3, so it passes in both orders; 0.3333329 does not."""
    assert fast(pred, ref) == 1.0
    assert fast(pred.replace("0.333333", "0.3333329"), ref.replace("0.333333", "0.3333329")) == 0.0


@pytest.mark.parametrize("pred, ref, score", [
    ("0.28", "28\\%", 1.0), ("28\\%", "0.28", 1.0), ("28", "28\\%", 1.0),  # a percent sign on one side
    ("28\\%", "0.28\\%", 0.0), ("0.28\\%", "28\\%", 0.0),                   # on both: plain comparison
])
def test_percent_allowance(pred, ref, score):
    """Mutants: the /100 allowance only for a percent sign on the prediction; the allowance when
    both sides carry a percent sign."""
    assert fast(pred, ref) == score


@pytest.mark.parametrize("pred, ref, score", [
    ("1, 2, 3", "1, 2", 0.0), ("1, 2", "1, 2, 3", 0.0),   # an extra or a missing element
    ("1, 2", "1, 1", 0.0), ("1, 1", "1, 2", 0.0),          # one element cannot match twice
    ("1, 1, 2", "2, 1, 1", 1.0),
])
def test_lists_are_multisets(pred, ref, score):
    """Mutants: list lengths not compared; a matched element not removed."""
    assert fast(pred, ref) == score
