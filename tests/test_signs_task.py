"""The search task (``nanoseek.tasks.signs``): a deterministic generator with disjoint splits and
difficulty levels, exact rewards on planted completions (reflection and notation markers included),
the detectors, the corpus it pretrains on, and the measurements built on it
(``nanoseek.evaluation.behaviour``, ``nanoseek eval --task-option``, results.json's headline)."""

import random

import pytest

from nanoseek.errors import NanoseekError
from nanoseek.evaluation import behaviour
from nanoseek.evaluation.evaluate import GradedSample, eval_metrics_record, summarize
from nanoseek.evaluation.store import headline
from nanoseek.rewards import signs as grader
from nanoseek.rewards.rules import format_reward
from nanoseek.tasks import get_task
from nanoseek.tasks.signs import SignsProblem, SignsTask, attempt_text, notation_stream, reach_counts, search_trace

P = SignsProblem((7, 3, 8, 2), 4)  # 7+3-8+2 = 4 (mod 9), the only sign pattern that gives 4


@pytest.fixture(scope="module")
def task():
    return SignsTask(n_test=40, n_train=400)


# ------------------------------------------------------------------------------ problems
def test_problem_answer_and_worked_search_are_exact():
    assert P.question == "Put + or - in 7 ? 3 ? 8 ? 2 to make 4 mod 9."
    assert P.solutions() == [("+", "-", "+")] and P.answer == "7+3-8+2" and P.level == 2 and P.key == "7382:4"
    assert P.running(("+", "+", "+")) == [1, 0, 2]  # 10, 18, 20 mod 9
    assert reach_counts(P.digits, 9) == [1, 1, 1, 1, 1, 1, 0, 2, 0]  # values of the 8 patterns: 2 7 4 0 5 1 7 3
    worked = SignsTask(n_test=4).worked(P)
    assert worked == "7+3=1+8=0+2=2 backtrack 7+3=1+8=0-2=7 backtrack 7+3=1-8=2+2=4"
    words = SignsTask(n_test=4, notation="words").worked(P)
    assert words == ("7 plus 3 is 1 plus 8 is 0 plus 2 is 2 backtrack 7 plus 3 is 1 plus 8 is 0 minus 2 is 7 "
                     "backtrack 7 plus 3 is 1 minus 8 is 2 plus 2 is 4")


def test_generator_is_deterministic_leveled_and_disjoint(task):
    test, train = task.examples("test"), task.examples("train")
    again = SignsTask(n_test=40, n_train=400)
    assert [e.id for e in again.examples("test")] == [e.id for e in test]
    assert [e.id for e in again.examples("train")] == [e.id for e in train]
    assert [e.metadata["level"] for e in test[:8]] == [1, 2, 3, 4, 1, 2, 3, 4]  # the levels in turn
    assert all(len(e.metadata["digits"]) == e.metadata["level"] + 2 for e in test + train)
    assert len({e.id for e in test}) == 40 and len({e.id for e in train}) == len(train) == 400
    assert not {e.id for e in test} & {e.id for e in train}
    assert not {e.id for e in test} & {p.key for p in task.corpus_problems(seed=7, n=3000)}
    for e in test + train:  # exactly one solution, and the reference answer is it
        p = SignsProblem(tuple(e.metadata["digits"]), e.metadata["target"], e.metadata["modulus"])
        assert len(p.solutions()) == 1 and e.answer == p.answer
        assert grader.score_answer(e.answer, p.digits, p.target, p.modulus) == 1.0


def test_test_seed_gives_fresh_problems_and_options_reach_the_task():
    a, b = get_task("signs", n_test=40), get_task("signs", n_test=40, test_seed=7)
    assert not {e.id for e in a.examples("test")} & {e.id for e in b.examples("test")}
    assert [e.id for e in b.examples("test")] == [e.id for e in get_task("signs", n_test=40, test_seed=7).examples("test")]
    with pytest.raises(NanoseekError, match="bad options"):
        get_task("signs", no_such_option=1)
    with pytest.raises(NanoseekError, match="odd modulus"):
        SignsTask(modulus=10, n_test=8)  # even modulus: six digits never have a unique solution
    with pytest.raises(NanoseekError, match="notation"):
        SignsTask(notation="runes")


def test_level_one_runs_out_and_train_takes_what_there_is():
    task = SignsTask(levels=1, n_test=20, n_train=100_000)
    train = task.examples("train")
    assert 500 < len(train) < 3000  # 3-digit problems with one solution: a few thousand at most
    assert len({e.id for e in train}) == len(train)


# ------------------------------------------------------------------------------- rewards
@pytest.mark.parametrize("answer, score", [
    ("7+3-8+2", 1.0), (" 7 + 3 - 8 + 2 ", 1.0), ("7+3-8+2=4", 1.0), ("7+3-8+2=13", 0.0),  # claimed value wrong
    ("7+3+8+2", 0.0), ("7+3-8", 0.0), ("3+7-8+2", 0.0), ("7-3+8+2", 0.0), ("4", 0.0), ("", 0.0), (None, 0.0),
    ("7*3-8+2", 0.0),
])
def test_score_answer(answer, score):
    assert grader.score_answer(answer, P.digits, P.target, P.modulus) == score


def test_rewards_score_planted_completions_exactly(task):
    e = task.to_example(P)
    cols = {k: [v] * 6 for k, v in e.columns().items()}
    comps = [
        "7+3=1+8=0+2=2 backtrack 7+3=1+8=0-2=7 backtrack 7+3=1-8=2+2=4</think><answer>7+3-8+2</answer>",
        "7 plus 3 is 1 minus 8 is 2 plus 2 is 4</think><answer>7+3-8+2</answer>",
        "7+3=1 minus 8 is 2+2=4</think><answer>7+3-8+2</answer>",       # mixed: 2 symbol steps, 1 word step
        "7+3=1+8=0+2=2</think><answer>7+3+8+2</answer>",                # partial search, wrong answer
        "</think><answer>7+3-8+2</answer>",                             # direct answer, right
        "7+3=1+8=0+2=2 backtrack 7+3=1+8=0-2=7",                        # cut off while searching
    ]
    funcs = task.reward_funcs()
    assert funcs["accuracy"](comps, think_prefilled=True, **cols) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert funcs["format"](comps, think_prefilled=True) == format_reward(comps, think_prefilled=True) == [1.0] * 5 + [0.0]
    assert funcs["language"](comps) == [1.0, 0.0, pytest.approx(2 / 3), 1.0, 0.0, 1.0]  # target: symbols
    words = SignsTask(n_test=4, notation="words").reward_funcs()["language"]
    assert words(comps) == [0.0, 1.0, pytest.approx(1 / 3), 0.0, 0.0, 0.0]


def test_detectors_on_planted_reasoning(task):
    assert task.is_reflection("7+3=1+8=0+2=2 backtrack 7+3=1+8=0-2=7")
    assert task.is_reflection("7+3=1+8=8 wait, 1+8=0+2=2") and task.is_reflection("Wait. 1+8=0")
    assert not task.is_reflection("7+3=1-8=2+2=4") and not task.is_reflection("") and not task.is_reflection(None)
    assert not task.is_reflection("await 7+3=1")  # a marker is a word of its own
    assert grader.reflection_count("a backtrack b wait, c backtrack") == 3
    assert grader.notation_counts("7+3=1 minus 8 is 2+2=4 plus 1 is 5") == {"symbols": 2, "words": 2}
    assert task.notation_mix("7+3=1 minus 8 is 2+2=4") and not task.notation_mix("7 plus 3 is 1 minus 8 is 2")
    assert not task.notation_mix("7+3=1-8=2") and not task.notation_mix(None)
    assert grader.notation_share("no steps here", "symbols") == 0.0
    assert task.answers_equivalent("7+3-8+2", " 7 + 3 - 8 + 2 = 4") and not task.answers_equivalent("7+3-8+2", "7+3+8+2")
    assert not task.answers_equivalent(None, None)


def test_a_slip_is_caught_by_wait_and_the_step_redone():
    signs = ("+", "-", "+")
    assert attempt_text(P, signs, notation_stream("symbols", random.Random(0)), slip=(1, 5)) == "7+3=1-8=5 wait, 1-8=2+2=4"
    assert attempt_text(P, signs, notation_stream("words", random.Random(0)), slip=(1, 5)) == \
        "7 plus 3 is 1 minus 8 is 5 wait, 1 minus 8 is 2 plus 2 is 4"
    text = search_trace(P, P.patterns()[:3], "symbols", random.Random(0), slip=True)
    assert text.count(grader.WAIT) == 1 and text.count(grader.BACKTRACK) == 2 and text.endswith("=4")


# -------------------------------------------------------------------------------- corpus
def test_corpus_is_mostly_short_and_rarely_reflective(task):
    problems = task.corpus_problems(seed=11, n=2000)
    assert [p.style_seed for p in problems] == [p.style_seed for p in task.corpus_problems(seed=11, n=2000)]
    assert task.completion(P, think=False) == "</think><answer>7+3-8+2</answer>"
    texts = [task.completion(p, think=True) for p in problems]
    cols = {"digits": [list(p.digits) for p in problems], "target": [p.target for p in problems],
            "modulus": [p.modulus for p in problems]}
    assert grader.signs_accuracy(texts, think_prefilled=True, **cols) == [1.0] * len(texts)  # right answers only
    reasoning = [grader.reasoning_part(t) for t in texts]
    reflect = sum(grader.is_reflection(r) for r in reasoning) / len(texts)
    mixed = sum(grader.notation_mix(r) for r in reasoning) / len(texts)
    assert 0.07 < reflect < 0.13  # corpus_reflect = 0.1 (each reflect trace backtracks at least once)
    assert 0.17 < mixed < 0.23  # corpus_mixed = 0.2 (each mixed trace switches at its second step)
    words_only = sum(grader.notation_counts(r)["symbols"] == 0 for r in reasoning) / len(texts)
    assert 0.27 < words_only < 0.33  # corpus_words = 0.3
    assert max(len(r) for r in reasoning) <= task.corpus_max_chars + 40  # a reflect trace gives up when out of room
    waits = sum(grader.WAIT in r for r in reasoning)
    assert 0 < waits < 0.06 * len(texts)  # corpus_slip = 0.3 of the reflect traces


def test_no_reflection_in_the_corpus_when_asked_for_none():
    task = SignsTask(n_test=8, corpus_reflect=0.0, corpus_mixed=0.0, corpus_words=0.0)
    texts = [grader.reasoning_part(task.completion(p, True)) for p in task.corpus_problems(seed=3, n=300)]
    assert not any(grader.is_reflection(t) or grader.notation_mix(t) for t in texts)
    assert all(grader.notation_counts(t)["words"] == 0 for t in texts)


# -------------------------------------------------------------------------- measurements
def _sample(problem, sample, reasoning, correct, extracted, length=10):
    return GradedSample(problem, sample, f"p{problem}", "q", "a", "c", extracted, correct, True, bool(reasoning),
                        length, "stop", reasoning)


def test_behaviour_metrics_on_planted_samples(task):
    examples = [task.to_example(P), task.to_example(SignsProblem((1, 2, 4), 7))]  # levels 2 and 1
    results = [
        _sample(0, 0, "7+3=1+8=0+2=2 backtrack 7+3=1-8=2+2=4", True, "7+3-8+2", 30),
        _sample(0, 1, "7+3=1 plus 8 is 0+2=2", False, "7+3+8+2", 12),
        _sample(1, 0, "1+2=3+4=7", True, "1+2+4", 8),
        _sample(1, 1, "1+2=3 wait, 1+2=3+4=7", True, "1+2+4", 20),
    ]
    m = behaviour.behaviour_metrics(task, examples, results)
    assert m["reflection"] == 0.5 and m["reflection_n"] == 2
    assert m["reflection_accuracy"] == 1.0 and m["no_reflection_accuracy"] == 0.5
    assert m["mixed_notation"] == 0.25
    assert list(m["by_level"]) == ["1", "2"]
    one, two = m["by_level"]["1"], m["by_level"]["2"]
    assert one["n"] == 1 and one["pass@1"] == 1.0 and one["cons@2"] == 1.0 and one["mean_length"] == 14.0
    assert one["reflection"] == 0.5 and one["mixed_notation"] == 0.0
    assert two["pass@1"] == 0.5 and two["reflection"] == 0.5 and two["no_reflection_accuracy"] == 0.0
    assert two["mixed_notation"] == 0.5 and two["mean_length"] == 21.0
    rec = behaviour.metrics_record({**m, "cons@2": 0.5})
    assert rec["eval/reflection"] == 0.5 and rec["eval/level2/pass@1"] == 0.5 and rec["eval/cons@2"] == 0.5
    assert rec["eval/level1/mean_length"] == 14.0 and rec["eval/mixed_notation"] == 0.25
    full = {**summarize(results, 2), **m}
    assert eval_metrics_record(full)["eval/level1/reflection"] == 0.5


def test_no_reflection_at_all_leaves_its_accuracy_out(task):
    examples = [task.to_example(P)]
    m = behaviour.behaviour_metrics(task, examples, [_sample(0, 0, "7+3=1-8=2+2=4", True, "7+3-8+2")])
    assert m["reflection"] == 0.0 and m["reflection_accuracy"] is None and m["no_reflection_accuracy"] == 1.0
    assert "eval/reflection_accuracy" not in behaviour.metrics_record(m)


def test_tasks_without_detectors_or_levels_get_nothing_extra():
    chain = get_task("chain", n_test=4)
    examples = chain.examples("test")
    results = [_sample(i, 0, "+1=1", True, "1") for i in range(4)]
    assert behaviour.behaviour_metrics(chain, examples, results) == {} and not behaviour.has_detectors(chain)


def test_cons_at_k_votes_with_the_tasks_own_equivalence(task):
    """4+1+2-3 and 4-1-2+3 are two different answers with the same value: the math grader pools
    their votes (and outvotes the right answer's two), the task's own equivalence does not."""
    results = [_sample(0, 0, "", False, "4+1+2-3"), _sample(0, 1, "", False, "4-1-2+3"),
               _sample(0, 2, "", True, "4+1-2+3"), _sample(0, 3, "", True, " 4 + 1 - 2 + 3 ")]
    assert summarize(results, 1, equivalent=task.answers_equivalent)["cons@4"] == 1.0
    assert summarize(results, 1)["cons@4"] == 0.0  # the default vote: a 2-2 tie, the first cluster wins


def test_task_option_flags_and_results_headline():
    from nanoseek.cli.eval import task_options

    assert task_options(["test_seed=7", "notation=words", "corpus_reflect=0.2"]) == {
        "test_seed": 7, "notation": "words", "corpus_reflect": 0.2}
    with pytest.raises(NanoseekError, match="KEY=VALUE"):
        task_options(["test_seed"])
    one = {"signs": {"pass@1": 0.4, "cons@16": 0.5, "n": 200, "pass@k": {"1": 0.4}}}
    assert headline(one) == {"pass@1": 0.4, "cons@16": 0.5}
    assert headline({**one, "chain": {"pass@1": 1.0, "cons@4": 1.0}}) == {}


def test_nanoseek_eval_with_task_options_on_fresh_problems(tmp_path, monkeypatch):
    """``nanoseek eval --model RUN --task-option test_seed=7``: the run's task with its recorded
    options, on freshly generated problems; results.json has pass@1 and cons@k at the top level and
    the task's measurements."""
    import json

    import torch

    from nanoseek.cli.main import main
    from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
    from nanoseek.runs.checkpoint import save_checkpoint
    from nanoseek.runs.rundir import RunDir
    from nanoseek.tokenizer import build_tokenizer

    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=len(tok), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                           num_hidden_layers=2, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                           qk_nope_head_dim=8, v_head_dim=8, num_attention_heads=2, num_key_value_heads=2,
                           num_nextn_predict_layers=0, max_position_embeddings=256,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    run = RunDir.create(tmp_path / "run", {"task": {"name": "signs", "options": {"n_test": 8}}})
    save_checkpoint(run, 1, DeepseekV3ForCausalLM(cfg), tok, {})
    args = ["eval", "--model", str(run.path), "--limit", "4", "--samples", "2", "--max-tokens", "8"]
    assert main(args + ["--task-option", "test_seed=7", "--out", str(tmp_path / "fresh")]) == 0
    assert main(args + ["--out", str(tmp_path / "held")]) == 0
    fresh = json.loads((tmp_path / "fresh" / "results.json").read_text())
    held = json.loads((tmp_path / "held" / "results.json").read_text())
    assert fresh["pass@1"] == fresh["signs"]["pass@1"] and fresh["cons@2"] == fresh["signs"]["cons@2"]
    assert {"reflection", "mixed_notation", "by_level"} <= set(fresh["signs"])
    assert list(fresh["signs"]["by_level"]) == ["1", "2", "3", "4"]
    prompts = {w: [json.loads(x)["prompt"] for x in (tmp_path / w / "samples.jsonl").read_text().splitlines()]
               for w in ("fresh", "held")}
    want = [e.prompt for e in get_task("signs", n_test=8, test_seed=7).examples("test")[:4]]
    assert sorted(set(prompts["fresh"])) == sorted(want)
    assert not set(prompts["fresh"]) & set(prompts["held"]) and held["signs"]["n"] == 4
