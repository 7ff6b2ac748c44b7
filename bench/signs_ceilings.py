"""Ceilings of the search task, computed from its definition (no model is trained or sampled).

For each difficulty level of the held-out split (``nanoseek.tasks.signs``), under a completion
budget of ``--budget`` tokens (one token per character, one per tag, as nanoseek's byte tokenizer
counts them):

- ``guess``: pass@1 of a direct answer with random signs (1 / 2^(digits-1));
- ``imitator``: pass@1 of a perfect imitator of the pretraining corpus, a base model that never
  slips: half the time a direct guess, else ``short`` (a guessed attempt), ``partial`` (the
  all-plus attempt, then a guess) or ``reflect`` (the search, up to ``corpus_max_chars``);
- ``search``: pass@1 of a model that always searches in depth-first order and gives up with a guess
  among the untried patterns when the next attempt would not fit the budget;
- ``length``: that model's mean completion length in tokens; ``attempts``: attempts it needs.

The gap between ``imitator`` and ``search`` is the most RL can gain by making the model search;
``search`` at the last level is the ceiling of the hardest level at this budget.

    python bench/signs_ceilings.py [--budget 128] [--notation symbols] [--n-test 200] [--reflect 0.1]
"""

from __future__ import annotations

import argparse
import random

from nanoseek.tasks.signs import SignsProblem, SignsTask, search_trace


def answer_tokens(p: SignsProblem) -> int:
    return 3 + len(p.answer) + 1  # </think> <answer> expression </answer> EOS


def searcher(p: SignsProblem, budget: int, notation: str) -> tuple[float, int, int]:
    """(expected pass@1, length, attempts needed) of the always-search model on ``p``."""
    pats = p.patterns()
    need = pats.index(p.solutions()[0]) + 1
    for tried in range(1, len(pats) + 1):
        text = search_trace(p, pats[:tried], notation, random.Random(0))
        nxt = search_trace(p, pats[:tried + 1], notation, random.Random(0)) if tried < len(pats) else None
        if tried == need:  # found it
            return 1.0, len(text) + answer_tokens(p), need
        if nxt is None or len(nxt) + answer_tokens(p) > budget:  # no room for one more: guess the rest
            if len(text) + answer_tokens(p) > budget:
                return 0.0, budget, need  # not even this attempt fits: cut off
            return 1.0 / (len(pats) - tried), len(text) + answer_tokens(p), need
    raise AssertionError("the solution is one of the patterns")


def imitator(task: SignsTask, p: SignsProblem, budget: int) -> float:
    """Expected pass@1 of a perfect imitator of the corpus (see the module docstring)."""
    pats = p.patterns()
    k = pats.index(p.solutions()[0])
    g = 1.0 / len(pats)
    trace = search_trace(p, pats[:k + 1], "symbols", random.Random(0))
    found = len(trace) <= task.corpus_max_chars and len(trace) + answer_tokens(p) <= budget
    partial_share = 1.0 - task.corpus_short - task.corpus_reflect
    think = task.corpus_short * g + partial_share * (1.0 if k == 0 else g) + task.corpus_reflect * (1.0 if found else g)
    return 0.5 * g + 0.5 * think  # think_fraction 0.5: half the documents answer directly


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=128)
    ap.add_argument("--notation", default="symbols", choices=("symbols", "words"))
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--reflect", type=float, default=0.1, help="corpus_reflect of the imitated corpus")
    args = ap.parse_args()
    task = SignsTask(n_test=args.n_test, n_train=0, corpus_reflect=args.reflect)
    rows: dict[int, list] = {}
    for e in task.examples("test"):
        p = SignsProblem(tuple(e.metadata["digits"]), e.metadata["target"], e.metadata["modulus"])
        acc, length, need = searcher(p, args.budget, args.notation)
        rows.setdefault(p.level, []).append((1 / len(p.patterns()), imitator(task, p, args.budget),
                                             acc, length, need))
    print(f"budget {args.budget} tokens, notation {args.notation}, corpus_reflect {args.reflect}")
    print("level  guess  imitator  search  length  attempts")
    everything = [r for rs in rows.values() for r in rs]
    for level, rs in sorted(rows.items()) + [("all", everything)]:
        mean = [sum(col) / len(rs) for col in zip(*rs)]
        print(f"{level!s:>5}  {mean[0]:.3f}  {mean[1]:.3f}     {mean[2]:.3f}   {mean[3]:5.1f}   {mean[4]:.1f}")


if __name__ == "__main__":
    main()
