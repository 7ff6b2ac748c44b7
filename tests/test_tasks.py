"""Task registry, data loading, templates, and the graders on every dataset's real rows.

The default run grades a fixed sample of 1,000 rows per dataset (seeded); the ``slow`` variants
grade every row (``pytest -m slow tests/test_tasks.py``).
"""

import json
import logging
import random
import re

import pytest

from nanoseek.errors import NanoseekError

from nanoseek.rewards import grading
from nanoseek.rewards.rules import accuracy_reward, format_reward
from nanoseek.tasks import get_task, task_names
from nanoseek.tasks.templates import apply_template

SAMPLE = 1000


def sample(rows, n=SAMPLE, seed=0):
    rows = list(rows)
    return rows if n is None or n >= len(rows) else random.Random(seed).sample(rows, n)


# ---------------------------------------------------------------- registry and loading

def test_registry_names_and_unknown_name():
    assert {"gsm8k", "math500", "math", "countdown", "chain"} <= set(task_names())
    with pytest.raises(NanoseekError, match="known tasks: gsm8k, math500, math, countdown, chain"):
        get_task("gsm9k")


def test_missing_gsm8k_files_error_names_files_and_source(tmp_path):
    with pytest.raises(NanoseekError) as e:
        get_task("gsm8k", data_dir=tmp_path)
    msg = str(e.value)
    assert "train.jsonl" in msg and "test.jsonl" in msg and "github.com/openai/grade-school-math" in msg


def test_bad_option_is_a_clear_error(data_dir):
    with pytest.raises(NanoseekError, match="bad options"):
        get_task("gsm8k", data_dir=data_dir, colour="red")


def test_jsonl_user_task(tmp_path, caplog):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "1+1?", "answer": "2"}, {"prompt": "half?", "answer": "\\frac12", "level": 3},
            {"prompt": "broken ref", "answer": "\\frac{1}{2"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with caplog.at_level(logging.WARNING):
        task = get_task(str(path))
        ex = task.examples("train")
    assert [e.answer for e in ex] == ["2", "\\frac12", "\\frac{1}{2"]
    assert ex[1].metadata == {"level": 3}
    assert "cannot be parsed" in caplog.text and task.bad_references == ["mine/3"]  # reported at load
    comps = ["<answer>2</answer>", "\\boxed{0.5}", "\\boxed{\\frac{1}{2}"]
    assert accuracy_reward(comps, answer=[e.answer for e in ex]) == [1.0, 1.0, None]  # never 1


@pytest.mark.parametrize("line, message", [
    ("{not json", r"mine\.jsonl:2: not valid JSON"),
    ('{"prompt": "x"}', r"mine\.jsonl:2: missing field\(s\) answer"),
    ('{"prompt": "", "answer": "1"}', r"mine\.jsonl:2: \"prompt\" must be"),
    ('{"prompt": "x", "answer": [1]}', r"mine\.jsonl:2: \"answer\" must be"),
    ("[1, 2]", r"mine\.jsonl:2: expected a JSON object"),
])
def test_jsonl_malformed_row_names_the_line(tmp_path, line, message):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "ok", "answer": "1"}\n' + line + "\n")
    with pytest.raises(NanoseekError, match=message):
        get_task(str(path)).examples("train")


def test_splits_and_sizes(data_dir):
    gsm = get_task("gsm8k", data_dir=data_dir)
    assert len(gsm.examples("train")) == 7473 and len(gsm.examples("test")) == 1055
    assert gsm.examples("train")[0].answer == "72"
    m500 = get_task("math500", data_dir=data_dir)
    assert m500.splits == ("test",) and len(m500.examples("test")) == 400
    with pytest.raises(NanoseekError, match="no split"):
        m500.examples("train")
    math = get_task("math", data_dir=data_dir)
    assert len(math.examples("train")) == 12000
    assert math.bad_references["train"] == ["train/number_theory/7115.json", "train/number_theory/7117.json"]
    cd = get_task("countdown", data_dir=data_dir, num_train=50)
    assert len(cd.examples("test")) == 256 and len(cd.examples("train")) == 50


@pytest.mark.parametrize("name", ["gsm8k", "math500", "math", "countdown", "chain"])
def test_both_templates_for_every_task(data_dir, name):
    task = get_task(name, data_dir=data_dir, **({"num_train": 5} if name == "countdown" else {}))
    ex = task.examples("test")[0]
    zero = apply_template("r1_zero", ex.prompt)
    assert zero.text.startswith("A conversation between User and Assistant.") and ex.prompt.strip() in zero.text
    assert zero.text.endswith("Assistant: <think>") and zero.think_prefilled
    chat = apply_template("r1", ex.prompt)
    assert "\\boxed{}" in chat.text and chat.text.endswith("<｜Assistant｜><think>\n") and chat.think_prefilled
    # A correct completion in each template's format earns the task's accuracy reward.
    acc = task.reward_funcs()["accuracy"]
    cols = {k: [v] for k, v in ex.columns().items()}
    answer = ex.answer
    if name == "countdown":
        from nanoseek.rewards.countdown import solve
        answer = solve(ex.metadata["nums"], ex.metadata["target"])
    assert acc([f" ok </think> <answer>{answer}</answer>"], think_prefilled=True, **cols) == [1.0]
    assert acc([f" ok </think>\nSo the answer is $\\boxed{{{answer}}}$."], think_prefilled=True, **cols) == [1.0]
    assert format_reward([f" ok </think> <answer>{answer}</answer>"], think_prefilled=True) == [1.0]


# ---------------------------------------------------------------- GSM8K on real rows

def _gsm8k_check(data_dir, split, n):
    rows = sample(get_task("gsm8k", data_dir=data_dir).examples(split), n)
    solution_fail, rewrite_fail, wrong_accept = [], [], []
    for ex in rows:
        N = ex.answer
        assert re.fullmatch(r"-?\d+", N), (ex.id, N)
        if grading.grade(ex.metadata["solution"], N) != 1.0:
            solution_fail.append(ex.id)
        rewrites = [f"\\boxed{{{N}}}", f"<answer>{N}</answer>", f"#### {N}", f"{N}.0", f"{int(N):,}", f"${N}$",
                    f"\\text{{{N}}}", f"The answer is {N}.", f"So in total that makes {int(N):,} dollars.",
                    f"<think>\nstep by step\n</think>\n<answer>{N}</answer>"]
        rewrite_fail += [(ex.id, r) for r in rewrites if not grading.is_equivalent(r, N)]
        wrong = {str(int(N) + 1), str(10 * int(N)), str(-int(N))} - {N}
        wrong_accept += [(ex.id, w) for w in wrong if grading.is_equivalent(f"\\boxed{{{w}}}", N)]
    print(f"gsm8k/{split}: {len(rows)} rows, solution failures {solution_fail}, rewrite failures "
          f"{rewrite_fail[:20]}, wrong accepted {wrong_accept[:20]}")
    assert not solution_fail and not rewrite_fail and not wrong_accept


@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_sample(data_dir, split):
    _gsm8k_check(data_dir, split, SAMPLE)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "test"])
def test_gsm8k_full(data_dir, split):
    _gsm8k_check(data_dir, split, None)


# ---------------------------------------------------------------- MATH on real rows

def _math_solutions(data_dir, task, split, n, threshold):
    rows = [e for e in sample(get_task(task, data_dir=data_dir).examples(split), n) if grading.check_reference(e.answer)]
    fails = [(e.id, e.answer, grading.extract_answer(e.metadata["solution"]))
             for e in rows if grading.grade(e.metadata["solution"], e.answer) != 1.0]
    rate = 1 - len(fails) / len(rows)
    print(f"{task}/{split}: solution accepted {rate:.4f} of {len(rows)}; failures:")
    for f in fails:
        print("  ", f)
    assert rate >= threshold


def _math_mismatches(data_dir, task, split, n, threshold):
    rows = sample(get_task(task, data_dir=data_dir).examples(split), n, seed=1)
    pairs = [(a, b) for a, b in zip(rows, rows[1:] + rows[:1])
             if a.answer.strip() != b.answer.strip() and grading.check_reference(a.answer)]
    accepted = [(b.answer, a.answer) for a, b in pairs if grading.is_equivalent(b.answer, a.answer)]
    rate = 1 - len(accepted) / len(pairs)
    print(f"{task}/{split}: other problems' answers rejected {rate:.4f} of {len(pairs)}; accepted (pred, ref):")
    for x in accepted:
        print("  ", x)
    assert rate >= threshold


def test_math500_solutions(data_dir):
    _math_solutions(data_dir, "math500", "test", SAMPLE, 0.995)


def test_math_train_solutions_sample(data_dir):
    _math_solutions(data_dir, "math", "train", SAMPLE, 0.97)


def test_math500_mismatches(data_dir):
    _math_mismatches(data_dir, "math500", "test", SAMPLE, 0.99)


def test_math_train_mismatches_sample(data_dir):
    _math_mismatches(data_dir, "math", "train", SAMPLE, 0.99)


@pytest.mark.slow
def test_math_train_solutions_full(data_dir):
    _math_solutions(data_dir, "math", "train", None, 0.97)


@pytest.mark.slow
def test_math_train_mismatches_full(data_dir):
    _math_mismatches(data_dir, "math", "train", None, 0.99)


# ---------------------------------------------------------------- Countdown

def test_countdown_test_rows_solvable_and_verified(data_dir):
    from nanoseek.rewards.countdown import solve

    task = get_task("countdown", data_dir=data_dir, num_train=10)
    acc = task.reward_funcs()["accuracy"]
    rows = task.examples("test")
    comps = [f"<think>..</think><answer>{solve(e.metadata['nums'], e.metadata['target'])}</answer>" for e in rows]
    cols = {"nums": [e.metadata["nums"] for e in rows], "target": [e.metadata["target"] for e in rows]}
    assert acc(comps, **cols) == [1.0] * len(rows)


def test_countdown_generator_is_seeded_solvable_and_excludes_test(data_dir):
    from nanoseek.rewards.countdown import score_equation, solve

    a = get_task("countdown", data_dir=data_dir, num_train=300, seed=7).examples("train")
    b = get_task("countdown", data_dir=data_dir, num_train=300, seed=7).examples("train")
    assert [e.metadata for e in a] == [e.metadata for e in b]
    test = {(tuple(sorted(e.metadata["nums"])), e.metadata["target"])
            for e in get_task("countdown", data_dir=data_dir).examples("test")}
    for e in a:
        nums, target = e.metadata["nums"], e.metadata["target"]
        assert 10 <= target <= 100 and len(nums) in (3, 4) and all(1 <= x <= 99 for x in nums)
        assert score_equation(solve(nums, target), nums, target, exactly_once=True) == 1.0
        assert (tuple(sorted(nums)), target) not in test


def test_countdown_train_split_never_drops_the_test_exclusion_silently(tmp_path, caplog):
    """Without a readable test file the train split is an error (it would no longer exclude the test
    puzzles), unless ``exclude_test = false`` says so on purpose; that case is logged."""
    missing = get_task("countdown", data_dir=tmp_path, num_train=5)
    with pytest.raises(NanoseekError, match=r"^countdown: the train split excludes the test puzzles, but the test "
                                            r"split cannot be read \(Countdown test data not found: expected .*"
                                            r"countdown_cd3_test\.jsonl.*exclude_test = false$"):
        missing.examples("train")
    (tmp_path / "countdown").mkdir()
    rows = '{"input": "1,2,3", "output": "6"}\n{"input": 7}\n'
    (tmp_path / "countdown" / "countdown_cd3_test.jsonl").write_text(rows)
    with pytest.raises(NanoseekError, match=r"countdown_cd3_test\.jsonl:2: expected \"input\""):
        get_task("countdown", data_dir=tmp_path, num_train=5).examples("train")
    with caplog.at_level(logging.WARNING):
        train = get_task("countdown", data_dir=tmp_path / "nowhere", num_train=5, exclude_test=False).examples("train")
    assert [e.id for e in train] == [f"countdown/train/0/{i}" for i in range(5)]
    assert "exclude_test = false" in caplog.text
    with pytest.raises(NanoseekError, match=r"^countdown task option exclude_test must be true or false, got 'no'$"):
        get_task("countdown", exclude_test="no")


def test_countdown_exclusion_removes_a_test_puzzle_from_train(tmp_path):
    """The train split of a seed, with the first generated puzzle planted as the only test puzzle,
    is the same stream with that puzzle left out."""
    free = get_task("countdown", data_dir=tmp_path, num_train=6, seed=3, exclude_test=False).examples("train")
    nums, target = free[0].metadata["nums"], free[0].metadata["target"]
    (tmp_path / "countdown").mkdir()
    (tmp_path / "countdown" / "countdown_cd3_test.jsonl").write_text(
        json.dumps({"input": ",".join(map(str, nums)), "output": str(target)}) + "\n")
    kept = get_task("countdown", data_dir=tmp_path, num_train=5, seed=3).examples("train")
    assert [e.metadata for e in kept] == [e.metadata for e in free[1:]]
