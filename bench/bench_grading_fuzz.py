"""Grading fuzz: random and adversarial completions graded from a thread pool, as reward workers call it.

    python bench/bench_grading_fuzz.py [--n 3000] [--threads 8] [--timeout 2] [--seed 0] [--json out.json]

Each completion is graded against one of a few references with ``nanoseek.rewards.grading.grade``
from a ``ThreadPoolExecutor`` of ``--threads`` threads, and every call is timed. Half of the
completions are random strings of math-flavoured pieces (digits, ``\\frac``, braces, ``\\infty``,
answer tags, prose); the other half are adversarial shapes: overflowing literals (``1e400``) next to
``\\infty`` and unbalanced brackets, towers of powers, huge factorials, deep nesting, very long texts,
regex bait. The grader's pool is warmed up first (its one-time start-up is not part of a check).

Prints the exceptions raised by ``grade`` (must be 0), the slowest call, the count of calls over
``timeout + 1 s`` (must be 0), the grader's own counts (timeouts, errors, ...) and latency
percentiles; ``--json`` writes the same figures. Exit status 1 when either must-be-0 figure is not.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import random
import sys
import time
import traceback

from nanoseek.rewards import grading, grading_pool

REFERENCES = ["72", "\\frac{1}{2}", "\\infty", "(1, 2)", "2^{-60}", "x^2+1", "\\sqrt{2}", "-3", "0.25",
              "\\{1, 2, 3\\}", "[0, \\infty)", "1e400", "10^{400}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"]

PIECES = ["1", "2", "9", "0", "72", "-", "+", ".", ",", "/", "^", "{", "}", "(", ")", "[", "]", "\\{", "\\}",
          "\\frac", "\\dfrac", "\\sqrt", "\\infty", "\\pi", "e", "x", "=", " ", "\n", "$", "\\boxed{", "\\fbox{",
          "<answer>", "</answer>", "<think>", "</think>", "####", "final answer:", "the answer is", "%", "\\%",
          "1e400", "1e-400", "10^{-70}", "!", "\\cdot", "\\times", "\\left(", "\\right)", "\\text{", "cm", "and",
          "\\begin{pmatrix}", "\\end{pmatrix}", "\\\\", "&", "\\ud7ff", "数", "∞", "−", "\\,", "{,}", "0,1"]


def random_completion(rng: random.Random) -> str:
    """A random string of math-flavoured pieces, sometimes wrapped in an answer marker."""
    body = "".join(rng.choice(PIECES) for _ in range(rng.choice([1, 3, 8, 30, 200, 2000])))
    wrap = rng.randrange(5)
    if wrap == 0:
        return f"<think>{rng.choice(PIECES)}</think><answer>{body}</answer>"
    if wrap == 1:
        return f"So the result is \\boxed{{{body}}}."
    if wrap == 2:
        return f"#### {body}"
    return body


def adversarial_completion(rng: random.Random) -> str:
    """One of the shapes that slow down or break parsers, with random sizes."""
    k = rng.randint(1, 6)
    big = rng.choice(["1e400", "1e4000", "1e-400", "9e999999999", "1" * rng.choice([50, 400, 4000])])
    open_ = rng.choice(["(", "[", "{", "\\{", "\\left(", "(("])
    shapes = [
        f"\\boxed{{{big} {open_} \\infty}}",
        f"<answer>{big}{open_ * k} \\infty + {big}</answer>",
        f"The answer is {big} \\cdot \\infty {open_ * k}",
        f"\\boxed{{{'9^{' * k}9{'}' * k}}}",
        f"\\boxed{{{'9^' * (k + 2)}9}}",
        f"\\boxed{{{rng.choice([1000, 100000, 10**7])}!}}",
        f"\\boxed{{{'{' * rng.choice([50, 500])}1{'}' * rng.choice([50, 499, 500])}}}",
        "\\boxed{" + "\\frac{1}{" * rng.choice([20, 200]) + "2" + "}" * rng.choice([20, 200]) + "}",
        f"\\boxed{{{'(' * rng.choice([100, 1000])}1}}",
        f"<think>{'step ' * rng.choice([1000, 20000])}</think><answer>{big}</answer>",
        "So " + "a" * rng.choice([5000, 50000]) + "! the answer is " + "b" * 300 + "1",
        f"\\boxed{{\\sqrt{{{big}}}^{{{big}}} - \\infty^{{\\infty}} {open_ * k}}}",
        f"\\boxed{{\\int_0^{{{big}}} e^{{x^{{{big}}}}} dx}}",
        f"\\boxed{{\\sum_{{n=1}}^{{{big}}} n^{{{big}}}}}",
        f"\\boxed{{x^{{{big}}} = {big}, y \\in ({big}, \\infty]}}",
        "final answer: " + "1,000" * rng.choice([10, 500]),
        "\\boxed{" + "\\left(" * k + big + "\\right)" * (k - 1) + "}",
        "#### " + "-" * rng.choice([10, 3000]) + big,
        "\\boxed{" + "2^{-60}" * rng.choice([1, 40]) + "}",
        "\\boxed{" + big + "%" + open_ * k + "\\%}",
    ]
    return rng.choice(shapes)


def cases(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (completion, reference) pairs, half random and half adversarial (interleaved)."""
    rng = random.Random(seed)
    return [((random_completion if i % 2 else adversarial_completion)(rng), rng.choice(REFERENCES)) for i in range(n)]


def run(n: int, threads: int, timeout: float, seed: int) -> dict:
    """Grade the cases from ``threads`` threads; returns the figures printed by ``main``."""
    grading_pool.warmup()
    pairs = cases(n, seed)
    counts = grading.GradeCounts()
    exceptions: list[str] = []

    def one(pair):
        start = time.monotonic()
        try:
            grading.grade(pair[0], pair[1], timeout=timeout, counts=counts)
        except Exception:  # grade must never raise: record it for the report
            exceptions.append(traceback.format_exc(limit=3))
        return time.monotonic() - start

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(threads) as pool:
        times = list(pool.map(one, pairs))
    wall = time.monotonic() - t0
    order = sorted(range(len(times)), key=times.__getitem__)
    slowest = order[-1]
    limit = timeout + 1.0
    return {
        "n": n, "threads": threads, "timeout_s": timeout, "seed": seed, "wall_s": round(wall, 2),
        "exceptions": len(exceptions), "first_exception": exceptions[0] if exceptions else None,
        "slowest_s": round(times[slowest], 3), "slowest_completion": pairs[slowest][0][:200],
        "over_limit": sum(t > limit for t in times), "limit_s": limit,
        "p50_s": round(times[order[len(order) // 2]], 4), "p99_s": round(times[order[int(len(order) * 0.99)]], 4),
        "grader": counts.snapshot(),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="completions to grade (default 3000)")
    ap.add_argument("--threads", type=int, default=8, help="grading threads (default 8)")
    ap.add_argument("--timeout", type=float, default=grading_pool.DEFAULT_TIMEOUT,
                    help=f"per-call timeout in seconds (default {grading_pool.DEFAULT_TIMEOUT:g})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    r = run(args.n, args.threads, args.timeout, args.seed)
    print(f"{r['n']} completions from {r['threads']} threads, timeout {r['timeout_s']:g} s, {r['wall_s']:.1f} s wall")
    print(f"exceptions        : {r['exceptions']}")
    print(f"slowest call      : {r['slowest_s']:.3f} s  ({r['slowest_completion'][:80]!r})")
    print(f"over {r['limit_s']:g} s       : {r['over_limit']}")
    print(f"p50 / p99         : {r['p50_s'] * 1000:.1f} ms / {r['p99_s'] * 1000:.1f} ms")
    print("grader counts     : " + ", ".join(f"{k}={v}" for k, v in r["grader"].items()))
    if r["first_exception"]:
        print(r["first_exception"])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=1)
    sys.exit(0 if r["exceptions"] == 0 and r["over_limit"] == 0 else 1)


if __name__ == "__main__":
    main()
