"""Answer extraction and equivalence (nanoseek.rewards.grading): the issue's named cases, one test each."""

import concurrent.futures as cf
import threading
import time

import pytest

from nanoseek.rewards import grading
from nanoseek.rewards.grading import GradeCounts, extract_answer, is_equivalent
from nanoseek.rewards.grading_pool import warmup


# ---------------------------------------------------------------- extraction

def test_last_box_wins_over_retracted_one():
    text = "So \\boxed{12}. Wait, that is wrong: recomputing gives \\boxed{15}."
    assert extract_answer(text) == "15"
    assert is_equivalent(text, "15") and not is_equivalent(text, "12")


def test_repeated_box_not_glued():
    assert extract_answer("\\boxed{1}\\boxed{2}") == "2"
    assert not is_equivalent("\\boxed{3}\\boxed{3}", "33")
    assert not is_equivalent("\\boxed{1}\\boxed{2}", "12")


def test_box_keeps_inner_braces():
    assert extract_answer("thus $\\boxed{\\frac{1}{\\sqrt{2}}}$.") == "\\frac{1}{\\sqrt{2}}"


def test_unbalanced_box_gives_no_answer():
    assert extract_answer("the answer is \\boxed{3") is None
    assert extract_answer("\\boxed{2} then \\boxed{3") is None  # the last box is the (broken) answer
    assert is_equivalent("the answer is \\boxed{3", "3") is False


def test_boxed_variants():
    assert extract_answer("so $\\boxed 2$") == "2"
    assert extract_answer("\\fbox{7}") == "7"
    assert extract_answer("<answer>the result is \\boxed{5}</answer>") == "5"
    assert extract_answer("<answer> 42 </answer>") == "42"
    assert extract_answer("blah\n#### 1,234") == "1,234"


def test_final_answer_bold():
    assert extract_answer("Let me see.\nFinal answer: **73**") == "73"
    assert extract_answer("The final answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"


def test_think_block_rules():
    assert extract_answer("<think>maybe \\boxed{1}</think> \\boxed{2}") == "2"
    assert extract_answer("<think>maybe \\boxed{1} ... never closes") is None
    assert extract_answer("maybe \\boxed{1} ...", think_prefilled=True) is None
    assert extract_answer("work \\boxed{1}</think><answer>3</answer>", think_prefilled=True) == "3"
    # only text after the FIRST </think> counts
    assert extract_answer("a</think> \\boxed{4} </think>", think_prefilled=True) == "4"


def test_extract_never_raises():
    for bad in [None, 3, "", "}{", "\\boxed", "\\boxed{", "<answer>", "</think>", "\\boxed{" * 500]:
        extract_answer(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- equivalence

@pytest.mark.parametrize("pred, ref", [
    ("\\boxed{0, 1}", "0,1"), ("1, 0", "0,1"), ("\\{3, 1, 2\\}", "1,2,3"),     # sets in any order
    ("1,000", "1000"), ("1{,}000", "1000"), ("1\\,000", "1000"), ("12,345.5", "12345.5"),
    ("\\frac12", "0.5"), ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("1/2", "\\frac12"), ("-\\frac{3}{4}", "-0.75"),
    ("28\\%", "0.28"), ("28\\%", "28"), ("28", "28\\%"),
    ("\\boxed{\\text{(C)}}", "C"), ("(C)", "\\text{(C)}"), ("C", "(C)"),
    ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("30°", "30"),
    ("5 \\text{ cm}", "5"), ("\\$18", "18"), ("18 dollars", "18"), ("\\text{72}", "72"), ("$72$", "72"),
    ("72.0", "72"), ("0.3333333", "\\frac{1}{3}"), ("\\frac{2}{7}", "0.2857143"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"), ("\\boxed{x + 1}", "1+x"),
    ("\\boxed{3, -3}", "\\pm 3"),
])
def test_equivalent(pred, ref):
    assert is_equivalent(pred, ref)


@pytest.mark.parametrize("pred, ref", [
    ("01", "0,1"), ("\\boxed{01}", "0,1"),      # a list is not a number
    ("1,5", "1.5"), ("1.5", "1,5"),             # 1,5 is two values
    ("0,1", "0.1"),
    ("\\frac21", "\\frac12"), ("\\frac21", "0.5"),
    ("0.0002", "0.0001"), ("0.00011", "0.0001"),  # no absolute tolerance on tiny numbers
    ("0.33", "\\frac13"), ("1000000.5", "1000000"), ("0.5000001", "\\frac12"),  # tolerance only for 1/3-like
    ("2", "1, 2"), ("\\boxed{1}", "1,2,3"),     # partial answer to a "find all" question
    ("3", "\\pm 3"),                            # missing ±
    ("B", "C"), ("7", "8"), ("-5", "5"),
    ("\\boxed{6}", "\\begin{pmatrix} 6 & 0 \\\\ 0 & 6 \\end{pmatrix}"),  # a matrix is not a scalar
    ("\\begin{pmatrix} 1 & 2500 \\\\ 0 & 1 \\end{pmatrix}", "1"),
    ("10 thousand", "10"), ("5 \\pi", "5"), ("2 or 3", "2"),   # words that change the value are not units
])
def test_not_equivalent(pred, ref):
    assert not is_equivalent(pred, ref)


# Tiny values: equality is exact for rationals and relative otherwise, never an absolute tolerance.
# Each pair is graded in both orders, bare and boxed; the first block is decided by the fast path,
# the second by math-verify (whose own comparison rounds to 6 decimals or chops below ~1e-15).
TINY_DIFFERENT_FAST = [
    ("2^{-60}", "2^{-70}"), ("2^-60", "2^-70"), ("\\frac{1}{2^{60}}", "\\frac{1}{2^{70}}"), ("1e-70", "1e-80"),
    ("10^{-70}", "10^{-80}"), ("1.5\\times 10^{-9}", "1.6\\times 10^{-9}"), ("0.0000001", "0.0000002"),
    ("1/1152921504606846976", "1/1180591620717411303424"), ("2^{-60}", "2^{-61}"), ("1e-70", "1.000001e-70"),
    ("x = 2^{-60}", "x = 2^{-70}"), ("\\{2^{-60}, 3\\}", "\\{2^{-70}, 3\\}"),
]
TINY_DIFFERENT_SLOW = [
    ("y = 2^{-60}\\pi", "y = 2^{-70}\\pi"), ("e^{-100}", "e^{-101}"),
    ("\\sqrt{2}\\cdot 10^{-30}", "\\sqrt{3}\\cdot 10^{-30}"), ("(2^{-60}, 1)", "(2^{-70}, 1)"),
    ("\\{2^{-60}, \\pi\\}", "\\{2^{-70}, \\pi\\}"), ("2^{-60}x", "2^{-70}x"),
    ("[0, 2^{-60}]", "[0, 2^{-70}]"), ("x + 2^{-60}", "x + 2^{-70}"), ("0.0000001\\pi", "0.0000002\\pi"),
]
TINY_EQUAL = [
    ("0.5", "\\frac{1}{2}"), ("1e-70", "10^{-70}"), ("10^{-70}", "\\frac{1}{10^{70}}"), ("2^{-60}", "\\frac{1}{2^{60}}"),
    ("1.5\\times 10^{-9}", "1.5e-9"), ("3 \\cdot 10^{4}", "30000"), ("1e400", "10^{400}"), ("(-2)^{3}", "-8"),
    ("\\frac{\\sqrt{2}}{10}", "0.141421"), ("\\frac{1}{3}", "0.333333"), ("e^{-100}", "e^{-100}"),
    ("\\frac{2}{7}\\cdot 10^{-9}", "2.857143\\times 10^{-10}"),
    ("x = 10^{-70}", "x = 1\\times 10^{-70}"), ("\\sqrt{2}\\cdot 10^{-30}", "\\frac{10^{-30}}{\\frac{1}{\\sqrt{2}}}"),
]


def _both_orders_and_forms(a, b):
    return [(p, r) for x, y in ((a, b), (b, a)) for p, r in ((x, y), (f"\\boxed{{{x}}}", y), (f"${x}$", y))]


@pytest.mark.parametrize("a, b", TINY_DIFFERENT_FAST)
def test_tiny_different_values_are_different_on_the_fast_path(a, b):
    counts = GradeCounts()
    for pred, ref in _both_orders_and_forms(a, b):
        assert not is_equivalent(pred, ref, counts=counts), (pred, ref)
    assert counts.snapshot()["fast_path"] == 6 and counts.snapshot()["slow_path"] == 0


@pytest.mark.parametrize("a, b", TINY_DIFFERENT_SLOW)
def test_tiny_different_values_are_different_through_math_verify(a, b):
    counts = GradeCounts()
    for pred, ref in _both_orders_and_forms(a, b):
        assert not is_equivalent(pred, ref, counts=counts), (pred, ref)
    assert counts.snapshot()["slow_path"] == 6 and counts.snapshot()["timeouts"] == 0


@pytest.mark.parametrize("a, b", TINY_EQUAL)
def test_equal_values_stay_equal_however_small(a, b):
    for pred, ref in _both_orders_and_forms(a, b):
        assert is_equivalent(pred, ref), (pred, ref)


def test_gsm8k_style_rewrites_of_n():
    for pred in ["\\boxed{1234}", "<answer>1234</answer>", "#### 1234", "1234.0", "1,234", "$1234$",
                 "\\text{1234}", "The answer is 1234.", "So she earns $1,234 in total."]:
        assert is_equivalent(pred, "1234"), pred
    for pred in ["1235", "12340", "-1234"]:
        assert not is_equivalent(pred, "1234"), pred


def test_unparsable_reference_never_rewarded():
    assert grading.grade("\\boxed{}", "") is None
    assert grading.grade("\\frac{1}{2", "\\frac{1}{2") is None
    assert not is_equivalent("", "")
    assert grading.check_reference("\\frac{1}{2}", deep=True) and grading.check_reference("72", deep=True)
    assert not grading.check_reference("\\frac{1}{2", deep=True)


def test_throughput_vs_math_verify(data_dir):
    """bench/bench_grading.py at a small size: nanoseek's grader >= 10x math-verify alone."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_grading.py"
    spec = importlib.util.spec_from_file_location("bench_grading", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.run(data_dir, 150, pin=False)
    assert r["ratio_uncached"] >= 10, r


def test_fast_path_avoids_math_verify():
    counts = GradeCounts()
    for i in range(200):
        assert is_equivalent(f"<think>.</think><answer>{i}</answer>", str(i), counts=counts)
    s = counts.snapshot()
    assert s["fast_path"] == 200 and s["slow_path"] == 0 and s["calls"] == 200


# ---------------------------------------------------------------- safety

CASES = [("\\boxed{72}", "72"), ("\\boxed{71}", "72"), ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
         ("\\boxed{x^2+2x+1}", "(x+1)^2"), ("\\boxed{\\sqrt{3}}", "\\frac{1}{\\sqrt{2}}"), ("no answer", "5")]


def _grade_all(cases):
    return [grading.is_equivalent(p, r) for p, r in cases]


def test_same_result_from_main_thread_thread_and_process_pool():
    expected = _grade_all(CASES)
    assert expected == [True, False, True, True, False, False]
    with cf.ThreadPoolExecutor(2) as ex:
        assert list(ex.map(lambda c: grading.is_equivalent(*c), CASES)) == expected
    with cf.ProcessPoolExecutor(1) as ex:
        assert ex.submit(_grade_all, CASES).result(timeout=120) == expected


def test_tower_of_powers_times_out_and_worker_recovers():
    warmup()  # start-up is not part of the per-check timeout
    counts = GradeCounts()
    start = time.monotonic()
    assert grading.grade("\\boxed{9^{9^{9^{9}}}}", "5", timeout=1.0, counts=counts) == 0.0
    assert time.monotonic() - start < 3.0
    assert counts.snapshot()["timeouts"] == 1 and counts.snapshot()["slow_path"] == 1
    assert is_equivalent("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}+0")  # the next call works


def test_timeout_from_a_worker_thread():
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", grading.grade("\\boxed{(10^{10})!}", "3", timeout=1.0)))
    t.start()
    t.join(30)
    assert result["r"] == 0.0


def test_a_check_waiting_for_a_busy_worker_times_out_and_is_not_cached():
    """The deadline covers the wait for a free worker: with the only worker busy on a slow check, a
    second check gives up at its own deadline (counted as a queue timeout), and the same pair is
    judged normally once a worker is free. A fresh pool's first check waits for its start-up."""
    from nanoseek.rewards.grading_pool import SlowPathPool

    pool = SlowPathPool(max_workers=1)
    try:
        assert pool.check("\\frac{2}{4}", "\\frac{1}{2}", False, 0.5) == "equal"  # start-up is not in the 0.5 s
        slow = threading.Thread(target=pool.check, args=("\\boxed{9^{9^{9^{9}}}}", "5", False, 1.5))
        slow.start()
        time.sleep(0.2)  # the slow check holds the only worker for about 1.2 s more
        counts = GradeCounts()
        assert pool.check("\\frac{3}{9}", "\\frac{1}{3}", False, 0.3, counts) == "timeout"
        assert counts.snapshot()["queue_timeouts"] == 1
        slow.join(30)
        assert pool.check("\\frac{3}{9}", "\\frac{1}{3}", False, 2.0, counts) == "equal"
        assert counts.snapshot()["cache_hits"] == 0
    finally:
        pool.close()
