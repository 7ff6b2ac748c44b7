"""Metrics of reasoning-model evaluation: pass@1 over k samples, unbiased pass@k, cons@k, stderr.

How DeepSeek-R1 reports (R1 paper v1 sec. 3, "Evaluation Setup"): k responses per problem at
temperature 0.6 and top-p 0.95; pass@1 = (1/k) sum_i p_i, the mean correctness over the k samples
(averaged over problems); for AIME also cons@64, the majority vote over the 64 answers.

* ``pass_at_k(n, c, k)``: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language
  Models Trained on Code", eq. 1): with ``n`` samples of which ``c`` are correct,
  pass@k = 1 - C(n-c, k) / C(n, k), computed exactly with integers and ``Fraction``.
  ``k > n`` has no unbiased estimate and raises ``ValueError`` instead of returning a number.
* ``majority_vote(answers, equivalent)``: the clusters and winner of cons@k. Answers are clustered
  in order of first appearance: each joins the first cluster whose *first member* it is equivalent
  to, else opens a new one. Equivalence of math answers need not be transitive (0.333 ~ 1/3 within
  a tolerance, 1/3 ~ 0.3333 too, but 0.333 !~ 0.3333), so this order-based rule is the definition,
  not an approximation. Unparsable answers (``None``) never form or join a cluster. The largest
  cluster wins and a tie goes to the cluster that appeared first.
* ``pass1_stderr(per_problem)``: the standard error of pass@1 across problems (sample standard
  deviation of the per-problem means, ddof=1, over sqrt(N)).
* ``breakdown(scores, metadata, keys)``: pass@1 grouped by metadata fields (MATH: subject, level).

Everything here is pure Python over lists: no model, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from nanoseek.rewards import grading

__all__ = ["pass_at_k", "pass_at_k_curve", "majority_vote", "cons_at_k", "pass1_stderr", "breakdown",
           "cross_table", "default_equivalent"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct (Chen et al. 2021).

    pass@k = 1 - C(n-c, k) / C(n, k): the probability that at least one of ``k`` samples drawn
    without replacement from the ``n`` is correct. Exact (integer binomials), so e.g.
    ``pass_at_k(10, 3, 5) == 11/12``. Raises ``ValueError`` for ``k > n`` (no unbiased estimate
    exists: refuse rather than return a number), ``k < 1`` or ``c`` outside ``[0, n]``.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k needs integers, got n={n!r}, c={c!r}, k={k!r}")
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if k > n:
        raise ValueError(f"pass@{k} cannot be estimated from {n} sample(s): k must be <= n (draw more samples)")
    if not 0 <= c <= n:
        raise ValueError(f"correct count c={c} must be between 0 and n={n}")
    if n - c < k:
        return 1.0
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def pass_at_k_curve(correct_per_problem: Sequence[Sequence[bool]], ks: Sequence[int] | None = None) -> dict[str, float]:
    """Mean unbiased pass@k over problems for each ``k`` in ``ks`` (default: every k from 1 to the
    smallest number of samples any problem has). Keys are the k's as strings (JSON object keys).
    Raises ``ValueError`` if a requested k exceeds a problem's sample count."""
    if not correct_per_problem:
        return {}
    n_min = min(len(c) for c in correct_per_problem)
    ks = list(range(1, n_min + 1)) if ks is None else list(ks)
    out = {}
    for k in ks:
        vals = [pass_at_k(len(c), int(sum(map(bool, c))), k) for c in correct_per_problem]
        out[str(k)] = sum(vals) / len(vals)
    return out


def default_equivalent(a: str, b: str) -> bool:
    """Answer equivalence for voting: identical text, else ``nanoseek.rewards.grading.is_equivalent(a, b)``.

    The identical-text shortcut makes the relation reflexive for answers that the math grader cannot
    parse (free-text answers such as a name), which would otherwise each form a cluster of one.
    """
    if a.strip() == b.strip():
        return True
    return grading.is_equivalent(a, b)


def majority_vote(answers: Sequence[str | None],
                  equivalent: Callable[[str, str], bool] = default_equivalent) -> tuple[int | None, list[list[int]]]:
    """Cluster ``answers`` (extracted final answers, ``None`` = unparsable) and pick the majority.

    Returns ``(winner, clusters)``: ``clusters`` are lists of indices into ``answers`` in order of
    first appearance (see the module docstring for the rule; ``equivalent(answer, first_member)``
    decides membership); ``winner`` is the index of the winning cluster's first member, or ``None``
    when no answer parses. Largest cluster wins; ties go to the earliest cluster.
    """
    clusters: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None or not str(a).strip():
            continue
        for cl in clusters:
            if equivalent(a, answers[cl[0]]):
                cl.append(i)
                break
        else:
            clusters.append([i])
    if not clusters:
        return None, clusters
    best = max(range(len(clusters)), key=lambda c: (len(clusters[c]), -c))  # size, then earliest
    return clusters[best][0], clusters


def cons_at_k(answers: Sequence[str | None], correct: Sequence[bool],
              equivalent: Callable[[str, str], bool] = default_equivalent) -> float:
    """cons@k of one problem: 1.0 when the majority answer is correct, else 0.0.

    The majority answer is the first member of the winning cluster (``majority_vote``); its
    correctness is the grade that sample already received against the reference. No parsable
    answer gives 0.0.
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness values")
    winner, _ = majority_vote(answers, equivalent)
    return 0.0 if winner is None else float(bool(correct[winner]))


def pass1_stderr(per_problem: Sequence[float]) -> float | None:
    """Standard error of pass@1 across problems: ``stdev(p_i, ddof=1) / sqrt(N)``, where ``p_i`` is
    problem i's mean correctness over its samples; ``None`` for fewer than two problems."""
    n = len(per_problem)
    if n < 2:
        return None
    mean = sum(per_problem) / n
    var = sum((p - mean) ** 2 for p in per_problem) / (n - 1)
    return math.sqrt(var / n)


def breakdown(per_problem: Sequence[float], metadata: Sequence[Mapping[str, Any]],
              keys: Sequence[str] = ("subject", "level")) -> dict[str, dict[str, dict[str, float | int]]]:
    """pass@1 grouped by each metadata key: ``{key: {value: {"pass@1": mean, "n": problems}}}``.

    ``per_problem[i]`` is problem i's pass@1 and ``metadata[i]`` its metadata (e.g. MATH's
    ``subject`` and ``level``). Keys that no problem has are left out; problems without a key are
    left out of that key's groups. Values are sorted (levels numerically).
    """
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for key in keys:
        groups: dict[Any, list[float]] = {}
        for p, meta in zip(per_problem, metadata):
            v = meta.get(key)
            if v is not None:
                groups.setdefault(v, []).append(p)
        if groups:
            order = sorted(groups, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))
            out[key] = {str(v): {"pass@1": sum(groups[v]) / len(groups[v]), "n": len(groups[v])} for v in order}
    return out


def cross_table(per_problem: Sequence[float], metadata: Sequence[Mapping[str, Any]], row_key: str = "subject",
                col_key: str = "level") -> tuple[list[str], list[str], dict[tuple[str, str], tuple[float, int]]]:
    """pass@1 by (row value, column value): ``(rows, cols, cells)`` where ``cells[(r, c)]`` is
    ``(mean, count)``; ``"all"`` rows and columns hold the marginals. Empty when a key is missing."""
    groups: dict[tuple[str, str], list[float]] = {}
    rows_seen: list[Any] = []
    cols_seen: list[Any] = []
    for p, meta in zip(per_problem, metadata):
        r, c = meta.get(row_key), meta.get(col_key)
        if r is None or c is None:
            continue
        rows_seen.append(r)
        cols_seen.append(c)
        for key in ((str(r), str(c)), (str(r), "all"), ("all", str(c)), ("all", "all")):
            groups.setdefault(key, []).append(p)
    if not groups:
        return [], [], {}
    rows = [str(v) for v in sorted(set(rows_seen), key=str)] + ["all"]
    cols = [str(v) for v in sorted(set(cols_seen), key=lambda v: (str(type(v)), v))] + ["all"]
    cells = {k: (sum(v) / len(v), len(v)) for k, v in groups.items()}
    return rows, cols, cells
