"""Grading throughput: nanoseek's grader vs math-verify alone on the same GSM8K-style completions.

    python bench/bench_grading.py [--n 1000] [--data-dir ../shared/data]

Completions are built from GSM8K test rows in the shapes an RL run produces: a think block with
the reference reasoning, then ``<answer>N</answer>`` or ``\\boxed{N}`` or ``#### N``, a third of
them with a wrong N. Both graders see the same (completion, reference) pairs, in one process pinned
to one core; math-verify is timed as ``verify(parse("$" + ref + "$"), parse(completion))`` (its
documented usage), nanoseek as ``grading.is_equivalent(completion, ref)``. Prints verifications
per second of each and their ratio (the issue asks for >= 10x; the exit status is 1 below that,
measured without nanoseek's parse cache), and how often the two agree.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path


def completions(data_dir: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct (completion, reference) pairs from GSM8K test rows."""
    rows = [json.loads(line) for line in open(data_dir / "gsm8k" / "test.jsonl", encoding="utf-8")]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        row = rows[i % len(rows)]
        body, final = row["answer"].rsplit("####", 1)
        ref = final.strip().replace(",", "")
        pred = ref if i % 3 else str(int(ref) + rng.randint(1, 9))
        shape = (i // len(rows) + i) % 3
        tail = [f"<answer>{pred}</answer>", f"So the answer is $\\boxed{{{pred}}}$.", f"#### {pred}"][shape]
        out.append((f"<think>\n{body.strip()}\n</think>\n{tail}", ref))
    return out


def rate(fn, pairs) -> tuple[float, list[bool]]:
    start = time.perf_counter()
    results = [fn(c, r) for c, r in pairs]
    return len(pairs) / (time.perf_counter() - start), results


def run(data_dir: Path, n: int, pin: bool = True) -> dict:
    """Measure both graders; returns {"nanoseek": v/s, "math_verify": v/s, "ratio": x, "agree": share}.

    ``pin`` pins this process to one core (the CLI does; a test leaves its process alone)."""
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    import logging

    from math_verify import parse, verify

    from nanoseek.rewards import grading

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    pairs = completions(data_dir, n)
    grading.is_equivalent("\\boxed{1}", "1")  # warm both up (imports, regex compilation)
    verify(parse("$1$"), parse("\\boxed{1}"))
    ns, ours = rate(grading.is_equivalent, pairs)
    cached = grading.parse_simple
    grading.parse_simple = cached.__wrapped__  # the same grader without its parse cache
    try:
        ns_cold, _ = rate(grading.is_equivalent, pairs)
    finally:
        grading.parse_simple = cached
    mv, theirs = rate(lambda c, r: verify(parse("$" + r + "$"), parse(c)), pairs)
    agree = sum(a == b for a, b in zip(ours, theirs)) / len(pairs)
    return {"n": len(pairs), "nanoseek": ns, "nanoseek_uncached": ns_cold, "math_verify": mv, "ratio": ns / mv,
            "ratio_uncached": ns_cold / mv, "agree": agree,
            "correct_share": sum(ours) / len(ours)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="completions to grade (default 1000)")
    ap.add_argument("--data-dir", default=os.environ.get("NANOSEEK_DATA_DIR") or
                    str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args(argv)
    r = run(Path(args.data_dir), args.n)
    print(f"{r['n']} GSM8K-style completions, one core")
    print(f"nanoseek grader    : {r['nanoseek']:12,.0f} verifications/s")
    print(f"  without its cache: {r['nanoseek_uncached']:12,.0f} verifications/s")
    print(f"math-verify alone  : {r['math_verify']:12,.0f} verifications/s")
    print(f"speed-up           : {r['ratio']:12.1f}x ({r['ratio_uncached']:.1f}x uncached)")
    print(f"agreement {r['agree']:.1%} (math-verify alone reads the last number of the reasoning when the answer is "
          f"in <answer> tags), correct by nanoseek {r['correct_share']:.1%}")
    sys.exit(0 if r["ratio_uncached"] >= 10 else 1)


if __name__ == "__main__":
    main()
