"""A built-in task where thinking longer pays for a real reason: find the signs by searching.

A problem reads ``Put + or - in 7 ? 3 ? 8 ? 2 to make 4 mod 9.``; the answer is the expression
``7+3-8+2``. The digits (1 to 8) keep their order, the value is taken modulo 9 (so every running
value is one digit, as in the chain task), and every problem has exactly one solution among the
``2^(digits-1)`` sign patterns. (Modulo 10 would not do: flipping a sign changes the value by an
even amount, so half the values are unreachable and six digits never have a unique solution.)
Answered directly, a small model can only guess (1 in 4 at level 1, 1 in 32 at level 4); written out as a depth-first search over the signs, with a ``backtrack`` after
each attempt that misses the target, it finds the solution, and the more attempts it can afford the
more often. This is Countdown reduced to one operation pair, with the search traces of
Stream-of-Search (Gandhi et al. 2024: models trained on search traces beat models trained on optimal
paths).

Difficulty levels: level ``L`` has ``L + 2`` digits (``levels`` = 4: 3 to 6 digits). Every example
carries its ``level`` in its metadata, and the splits hold the levels in turn (level 1, 2, 3, 4, 1,
...), so the first ``limit`` problems stay balanced.

Splits:
- ``test``: ``n_test`` problems from ``test_seed`` (``--task-option test_seed=7`` gives fresh ones);
- ``train``: up to ``n_train`` RL prompts from ``train_seed``, none of them a test problem (a level
  with fewer distinct problems than its share, level 1, gives all it has);
- the pretraining corpus (``corpus_problems`` + ``completion``) excludes the test problems too.

The corpus (what the base model knows before RL) mostly shows short or partial reasoning and only
rarely reflection, in two notations (see ``nanoseek.rewards.signs``); each thinking document is
one of:
- ``short``: the solving attempt alone (an "optimal path": the signs come from nowhere);
- ``partial``: the first attempt of the search; when it misses, the think block closes anyway and
  the answer is given without having been found;
- ``reflect`` (rare, ``corpus_reflect``): the search itself, ``attempt backtrack attempt ...`` up to
  the solution (or until ``corpus_max_chars``), sometimes with a slipped step caught by ``wait,``.
Each is written in symbols, in words, or mixed step by step (``corpus_words``, ``corpus_mixed``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from nanoseek.errors import NanoseekError
from nanoseek.rewards import signs as grader
from nanoseek.rewards.rules import format_reward
from nanoseek.tasks.base import Example, Task
from nanoseek.tokenizer import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE

MAX_LEVELS = 6
STALL = 2000  # consecutive repeated draws after which a level counts as exhausted
MAX_TRIES = 5000  # digit draws for one problem before the settings are declared unworkable


@dataclass(frozen=True)
class SignsProblem:
    """Digits ``d0 .. dn`` (in order) and a ``target``: put ``+``/``-`` between them so that the
    value is ``target`` modulo ``modulus``. ``style_seed`` picks how a corpus document shows it."""

    digits: tuple[int, ...]
    target: int
    modulus: int = 9
    style_seed: int = field(default=0, compare=False)

    @property
    def level(self) -> int:
        return len(self.digits) - 2

    @property
    def key(self) -> str:
        """The problem's identity (its example id): ``"7392:3"``."""
        return "".join(map(str, self.digits)) + f":{self.target}"

    @property
    def question(self) -> str:
        return f"Put + or - in {' ? '.join(map(str, self.digits))} to make {self.target} mod {self.modulus}."

    def patterns(self) -> list[tuple[str, ...]]:
        """Every sign pattern, in the depth-first order of the search (``+`` before ``-``)."""
        return list(itertools.product("+-", repeat=len(self.digits) - 1))

    def running(self, signs: Sequence[str]) -> list[int]:
        """The running values after each step of ``signs``, modulo ``modulus``."""
        acc, out = self.digits[0] % self.modulus, []
        for s, d in zip(signs, self.digits[1:]):
            acc = (acc + d if s == "+" else acc - d) % self.modulus
            out.append(acc)
        return out

    def value(self, signs: Sequence[str]) -> int:
        return self.running(signs)[-1]

    def solutions(self) -> list[tuple[str, ...]]:
        return [s for s in self.patterns() if self.value(s) == self.target]

    def expression(self, signs: Sequence[str]) -> str:
        return str(self.digits[0]) + "".join(f"{s}{d}" for s, d in zip(signs, self.digits[1:]))

    @property
    def answer(self) -> str:
        """The solution's expression (the first in search order; the task's problems have one)."""
        return self.expression(self.solutions()[0])


# ----------------------------------------------------------------------------- trace writing
def step_text(prev: int, op: str, digit: int, value: int, notation: str, restated: bool = False) -> str:
    """One reasoning step: ``+3=1`` (symbols) or `` plus 3 is 1`` (words); ``restated`` repeats the
    running value it starts from (``1-8=2``, ``1 minus 8 is 2``), as a re-check after ``wait,`` does."""
    if notation == "symbols":
        return f"{prev if restated else ''}{op}{digit}={value}"
    words = f"{grader.OP_WORDS[op]} {digit} is {value}"
    return f"{prev} {words}" if restated else f" {words}"


def notation_stream(style: str, rng: random.Random, switch: float = 0.35) -> Iterator[str]:
    """The notation of each successive step: all ``symbols``, all ``words``, or (``mixed``) a random
    start that switches at the second step and then at each step with probability ``switch``."""
    if style in grader.NOTATIONS:
        while True:
            yield style
    current = rng.choice(grader.NOTATIONS)
    for i in itertools.count():
        if i == 1 or (i > 1 and rng.random() < switch):
            current = "words" if current == "symbols" else "symbols"
        yield current


def attempt_text(p: SignsProblem, signs: Sequence[str], notes: Iterator[str], slip: tuple[int, int] | None = None) -> str:
    """One attempt: the first digit, then each step's running value (``7+3=1-8=2+2=4``). ``slip =
    (step, wrong value)`` writes that step wrong, then ``wait,`` and the step again, right."""
    values = p.running(signs)
    prev, parts = p.digits[0] % p.modulus, [str(p.digits[0])]
    for i, (s, d, v) in enumerate(zip(signs, p.digits[1:], values)):
        notation = next(notes)
        if slip is not None and slip[0] == i:
            parts.append(step_text(prev, s, d, slip[1], notation))
            parts.append(f" {grader.WAIT} " + step_text(prev, s, d, v, notation, restated=True))
        else:
            parts.append(step_text(prev, s, d, v, notation))
        prev = v
    return "".join(parts)


def search_trace(p: SignsProblem, attempts: Sequence[Sequence[str]], style: str, rng: random.Random,
                 slip: bool = False) -> str:
    """The attempts joined by `` backtrack ``, in notation ``style``; ``slip`` puts one caught slip
    into a random step of a random attempt."""
    notes = notation_stream(style, rng)
    where = None
    if slip and attempts:
        a, i = rng.randrange(len(attempts)), rng.randrange(len(p.digits) - 1)
        right = p.running(attempts[a])[i]
        where = (a, (i, (right + rng.randrange(1, p.modulus)) % p.modulus))
    texts = [attempt_text(p, s, notes, where[1] if where and where[0] == k else None) for k, s in enumerate(attempts)]
    return f" {grader.BACKTRACK} ".join(texts)


def answer_text(p: SignsProblem, reasoning: str) -> str:
    """A completion after the template's ``<think>``: ``reasoning</think><answer>7+3-9+2</answer>``."""
    return f"{reasoning}{THINK_CLOSE}{ANSWER_OPEN}{p.answer}{ANSWER_CLOSE}"


# ----------------------------------------------------------------------------------- the task
class SignsTask(Task):
    """Sign-search puzzles in difficulty levels (see the module docstring).

    Args:
        levels: difficulty levels 1..``levels`` (level L has L + 2 digits; at most 6).
        modulus: the modulus (9: one-digit running values). max_digit: digits are 1..max_digit.
        n_test, test_seed: size and seed of the held-out split (the levels in turn).
        n_train, train_seed: size (at most) and seed of the RL prompts.
        notation: the target notation, "symbols" or "words": the one the ``language`` reward
            (notation consistency) asks for and the readable ``worked`` traces (R1's cold start) use.
        corpus_short, corpus_reflect: shares of thinking corpus documents that are ``short`` and
            ``reflect`` (the rest are ``partial``). corpus_words, corpus_mixed: shares written in
            words and mixed (the rest in symbols). corpus_slip: share of ``reflect`` documents with a
            slip caught by ``wait,``. corpus_max_chars: longest ``reflect`` reasoning (it gives up after).
    """

    name = "signs"
    splits = ("train", "test")
    answer_type = "text"

    def __init__(self, levels: int = 4, modulus: int = 9, max_digit: int = 8, n_test: int = 200,
                 test_seed: int = 1000, n_train: int = 8000, train_seed: int = 2000, notation: str = "symbols",
                 corpus_short: float = 0.45, corpus_reflect: float = 0.1, corpus_words: float = 0.3,
                 corpus_mixed: float = 0.2, corpus_slip: float = 0.3, corpus_max_chars: int = 200):
        self._check(levels, modulus, max_digit, n_test, n_train, notation,
                    (corpus_short, corpus_reflect, corpus_words, corpus_mixed, corpus_slip), corpus_max_chars)
        self.levels, self.modulus, self.max_digit, self.notation = int(levels), int(modulus), int(max_digit), notation
        self.n_test, self.test_seed, self.n_train, self.train_seed = int(n_test), int(test_seed), int(n_train), int(train_seed)
        self.corpus_short, self.corpus_reflect = float(corpus_short), float(corpus_reflect)
        self.corpus_words, self.corpus_mixed = float(corpus_words), float(corpus_mixed)
        self.corpus_slip, self.corpus_max_chars = float(corpus_slip), int(corpus_max_chars)
        per_level = [self._share(self.n_test, lv) for lv in self.level_range()]
        test = [self._draw(lv, self.test_seed, k, set()) for lv, k in zip(self.level_range(), per_level)]
        for lv, got, want in zip(self.level_range(), test, per_level):
            if len(got) < want:
                raise NanoseekError(f"search task: level {lv} has only {len(got)} distinct problems, "
                                    f"n_test = {self.n_test} asks for {want}; lower n_test")
        self._test = interleave(test)
        self._test_keys = {p.key for p in self._test}
        self._train: list[SignsProblem] | None = None

    @staticmethod
    def _check(levels, modulus, max_digit, n_test, n_train, notation, shares, max_chars) -> None:
        if not 1 <= int(levels) <= MAX_LEVELS:
            raise NanoseekError(f"search task: levels must be in [1, {MAX_LEVELS}], got {levels}")
        if not 2 <= int(modulus) <= 10 or not 1 <= int(max_digit) <= 9:
            raise NanoseekError(f"search task: need modulus in [2, 10] and max_digit in [1, 9], got {modulus}, {max_digit}")
        if int(n_test) < 1 or int(n_train) < 0:
            raise NanoseekError(f"search task: need n_test >= 1 and n_train >= 0, got {n_test}, {n_train}")
        if notation not in grader.NOTATIONS:
            raise NanoseekError(f"search task: notation must be one of {', '.join(grader.NOTATIONS)}, got {notation!r}")
        short, reflect, words, mixed, slip = (float(x) for x in shares)
        if not all(0.0 <= x <= 1.0 for x in shares) or short + reflect > 1.0 or words + mixed > 1.0:
            raise NanoseekError("search task: corpus shares must lie in [0, 1], with corpus_short + corpus_reflect "
                                "<= 1 and corpus_words + corpus_mixed <= 1")
        if int(max_chars) < 1:
            raise NanoseekError(f"search task: corpus_max_chars must be >= 1, got {max_chars}")

    # -- problems -----------------------------------------------------------------------------
    def level_range(self) -> range:
        return range(1, self.levels + 1)

    def _share(self, n: int, level: int) -> int:
        """Level ``level``'s part of ``n`` problems (the first levels take the remainder)."""
        return n // self.levels + (1 if level <= n % self.levels else 0)

    def random_problem(self, rng: random.Random, level: int) -> SignsProblem:
        """A problem of ``level`` with exactly one solution (digits redrawn until some target has one).
        Raises ``NanoseekError`` when the settings hardly ever allow one (an even modulus halves the
        reachable values: flipping a sign changes the value by an even amount)."""
        for _ in range(MAX_TRIES):
            digits = tuple(rng.randint(1, self.max_digit) for _ in range(level + 2))
            unique = [v for v, c in enumerate(reach_counts(digits, self.modulus)) if c == 1]
            if unique:
                return SignsProblem(digits, rng.choice(unique), self.modulus)
        raise NanoseekError(f"search task: level {level} with modulus {self.modulus} and digits 1..{self.max_digit} "
                            f"gives no problem with a unique solution in {MAX_TRIES} draws; use fewer levels or "
                            "an odd modulus (the default is 9)")

    def _draw(self, level: int, seed: int, n: int, exclude: set[str]) -> list[SignsProblem]:
        """Up to ``n`` distinct problems of ``level`` from ``seed`` (fewer when the level runs out)."""
        rng = random.Random(seed * 1009 + level)
        out, seen, misses = [], set(exclude), 0
        while len(out) < n and misses < STALL:
            p = self.random_problem(rng, level)
            if p.key in seen:
                misses += 1
                continue
            misses = 0
            seen.add(p.key)
            out.append(p)
        return out

    def train_problems(self) -> list[SignsProblem]:
        """The RL prompts: the levels in turn, none of them a test problem (built once)."""
        if self._train is None:
            parts = [self._draw(lv, self.train_seed, self._share(self.n_train, lv), self._test_keys)
                     for lv in self.level_range()]
            self._train = interleave(parts)
        return self._train

    # -- Task API -----------------------------------------------------------------------------
    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        problems = self._test if split == "test" else self.train_problems()
        return [self.to_example(p) for p in problems]

    def to_example(self, p: SignsProblem) -> Example:
        return Example(id=p.key, prompt=p.question, answer=p.answer,
                       metadata={"digits": list(p.digits), "target": p.target, "modulus": p.modulus,
                                 "level": p.level, "worked": self.worked(p)})

    def reward_funcs(self):
        """``accuracy``: the exact verifier; ``format``: R1's format reward; ``language``: the share of
        reasoning steps in the target notation (R1's language consistency, sec. 2.3.2)."""
        language = functools.partial(grader.notation_consistency_reward, notation=self.notation)
        language.__name__ = "notation_consistency"  # type: ignore[attr-defined]
        return {"accuracy": grader.signs_accuracy, "format": format_reward, "language": language}

    # -- detectors (read by nanoseek.evaluation.behaviour) ------------------------------------
    @staticmethod
    def is_reflection(text: str | None) -> bool:
        """Whether reasoning ``text`` re-checks (``wait,``) or backtracks (``backtrack``)."""
        return grader.is_reflection(text)

    @staticmethod
    def notation_mix(text: str | None) -> bool:
        """Whether reasoning ``text`` writes steps in both notations."""
        return grader.notation_mix(text)

    @staticmethod
    def answers_equivalent(a: str | None, b: str | None) -> bool:
        """Answer equivalence for majority voting: the same expression."""
        return grader.same_answer(a, b)

    # -- traces and the pretraining corpus ----------------------------------------------------
    def worked(self, p: SignsProblem) -> str:
        """The readable trace: the whole search up to the solution in the target notation, no slips."""
        pats = p.patterns()
        return search_trace(p, pats[: pats.index(p.solutions()[0]) + 1], self.notation, random.Random(0))

    def corpus_problems(self, seed: int, n: int) -> list[SignsProblem]:
        """``n`` problems for the pretraining corpus (levels uniform, no test problem; may repeat
        train), each with its own ``style_seed``."""
        rng = random.Random(seed)
        out = []
        while len(out) < n:
            p = self.random_problem(rng, rng.choice(self.level_range()))
            if p.key not in self._test_keys:
                out.append(dataclasses.replace(p, style_seed=rng.randrange(2**31)))
        return out

    def corpus_style(self, rng: random.Random) -> tuple[str, str, bool]:
        """``(kind, notation, slip)`` of one thinking corpus document (see the module docstring)."""
        r = rng.random()
        kind = "reflect" if r < self.corpus_reflect else "short" if r < self.corpus_reflect + self.corpus_short else "partial"
        r = rng.random()
        notation = "mixed" if r < self.corpus_mixed else "words" if r < self.corpus_mixed + self.corpus_words else "symbols"
        return kind, notation, kind == "reflect" and rng.random() < self.corpus_slip

    def completion(self, p: SignsProblem, think: bool) -> str:
        """A corpus completion after the template's ``<think>``: a direct answer (``think`` False) or
        a trace in the style ``p.style_seed`` draws (``corpus_style``), then the answer."""
        if not think:
            return answer_text(p, "")
        rng = random.Random(p.style_seed)
        kind, notation, slip = self.corpus_style(rng)
        pats, solution = p.patterns(), p.solutions()[0]
        if kind == "short":
            attempts = [solution]
        elif kind == "partial":
            attempts = [pats[0]]
        else:
            attempts = pats[: pats.index(solution) + 1]
        text = search_trace(p, attempts, notation, rng, slip)
        while kind == "reflect" and len(text) > self.corpus_max_chars and len(attempts) > 1:
            attempts = attempts[:-1]  # out of room: give up after the attempts that fit
            text = search_trace(p, attempts, notation, random.Random(p.style_seed + 1), slip)
        return answer_text(p, text)


def reach_counts(digits: Sequence[int], modulus: int) -> list[int]:
    """``counts[v]``: how many sign patterns give the value ``v`` (modulo ``modulus``), built step by step."""
    m = modulus
    counts = [0] * m
    counts[digits[0] % m] = 1
    for d in digits[1:]:
        counts = [counts[(v - d) % m] + counts[(v + d) % m] for v in range(m)]
    return counts


def interleave(parts: Sequence[Sequence[SignsProblem]]) -> list[SignsProblem]:
    """The items of ``parts`` taken in turn (one of each, then the next of each, ...)."""
    return [x for group in itertools.zip_longest(*parts) for x in group if x is not None]
