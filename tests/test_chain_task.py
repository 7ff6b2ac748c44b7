"""The built-in chain task: exact answers, worked steps, and a held-out split disjoint from training."""

import random

from nanoseek.tasks.chain import ChainProblem, ChainTask
from nanoseek.tokenizer import build_tokenizer, render_prompt


def test_answer_and_worked_steps_are_exact():
    p = ChainProblem(digits=(7, 3, 9, 2, 5), ops=("+", "-", "+", "+"))
    assert p.question == "What is 7 + 3 - 9 + 2 + 5 mod 10?"
    assert p.worked() == "+7=7+3=0-9=1+2=3+5=8"
    assert p.answer == (7 + 3 - 9 + 2 + 5) % 10 == 8
    assert ChainTask.completion(p, think=True) == "+7=7+3=0-9=1+2=3+5=8</think><answer>8</answer>"
    assert ChainTask.completion(p, think=False) == "</think><answer>8</answer>"


def test_each_step_is_as_far_from_its_term_as_every_other():
    """The property that makes the worked steps learnable: four tokens per term in the question and
    four per step in the reasoning, so every copied digit sits at one fixed distance from its source."""
    tok = build_tokenizer()
    task = ChainTask(operators="+")
    p = task.corpus_problems(seed=3, n=1)[0]
    prompt = tok(render_prompt(tok, p.question), add_special_tokens=False).input_ids
    full = tok(render_prompt(tok, p.question) + task.completion(p, think=True), add_special_tokens=False).input_ids
    digit_ids = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    src = [i for i, t in enumerate(prompt) if t in digit_ids][: len(p.digits)]
    dst = [len(prompt) + 1 + 4 * k for k in range(len(p.digits))]
    assert [full[i] for i in src] == [full[j] for j in dst]
    assert len({j - i for i, j in zip(src, dst)}) == 1


def test_random_answers_match_python_arithmetic():
    task = ChainTask(min_terms=5, max_terms=9)
    rng = random.Random(0)
    for _ in range(500):
        p = task.random_problem(rng)
        total = p.digits[0] + sum(d if op == "+" else -d for op, d in zip(p.ops, p.digits[1:]))
        assert p.answer == total % 10
        assert task.min_terms <= len(p.digits) <= task.max_terms


def test_held_out_split_is_disjoint_and_deduplicated():
    task = ChainTask(n_test=200, n_train=5000)
    test = task.examples("test")
    train = task.examples("train")
    test_ids = [e.id for e in test]
    assert len(test_ids) == len(set(test_ids)) == 200
    assert len({e.id for e in train}) == len(train) == 5000
    assert not set(test_ids) & {e.id for e in train}
    corpus = task.corpus_problems(seed=7, n=20000)
    assert not set(test_ids) & {p.expression for p in corpus}
    # the split is fixed: a second task object has the same held-out problems
    assert [e.id for e in ChainTask(n_test=200).examples("test")] == test_ids


def test_prompt_template_prefills_think():
    tok = build_tokenizer()
    text = render_prompt(tok, "What is 1+2 mod 10?")
    assert text == "<|begin|>User: What is 1+2 mod 10?\nAssistant: <think>"
    ids = tok(text + "+1=1+2=3</think><answer>3</answer>", add_special_tokens=False).input_ids
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("</answer>") in ids
    assert tok.decode(ids) == text + "+1=1+2=3</think><answer>3</answer>"


def test_asking_for_more_problems_than_exist_is_an_error():
    import pytest

    from nanoseek.errors import NanoseekError

    with pytest.raises(NanoseekError, match="allow only 100"):
        ChainTask(min_terms=2, max_terms=2, operators="+", n_test=101)
    task = ChainTask(min_terms=2, max_terms=2, operators="+", n_test=10, n_train=500)
    assert task.distinct_problems() == 100
    assert len(task.examples("train")) == 90  # capped at what exists
    with pytest.raises(NanoseekError, match="allow only 90"):
        task.sample_problems(seed=0, n=91)
    assert len(task.sample_problems(seed=0, n=90)) == 90
