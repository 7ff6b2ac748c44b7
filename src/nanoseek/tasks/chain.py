"""The built-in task of the CPU default recipe: chains of additions and subtractions modulo 10.

A problem reads ``What is 7+3-9+2+5 mod 10?``; the answer is one digit. Written out step by step
as running values (``7 0 1 3 8``) each step is a single-digit lookup, which a small model learns
reliably; answered directly, the model must compose every step inside one forward pass, which a
small model cannot do much better than chance. The pretraining corpus mixes both styles, so the
base model sometimes thinks and sometimes guesses; RL with a rule-based accuracy reward has
something to discover: that thinking pays. This is the R1-Zero effect (DeepSeek-R1 sec. 2.2.4) in
a form that fits a laptop CPU.

Splits:
- ``test``: a fixed held-out set (``n_test`` problems from ``test_seed``), never used for training;
- ``train``: RL prompts, generated on demand from a seed, excluding every test problem;
- the pretraining corpus (``corpus_documents``) is drawn like ``train`` from its own seed and
  excludes the test problems too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from nanoseek.config import check_value
from nanoseek.errors import NanoseekError
from nanoseek.tasks.base import Example, Task
from nanoseek.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE


@dataclass(frozen=True)
class ChainProblem:
    """Digits ``d0 .. dn`` joined by operators ``ops[i]`` in ``{'+', '-'}``, evaluated mod ``modulus``."""

    digits: tuple[int, ...]
    ops: tuple[str, ...]
    modulus: int = 10

    @property
    def expression(self) -> str:
        parts = [str(self.digits[0])]
        for op, d in zip(self.ops, self.digits[1:]):
            parts.append(f" {op} {d}")
        return "".join(parts)

    @property
    def question(self) -> str:
        return f"What is {self.expression} mod {self.modulus}?"

    def steps(self) -> list[tuple[int, str, int, int]]:
        """The worked steps ``(running, op, digit, new_running)``, all reduced mod ``modulus``."""
        out = []
        acc = self.digits[0] % self.modulus
        for op, d in zip(self.ops, self.digits[1:]):
            new = (acc + d) % self.modulus if op == "+" else (acc - d) % self.modulus
            out.append((acc, op, d, new))
            acc = new
        return out

    @property
    def answer(self) -> int:
        steps = self.steps()
        return steps[-1][3] if steps else self.digits[0] % self.modulus

    def worked(self) -> str:
        """Reasoning text: each term followed by the running value, ``+7=7+3=0-9=1`` for ``7 + 3 - 9``.

        Every step is four tokens (operator, digit, ``=``, running value) and every term of the
        question is four tokens too (`` + 3``), so each copied term sits at the same distance from
        its source as every other; and each running value depends only on the two tokens before it
        and the previous value. A small model with relative positions (RoPE) learns both quickly.
        """
        values = [self.digits[0] % self.modulus] + [c for _, _, _, c in self.steps()]
        ops = ("+",) + self.ops
        return "".join(f"{op}{d}={v}" for op, d, v in zip(ops, self.digits, values))


class ChainTask(Task):
    """Modular addition chains (see module docstring). Answers are integers in ``[0, modulus)``.

    Args:
        min_terms, max_terms: number of digits in a problem (inclusive range).
        modulus: the modulus (10: one-digit answers).
        operators: the operators to draw from (``"+"``, ``"+-"``). The CPU recipe uses ``"+"``:
            with a constant operator between digits a small RoPE model learns to read the k-th
            term by position within a few dozen steps; with random ``+``/``-`` tokens interleaved
            it takes many hundreds.
        n_test: size of the held-out test split.
        test_seed: seed of the held-out split (fixed so every run evaluates the same problems).
        train_seed: seed of the RL prompt stream.
        n_train: size of the train split (capped at the number of distinct non-test problems).
    """

    name = "chain"
    splits = ("train", "test")
    answer_type = "number"

    def __init__(self, min_terms: int = 8, max_terms: int = 8, modulus: int = 10, n_test: int = 200,
                 test_seed: int = 1000, train_seed: int = 2000, n_train: int = 20000, operators: str = "+-"):
        if not 2 <= min_terms <= max_terms:
            raise NanoseekError(f"chain task needs 2 <= min_terms <= max_terms, got {min_terms}, {max_terms}")
        if not 2 <= modulus <= 10:
            raise NanoseekError(f"chain task modulus must be in [2, 10] (one-digit operands), got {modulus}")
        check_value("chain task option n_test", n_test, ">= 1")
        check_value("chain task option n_train", n_train, ">= 1")
        if not operators or set(operators) - {"+", "-"}:
            raise NanoseekError(f"chain task operators must be a non-empty string of '+' and '-', got {operators!r}")
        self.min_terms, self.max_terms, self.modulus, self.operators = min_terms, max_terms, modulus, operators
        self.n_test, self.test_seed, self.train_seed, self.n_train = n_test, test_seed, train_seed, n_train
        if n_test > self.distinct_problems():
            raise NanoseekError(f"chain task: n_test = {n_test} distinct problems asked for, but {min_terms}-{max_terms} "
                                f"terms with operators {operators!r} allow only {self.distinct_problems()}")
        self._test = self._draw(random.Random(test_seed), n_test, exclude=set())
        self._test_keys = {p.expression for p in self._test}

    # -- problems -----------------------------------------------------------------------------
    def random_problem(self, rng: random.Random) -> ChainProblem:
        n = rng.randint(self.min_terms, self.max_terms)
        digits = tuple(rng.randrange(10) for _ in range(n))
        ops = tuple(rng.choice(self.operators) for _ in range(n - 1))
        return ChainProblem(digits, ops, self.modulus)

    def distinct_problems(self) -> int:
        """How many distinct problems the settings allow (digits and operator choices)."""
        k = len(set(self.operators))
        return sum(10 ** n * k ** (n - 1) for n in range(self.min_terms, self.max_terms + 1))

    def _draw(self, rng: random.Random, n: int, exclude: set[str]) -> list[ChainProblem]:
        available = self.distinct_problems() - len(exclude)
        if n > available:
            raise NanoseekError(f"chain task: {n} distinct problems asked for, but {self.min_terms}-{self.max_terms} "
                             f"terms with operators {self.operators!r} allow only {available} (after excluding "
                             f"{len(exclude)} held-out ones); lower n_train/n_test or allow more terms")
        out, seen = [], set(exclude)
        while len(out) < n:
            p = self.random_problem(rng)
            if p.expression in seen:
                continue
            seen.add(p.expression)
            out.append(p)
        return out

    def sample_problems(self, seed: int, n: int) -> list[ChainProblem]:
        """``n`` distinct problems from ``seed``, none of them in the held-out test split."""
        return self._draw(random.Random(seed), n, exclude=self._test_keys)

    # -- Task API -----------------------------------------------------------------------------
    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        if split == "test":
            problems = self._test
        else:  # at most n_train: all the remaining distinct problems when there are fewer
            problems = self.sample_problems(self.train_seed, min(self.n_train, self.distinct_problems() - self.n_test))
        return [self.to_example(p) for p in problems]

    @staticmethod
    def to_example(p: ChainProblem) -> Example:
        return Example(id=p.expression, prompt=p.question, answer=str(p.answer),
                       metadata={"worked": p.worked(), "terms": len(p.digits)})

    # -- pretraining corpus -------------------------------------------------------------------
    @staticmethod
    def completion(p: ChainProblem, think: bool) -> str:
        """The completion text after the template's ``<think>``: worked steps or a direct answer."""
        reasoning = p.worked() if think else ""
        return f"{reasoning}{THINK_CLOSE}{ANSWER_OPEN}{p.answer}{ANSWER_CLOSE}"

    def corpus_problems(self, seed: int, n: int) -> list[ChainProblem]:
        """Problems for the pretraining corpus (disjoint from the test split; may repeat train)."""
        rng = random.Random(seed)
        out = []
        while len(out) < n:
            p = self.random_problem(rng)
            if p.expression not in self._test_keys:
                out.append(p)
        return out
