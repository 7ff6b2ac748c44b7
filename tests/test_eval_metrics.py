"""Evaluation metrics: unbiased pass@k (Chen et al. 2021), cons@k voting, stderr, breakdowns, summarize."""

from fractions import Fraction
from math import comb

import pytest

from nanoseek.evaluation.metrics import (breakdown, cons_at_k, cross_table, majority_vote, pass1_stderr, pass_at_k,
                                   pass_at_k_curve)
from nanoseek.evaluation.evaluate import GradedSample, split_think_block, summarize


def test_pass_at_k_hand_computed():
    assert pass_at_k(10, 3, 5) == pytest.approx(11 / 12, abs=1e-15)  # 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert pass_at_k(4, 1, 1) == 0.25
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every draw of 3 holds a correct one
    # the exact formula for every small case; pass@1 is c/n
    for n in range(1, 9):
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(1 - Fraction(comb(n - c, k), comb(n, k))))
    # big n stays exact and finite (no float overflow of the binomials)
    assert 0.0 < pass_at_k(1000, 1, 7) < 0.01


def test_pass_at_k_refuses_k_above_n():
    with pytest.raises(ValueError, match="k must be <= n"):
        pass_at_k(4, 2, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 2)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError):
        pass_at_k_curve([[True, False]], ks=[3])


def test_pass_at_k_curve_every_k():
    curve = pass_at_k_curve([[True, False, False, False], [True, True, False, False]])
    assert list(curve) == ["1", "2", "3", "4"]
    assert curve["1"] == pytest.approx((0.25 + 0.5) / 2)
    assert curve["2"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert curve["4"] == 1.0


def _eq_numbers(a, b):  # a toy equivalence for the ordering tests: numbers within 0.15
    return abs(float(a) - float(b)) <= 0.15


def test_majority_vote_order_rule_and_ties():
    # a tie goes to the cluster that appeared first
    winner, clusters = majority_vote(["1", "2", "2", "1"], _eq_numbers)
    assert clusters == [[0, 3], [1, 2]] and winner == 0
    # the largest cluster wins even if it appears later
    winner, clusters = majority_vote(["1", "2", "2", None], _eq_numbers)
    assert clusters == [[0], [1, 2]] and winner == 1
    # not transitive: 1.1 ~ 1.0 and 1.2 ~ 1.1 but 1.2 !~ 1.0; each answer compares only with the
    # first member of each earlier cluster, in order of first appearance
    winner, clusters = majority_vote(["1.0", "1.1", "1.2", "1.25"], _eq_numbers)
    assert clusters == [[0, 1], [2, 3]] and winner == 0
    winner, clusters = majority_vote(["1.1", "1.0", "1.2", "1.25"], _eq_numbers)
    assert clusters == [[0, 1, 2, 3]] and winner == 0
    # unparsable answers never form a cluster
    winner, clusters = majority_vote([None, None, "3", None], _eq_numbers)
    assert clusters == [[2]] and winner == 2
    assert majority_vote([None, None], _eq_numbers) == (None, [])


def test_cons_at_k_with_the_real_grader():
    # 1/2, 0.5 and \frac12 are one answer (grading.is_equivalent); two votes beat one
    assert cons_at_k(["3", "\\frac12", "0.5", "1/2"], [False, True, True, True]) == 1.0
    assert cons_at_k(["3", "0.5", "3.0", "\\frac{1}{2}", "3"], [False, True, False, True, False]) == 0.0
    assert cons_at_k([None, None, None], [False, False, False]) == 0.0
    # free text: identical strings vote together even where the math grader cannot parse them
    assert cons_at_k(["Paris", "Lyon", "Paris"], [True, False, True]) == 1.0
    with pytest.raises(ValueError):
        cons_at_k(["1"], [True, False])


@pytest.mark.xfail(reason="nanoseek.rewards.grading.is_equivalent does not read Unicode vulgar fractions (½) yet", strict=False)
def test_cons_at_k_unicode_half():
    # without ½ ~ 0.5 the "3" cluster would win the 2-2 tie by appearing first
    assert cons_at_k(["½", "3", "0.5", "3", "1/2"], [True, False, True, False, True]) == 1.0


def test_stderr_and_breakdown():
    assert pass1_stderr([0.5]) is None
    assert pass1_stderr([0.5, 0.5, 0.75, 0.25]) == pytest.approx(((0.125 / 3) / 4) ** 0.5)
    meta = [{"subject": "Algebra", "level": 2}, {"subject": "Algebra", "level": 5}, {"subject": "Geometry", "level": 2}, {}]
    parts = breakdown([1.0, 0.0, 0.5, 0.25], meta)
    assert parts["subject"] == {"Algebra": {"pass@1": 0.5, "n": 2}, "Geometry": {"pass@1": 0.5, "n": 1}}
    assert parts["level"] == {"2": {"pass@1": 0.75, "n": 2}, "5": {"pass@1": 0.0, "n": 1}}
    rows, cols, cells = cross_table([1.0, 0.0, 0.5, 0.25], meta)
    assert rows == ["Algebra", "Geometry", "all"] and cols == ["2", "5", "all"]
    assert cells[("Algebra", "2")] == (1.0, 1) and cells[("all", "all")] == (0.5, 3)
    assert breakdown([1.0], [{}]) == {}


def _r(problem, sample, extracted, correct, length=10, finish="stop", error=None):
    return GradedSample(problem, sample, f"p{problem}", "q", "1", "", extracted, correct, correct, False, length,
                        finish, None, error)


def test_summarize_keys_and_values():
    results = [_r(0, 0, "1", True), _r(0, 1, "2", False), _r(0, 2, "2", False), _r(0, 3, None, False, finish="length"),
               _r(1, 0, "1", True), _r(1, 1, "1.0", True), _r(1, 2, None, False, 0, "error", "HTTP 500: x"),
               _r(1, 3, "5", False)]
    m = summarize(results, 2)
    assert m["pass@1"] == 3 / 8 and m["n"] == 2 and m["samples"] == 4
    assert m["cons@4"] == 0.5  # problem 0: "2" wins 2-1; problem 1: "1" wins
    assert m["pass@k"]["1"] == pytest.approx(3 / 8) and m["pass@k"]["4"] == 1.0
    assert m["truncated"] == 1 / 8 and m["failed"] == 1
    assert m["mean_length"] == 10.0  # the failed request is left out
    assert m["pass@1_stderr"] == pytest.approx(abs(0.25 - 0.5) / 2 ** 0.5 / 2 ** 0.5)
    for key in ("pass@1", "well_formed", "thinking", "mean_length", "truncated", "n", "samples"):
        assert key in m  # the keys the zero recipe reads


def test_split_think_block():
    assert split_think_block("a b</think><answer>3</answer>", True) == ("a b", "<answer>3</answer>")
    assert split_think_block("<think>x</think>\\boxed{3}", False) == ("x", "\\boxed{3}")
    assert split_think_block("still thinking", True) == ("still thinking", "")
    assert split_think_block("\\boxed{3}", False) == (None, "\\boxed{3}")


def test_grading_uses_the_tasks_own_accuracy_reward(data_dir):
    from nanoseek.evaluation.evaluate import grade_completions
    from nanoseek.tasks import get_task

    task = get_task("countdown")
    ex = task.examples("test")[0]  # numbers [30, 100, 93], target 23
    assert ex.metadata["nums"] == [30, 100, 93] and ex.metadata["target"] == 23
    good, bare = "x</think><answer>30 - (100 - 93)</answer>", "x</think><answer>23</answer>"
    g = grade_completions(task, [ex, ex], [good, bare], think_prefilled=True)
    assert [r["correct"] for r in g] == [True, False]  # "23" alone equals the target but is no equation
