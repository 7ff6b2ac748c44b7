"""Countdown (TinyZero-style arithmetic puzzles): reach a target with + - * / over given numbers.

* ``test``: ``DATA/countdown/countdown_cd3_test.jsonl`` (256 three-number puzzles from d1; fields
  ``input`` = "30,100,93", ``output`` = "23").
* ``train``: generated, because the Hugging Face set TinyZero trains on is not available here. The
  rule is Stream-of-Search's (``kanishkg/stream-of-search`` ``src/countdown.py``, as documented in
  the data README): the target is uniform in ``[10, max_target]``, ``n`` operands (3 or 4) are
  uniform in ``[1, max_target - 1]``, and the draw is kept only when a depth-first search finds a
  solution through non-negative integer intermediates (``a+b``, ``a*b``, ``|a-b|``, exact ``a/b``);
  otherwise the operands are redrawn. Any number of puzzles (``num_train``) from a ``seed``; puzzles
  equal to a test puzzle are skipped, so making the train split reads the test file: when it cannot
  be read that is an error, unless the task option ``exclude_test = false`` turns the exclusion off
  on purpose (then nothing is read and the log says so).

Prompt: TinyZero's question text; the answer format comes from the template (R1-Zero tags or R1
``\\boxed{}``). Metadata ``nums`` (list[int]) and ``target`` (int) are the columns of the reward,
``nanoseek.rewards.countdown.countdown_reward``.
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path

from nanoseek import paths
from nanoseek.config import check_value
from nanoseek.errors import NanoseekError
from nanoseek.rewards.countdown import countdown_reward, solve
from nanoseek.rewards.rules import format_reward
from nanoseek.tasks.base import Example, Task
from nanoseek.tasks.jsonl import read_jsonl

TEST_FILE = "countdown_cd3_test.jsonl"
SOURCE = "https://github.com/dllm-reasoning/d1 (dataset/countdown_cd3_test.jsonl)"
log = logging.getLogger(__name__)


def countdown_prompt(nums: list[int], target: int) -> str:
    """TinyZero's question (``examples/data_preprocess/countdown.py``), without its tag instructions."""
    return (f"Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic "
            "operations (+, -, *, /) and each number can only be used once.")


def generate_puzzles(n: int, seed: int = 0, max_target: int = 100, num_operands: tuple[int, ...] = (3, 4),
                     exclude: set | None = None) -> list[tuple[list[int], int]]:
    """``n`` solvable puzzles ``(nums, target)`` by the Stream-of-Search rule (module docstring)."""
    rng = random.Random(seed)
    exclude = exclude or set()
    out: list[tuple[list[int], int]] = []
    while len(out) < n:
        target = rng.randint(10, max_target)
        for _ in range(1000):  # redraw the operands until solvable (almost always within a few draws)
            nums = [rng.randint(1, max_target - 1) for _ in range(rng.choice(num_operands))]
            if solve(nums, target) is not None:
                break
        else:
            continue
        key = (tuple(sorted(nums)), target)
        if key not in exclude:
            out.append((nums, target))
    return out


class CountdownTask(Task):
    """Countdown puzzles. ``answer`` is the target; grading is the equation verifier.

    Args:
        data_dir: data root (the test file is ``DATA/countdown/countdown_cd3_test.jsonl``).
        num_train: generated training puzzles (default 10,000, about 4 s to make; TinyZero trains on 327,680).
        seed: generator seed.
        max_target: largest target (Stream-of-Search: 100).
        num_operands: operand counts to draw from (Countdown-Tasks-3to4: 3 or 4).
        exactly_once: grade with "each number exactly once" instead of "at most once".
        format_score: TinyZero's partial score for a well-formed wrong equation (TinyZero: 0.1).
        exclude_test: skip generated puzzles equal to a test puzzle (default; needs the test file).
            ``False`` trains on whatever is generated, without reading the test file (logged).
    """

    name = "countdown"
    splits = ("train", "test")
    answer_type = "text"

    def __init__(self, data_dir: str | Path | None = None, num_train: int = 10_000, seed: int = 0,
                 max_target: int = 100, num_operands: tuple[int, ...] = (3, 4), exactly_once: bool = False,
                 format_score: float = 0.0, exclude_test: bool = True) -> None:
        self.root = paths.data_dir(data_dir) / "countdown"
        check_value("countdown task option num_train", num_train, ">= 1")
        check_value("countdown task option max_target", max_target, ">= 10")  # targets are drawn from [10, max_target]
        check_value("countdown task option format_score", format_score, "[0, 1]")
        if not isinstance(num_operands, (list, tuple)) or not num_operands:
            raise NanoseekError(f"countdown task option num_operands must be a non-empty list, got {num_operands!r}")
        for k in num_operands:
            check_value("countdown task option num_operands (each)", k, ">= 2")
        self.num_train, self.seed, self.max_target = int(num_train), int(seed), int(max_target)
        self.num_operands = tuple(num_operands)
        self.exactly_once, self.format_score = bool(exactly_once), float(format_score)
        if not isinstance(exclude_test, bool):
            raise NanoseekError(f"countdown task option exclude_test must be true or false, got {exclude_test!r}")
        self.exclude_test = exclude_test
        self._cache: dict[str, list[Example]] = {}

    def _test(self) -> list[Example]:
        path = self.root / TEST_FILE
        if not path.is_file():
            raise NanoseekError(f"Countdown test data not found: expected {path}; it is published at {SOURCE} "
                                "(or set --data-dir / NANOSEEK_DATA_DIR)")
        rows = []
        for lineno, row in read_jsonl(path):
            try:
                nums, target = [int(x) for x in str(row["input"]).split(",")], int(row["output"])
            except (KeyError, ValueError):
                raise NanoseekError(f"{path}:{lineno}: expected \"input\" (comma-separated integers) and "
                                    "\"output\" (an integer)") from None
            rows.append(self._example(f"countdown/test/{lineno}", nums, target))
        return rows

    @staticmethod
    def _example(id: str, nums: list[int], target: int) -> Example:
        return Example(id, countdown_prompt(nums, target), str(target), {"nums": nums, "target": target})

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        if split not in self._cache:
            if split == "test":
                self._cache[split] = self._test()
            else:
                puzzles = generate_puzzles(self.num_train, self.seed, self.max_target, self.num_operands,
                                           self._test_keys())
                self._cache[split] = [self._example(f"countdown/train/{self.seed}/{i}", n, t)
                                      for i, (n, t) in enumerate(puzzles)]
        return self._cache[split]

    def _test_keys(self) -> set:
        """The test puzzles as ``(sorted nums, target)`` keys, for the train split to exclude."""
        if not self.exclude_test:
            log.warning("countdown: exclude_test = false, so generated train puzzles may equal test puzzles")
            return set()
        try:
            test = self.examples("test")
        except (NanoseekError, OSError, UnicodeDecodeError) as e:
            raise NanoseekError(f"countdown: the train split excludes the test puzzles, but the test split cannot be "
                                f"read ({e}); provide it, or set the task option exclude_test = false") from e
        return {(tuple(sorted(e.metadata["nums"])), e.metadata["target"]) for e in test}

    def reward_funcs(self):
        """``accuracy``: the equation verifier with this task's number rule and partial score;
        ``format``: R1's format reward."""
        acc = functools.partial(countdown_reward, exactly_once=self.exactly_once, format_score=self.format_score)
        acc.__name__ = "countdown_accuracy"  # type: ignore[attr-defined]
        return {"accuracy": acc, "format": format_reward}
