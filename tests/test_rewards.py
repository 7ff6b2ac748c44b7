"""Reward functions: the TRL protocol, accuracy, format, language consistency, overlong, sums."""

import pytest

from nanoseek.rewards.grading import GradeCounts
from nanoseek.rewards.registry import combine_rewards
from nanoseek.rewards.rules import accuracy_reward, format_reward

GOOD = "<think>\n2+2 is 4.\nYes.\n</think>\n<answer>4</answer>"


def test_accuracy_protocol_one_value_per_completion_in_order():
    comps = ["<answer>4</answer>", "I don't know", "\\boxed{5}", "<think>x</think><answer>\\boxed{4}</answer>"]
    assert accuracy_reward(comps, answer=["4"] * 4) == [1.0, 0.0, 0.0, 1.0]


def test_accuracy_counts_missing_answers_and_never_raises():
    counts = GradeCounts()
    out = accuracy_reward(["", None, 12, "<think>never closes", "<answer>4</answer>"], answer=["4"] * 5, think_prefilled=False,
                          counts=counts)
    assert out == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert counts.snapshot()["no_answer"] == 4
    assert counts.snapshot()["calls"] == 1  # only the one answer was compared
    assert GradeCounts().snapshot()["no_answer"] == 0  # counts belong to the caller: a new one starts at zero


def test_accuracy_unparsable_reference_is_none():
    counts = GradeCounts()
    assert accuracy_reward(["<answer>4</answer>", "<answer>4</answer>"], answer=["", "\\frac{1}{2"], counts=counts) == [None, None]
    assert counts.snapshot()["bad_references"] == 2


def test_counts_travel_with_the_rewards_they_explain():
    fn = combine_rewards({"accuracy": 1.0, "format": 0.5})
    first, second = GradeCounts(), GradeCounts()
    assert fn([GOOD, "no answer"], answer=["4", "4"], counts=first) == [1.5, 0.0]
    assert fn.parts([GOOD], answer=["4"], counts=second) == {"accuracy": [1.0], "format": [1.0]}
    assert first.snapshot()["calls"] == 1 and first.snapshot()["no_answer"] == 1 and first.snapshot()["fast_path"] == 1
    assert second.snapshot()["calls"] == 1 and second.snapshot()["no_answer"] == 0
    assert accuracy_reward([GOOD], answer=["4"]) == [1.0]  # without counts nothing is kept, and nothing changes
    assert first.snapshot()["calls"] == 1 and second.snapshot()["calls"] == 1


def test_accuracy_think_prefilled():
    # The template opened <think>: an answer inside the (unclosed) reasoning does not count.
    assert accuracy_reward(["so \\boxed{4} maybe"], answer=["4"], think_prefilled=True) == [0.0]
    assert accuracy_reward(["so 4 </think> \\boxed{4}"], answer=["4"], think_prefilled=True) == [1.0]


def test_accuracy_prompt_instruction_never_rewarded():
    prompt = "What is 2+2? Please reason step by step, and put your final answer within \\boxed{}."
    # Only the completion is graded: the prompt's empty \boxed{} is not an answer.
    assert accuracy_reward(["I think it's four-ish"], answer=["4"], prompt=[prompt]) == [0.0]
    assert accuracy_reward(["put your final answer within \\boxed{}."], answer=["4"], prompt=[prompt]) == [0.0]


def test_accuracy_chat_format_completions():
    assert accuracy_reward([[{"role": "assistant", "content": "\\boxed{4}"}]], answer=["4"]) == [1.0]


@pytest.mark.parametrize(
    "completion, prefilled, expected",
    [
        (GOOD, False, 1.0),
        ("<think>a</think> <answer>4</answer><|im_end|>", False, 1.0),  # trailing EOS
        ("<think>a</think><answer>4</answer><｜end▁of▁sentence｜>\n", False, 1.0),
        ("<think>a</think><answer>4</answer></s>", False, 1.0),
        ("<think>a</think><answer>\n4\n</answer>\n\n", False, 1.0),  # multi-line answer, trailing blank
        ("reasoning\nmore</think>\n<answer>4</answer>", True, 1.0),  # prefilled <think>
        ("<think>a</think><answer>4</answer>", True, 0.0),  # prefilled + own <think>: nested
        ("reasoning</think><answer>4</answer>", False, 0.0),  # not prefilled: missing <think>
        ("<think>a</think><answer>4</answer> extra", False, 0.0),  # text after </answer>
        ("<think>a</think><answer>4</answer><answer>5</answer>", False, 0.0),  # repeated answer
        ("<think>a</think><think>b</think><answer>4</answer>", False, 0.0),  # repeated think
        ("<think>a<think>b</think></think><answer>4</answer>", False, 0.0),  # nested think
        ("<think>a</think><answer><answer>4</answer></answer>", False, 0.0),  # nested answer
        ("<think>a</think>", False, 0.0),  # missing answer
        ("<answer>4</answer>", False, 0.0),  # missing think
        ("<think>a</think><answer>  </answer>", False, 0.0),  # empty answer
        ("hello <think>a</think><answer>4</answer>", False, 0.0),  # text before <think>
        ("<think>a</think>so the answer: <answer>4</answer>", False, 0.0),  # text between blocks
    ],
)
def test_format_reward(completion, prefilled, expected):
    assert format_reward([completion], think_prefilled=prefilled) == [expected]


def test_combine_rewards_weighted_sum_and_none():
    fn = combine_rewards({"accuracy": 1.0, "format": 0.5})
    out = fn([GOOD, "<think>a</think><answer>5</answer>", "\\boxed{4}", GOOD], answer=["4", "4", "4", ""])
    assert out == [1.5, 0.5, 1.0, None]
    assert fn.parts([GOOD], answer=["4"]) == {"accuracy": [1.0], "format": [1.0]}


# ---------------------------------------------------------------- language consistency

def test_language_consistency_share_of_cot_words():
    from nanoseek.rewards.rules import language_consistency_reward as lang

    en = "<think>First add the two numbers, then check.</think><answer>4</answer>"
    mixed = "<think>First 我们 add the numbers</think><answer>4</answer>"  # 4 english words + 2 han chars
    zh = "<think>我们先把两个数相加</think><answer>4</answer>"
    assert lang([en, zh], language="en") == [1.0, 0.0]
    assert lang([mixed])[0] == pytest.approx(4 / 6)
    assert lang([zh, en], language=["zh", "zh"]) == [1.0, 0.0]
    # only the CoT counts (the answer part is ignored); math variables and LaTeX commands are not words
    assert lang(["<think>so x = \\frac{a}{b} holds</think> 答案是 4"]) == [1.0]
    assert lang(["reasoning without tags"], think_prefilled=True) == [1.0]
    assert lang(["<think></think><answer>4</answer>"]) == [0.0]
    with pytest.raises(ValueError, match="unknown language"):
        lang([en], language="klingon")


# ---------------------------------------------------------------- DAPO overlong penalty

def test_overlong_penalty_dapo_eq13():
    from nanoseek.rewards.rules import overlong_penalty

    ids = [[0] * n for n in (10, 16, 18, 20, 21)]
    out = overlong_penalty(["x"] * 5, completion_ids=ids, max_length=20, cache_length=4)
    assert out == [0.0, 0.0, -0.5, -1.0, -1.0]
    # DAPO's own defaults: L_max = 20480, L_cache = 4096
    assert overlong_penalty(["x"], completion_length=[16384 + 2048]) == [-0.5]
    with pytest.raises(ValueError):
        overlong_penalty(["x"])


def test_combine_rewards_with_options_and_task_rewards(data_dir):
    from nanoseek.errors import NanoseekError
    from nanoseek.tasks import get_task

    fn = combine_rewards({"accuracy": 1.0, "overlong": 1.0}, overlong={"max_length": 8, "cache_length": 4})
    assert fn(["<answer>4</answer>"] * 2, answer=["4", "4"], completion_ids=[[0] * 3, [0] * 7]) == [1.0, 0.25]
    task = get_task("countdown", data_dir=data_dir, num_train=1)
    cd = combine_rewards({"accuracy": 1.0, "format": 0.1}, task=task)  # the task's own accuracy (the verifier)
    good = "<think>ok</think><answer>93 + 30 - 100</answer>"
    assert cd([good], nums=[[30, 100, 93]], target=[23], answer=["23"]) == [pytest.approx(1.1)]
    with pytest.raises(NanoseekError, match="known rewards"):
        combine_rewards({"acuracy": 1.0})


# ---------------------------------------------------------------- Countdown verifier

def test_countdown_verifier_rules():
    from nanoseek.rewards.countdown import countdown_reward, evaluate, score_equation

    nums, target = [30, 100, 93], 23
    assert score_equation("93 + 30 - 100", nums, target) == 1.0
    assert score_equation("(93 + 30) - 100 = 23", nums, target) == 1.0
    assert score_equation("93 - 100 + 30", nums, target, exactly_once=True) == 1.0
    assert score_equation("93 + 30 - 100 + 30", nums, target) == 0.0  # 30 used twice
    assert score_equation("93 + 30 - 100 + 0", nums, target) == 0.0  # 0 is not on offer
    assert score_equation("93 - 70", nums, target) == 0.0  # 70 is not on offer
    # at most once (default) vs exactly once
    assert score_equation("30 - 7", [30, 7, 5], 23) == 1.0
    assert score_equation("30 - 7", [30, 7, 5], 23, exactly_once=True) == 0.0
    # TinyZero's partial score for a well-formed wrong equation; malformed ones get nothing
    assert score_equation("93 + 30 + 100", nums, target, format_score=0.1) == 0.1
    assert score_equation("93 + + ", nums, target, format_score=0.1) == 0.0
    # exact rationals: no float tolerance needed, none granted
    assert evaluate("8 / 3 * 3")[0] == 8
    assert score_equation("(100 - 93) / 3 * 3 + 16", [100, 93, 3, 3, 16], 23) == 1.0
    assert score_equation("1 / 3 + 1 / 3 + 1 / 3", [1, 3, 1, 3, 1, 3], 1) == 1.0
    # only + - * / ( ) and numbers: anything else is rejected, never evaluated
    for evil in ["__import__('os').system('true')", "2**100", "9e9", "30 % 7", "abs(-3)", "1 / 0", "(" * 200 + "1"]:
        assert score_equation(evil, [2, 100, 30, 7, 1, 0, 3, 9], 23) == 0.0
    comps = ["<think>..</think><answer>93 + 30 - 100</answer>", "no answer", "\\boxed{93 + 30 - 100}", None]
    assert countdown_reward(comps, nums=[nums] * 4, target=[target] * 4) == [1.0, 0.0, 1.0, 0.0]


def test_rewards_never_raise_on_garbage():
    import random

    from nanoseek.rewards.rules import language_consistency_reward

    pieces = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "}", "{", "\\frac", "12", "1,000", "-",
              "$", "####", "Final answer:", "**", "\\text{", "(C)", "%", "^\\circ", " ", "\n", "x", "=", "\\", "我们",
              "<|im_end|>", "\\fbox", "e+", "1/0", "\x00", "\ud800"]
    rng = random.Random(0)
    comps = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(150)]
    refs = [rng.choice(["12", "1000", "\\frac{1}{2}", "C", "0,1", ""]) for _ in comps]
    for pre in (False, True):
        for fn in (accuracy_reward, format_reward, language_consistency_reward):
            out = fn(comps, answer=refs, think_prefilled=pre)
            assert len(out) == len(comps)
            assert all(v is None or 0.0 <= v <= 1.0 for v in out)


# ---------------------------------------------------------------- failures are counted, never silent

class Unprintable:
    """A completion whose text cannot be taken: every reward's internal exception path."""

    def __str__(self):
        raise RuntimeError("no text")


def test_each_reward_counts_the_completions_it_failed_to_score():
    from nanoseek.rewards.countdown import countdown_reward
    from nanoseek.rewards.rules import language_consistency_reward

    comps = [GOOD, Unprintable(), Unprintable()]
    counts = GradeCounts()
    assert format_reward(comps, counts=counts) == [1.0, 0.0, 0.0]
    assert language_consistency_reward(comps, counts=counts) == [1.0, 0.0, 0.0]
    assert accuracy_reward(comps, answer="4", counts=counts) == [1.0, 0.0, 0.0]
    good_cd = "<think>.</think><answer>93 + 30 - 100</answer>"
    assert countdown_reward([good_cd, good_cd], nums=[[30, 100, 93], ["x"]], target=[23, 23],
                            counts=counts) == [1.0, 0.0]
    assert counts.reward_errors == {"format": 2, "language": 2, "accuracy": 2, "countdown": 1}
    snap = counts.snapshot()
    assert snap["reward_errors/format"] == 2 and snap["reward_errors/countdown"] == 1 and snap["errors"] == 2
    assert format_reward([Unprintable()]) == [0.0]  # without counts nothing is kept, and nothing raises


def test_combined_rewards_count_failures_under_their_names_in_the_sum():
    fn = combine_rewards({"accuracy": 1.0, "format": 0.5, "language_consistency": 0.0})
    counts = GradeCounts()
    parts = fn.parts([GOOD, Unprintable(), "<think>x</think><answer>5</answer>"], answer="4", counts=counts)
    assert parts == {"accuracy": [1.0, 0.0, 0.0], "format": [1.0, 0.0, 1.0], "language_consistency": [1.0, 0.0, 0.0]}
    assert counts.snapshot() == {
        "calls": 2, "fast_path": 2, "slow_path": 0, "cache_hits": 0, "timeouts": 0, "queue_timeouts": 0,
        "parse_failures": 0, "no_answer": 0, "bad_references": 0, "errors": 1, "worker_restarts": 0,
        "reward_errors/accuracy": 1, "reward_errors/format": 1, "reward_errors/language_consistency": 1}


def test_reward_errors_reach_the_step_metrics_and_raise_an_alarm():
    import io

    from nanoseek.rl.health import Alarms, rollout_metrics

    def group(n):
        return {"rewards": [1.0] * n, "parts": {"accuracy": [1.0] * n, "format": [1.0] * n}, "lengths": [5] * n,
                "truncated": [False] * n, "thinking": [True] * n, "zero_spread": False}

    sampled = [group(50), group(50)]  # 100 completions
    one = rollout_metrics(sampled, sampled, 1, {"calls": 100, "reward_errors/format": 1})
    assert (one["reward/errors/format"], one["reward/errors/accuracy"], one["completion/unscored"]) == (1, 0, 0.01)
    two = rollout_metrics(sampled, sampled, 1, {"calls": 100, "reward_errors/format": 2, "reward_errors/accuracy": 1})
    assert (two["reward/errors/format"], two["reward/errors/accuracy"], two["completion/unscored"]) == (2, 1, 0.02)
    out = io.StringIO()
    alarms = Alarms(stream=out)
    assert alarms.check({**one, "step": 1}) == []  # 1% is not more than 1%
    assert alarms.check({**two, "step": 2}) == ["reward_errors"]
    assert alarms.check({**two, "step": 3}) == []  # once per run
    assert "failed to score 2.0% of the completions" in out.getvalue() and "reward/errors/<name>" in out.getvalue()
