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
