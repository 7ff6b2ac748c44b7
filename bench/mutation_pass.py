"""Mutation pass over the RL math and the graders' numeric comparison (issue 19, item 21).

Each mutant is one small edit of the source (flip a sign, swap two arguments, drop a mask, change a
constant, ...) in ``rl/grpo.py``, ``rl/advantages.py``, ``rl/kl.py``, or the number parsing and
comparison of ``rewards/grading_fast.py`` / ``rewards/grading.py``. The script copies ``src/``,
``tests/`` and ``bench/`` into a temporary directory, applies one mutant at a time to the *copy*,
runs the relevant fast test files against it (``PYTHONPATH`` = the copy's ``src``) and restores the
copy's file afterwards. The working tree is never written to, so an interrupted run leaves nothing
behind (the temporary directory is removed in a ``finally``).

A mutant is *killed* when a test fails (or the run times out), *survives* when every test passes,
and is *stale* when its source text is no longer in the file (the code changed: update the list).
A mutant listed with an ``equivalent`` reason (the edit cannot change any result; the reason says
why) that survives is counted as *equivalent*, not as a survivor.
Tests that already fail on the unmutated copy are reported and deselected, so they cannot kill
mutants.

Usage::

    .venv/bin/python bench/mutation_pass.py            # every mutant (14 to 24 minutes on 2 shared cores)
    .venv/bin/python bench/mutation_pass.py --only grpo --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RL_TESTS = ["tests/test_grpo_math.py", "tests/test_grpo_numerics.py", "tests/test_grpo_presets.py",
            "tests/test_grpo_trl_parity.py", "tests/test_mutants_rl.py"]
GRADING_TESTS = ["tests/test_grading.py", "tests/test_rewards.py", "tests/test_mutants_grading.py"]
# Timings are not behaviour: a mutant that only slows grading down must not count as killed by them.
GRADING_DESELECT = "not throughput"

GRPO, ADV, KL = "src/nanoseek/rl/grpo.py", "src/nanoseek/rl/advantages.py", "src/nanoseek/rl/kl.py"
FAST, GRADING = "src/nanoseek/rewards/grading_fast.py", "src/nanoseek/rewards/grading.py"


@dataclass(frozen=True)
class Mutant:
    """Replace ``old`` (which must occur exactly once in ``path``) by ``new``; ``equivalent``: why
    the edit cannot change behaviour, when it cannot."""

    name: str
    path: str
    old: str
    new: str
    equivalent: str = ""

    @property
    def tests(self) -> list[str]:
        return GRADING_TESTS if "rewards" in self.path else RL_TESTS


MUTANTS = [
    # ---- rl/grpo.py: loss aggregations
    Mutant("grpo: empty rows counted in the mean over completions", GRPO,
           "return row_loss.sum() / (row_tok > 0).sum().clamp(min=1)", "return row_loss.sum() / row_tok.numel()"),
    Mutant("grpo: row length divisor off by one", GRPO,
           "row_loss = per_token.sum(1) / row_tok.clamp(min=1)", "row_loss = per_token.sum(1) / (row_tok + 1)"),
    Mutant("bnpo: divide by every slot, masked ones too", GRPO,
           "return per_token.sum() / mask.sum().clamp(min=1)", "return per_token.sum() / mask.numel()"),
    Mutant("dr_grpo: ignore max_completion_length", GRPO,
           "return per_token.sum() / (B * L)", "return per_token.sum() / (B * T)"),
    Mutant("dapo: ignore num_items", GRPO,
           "denom = n_tok if num_items is None else torch.as_tensor(num_items, device=per_token.device)",
           "denom = n_tok"),
    Mutant("loss alias ignored", GRPO,
           "name = LOSS_ALIASES.get(loss_type, loss_type)", "name = loss_type"),
    # ---- rl/grpo.py: the clipped surrogate
    Mutant("surrogate: ratio inverted (old - new)", GRPO,
           "ratio = torch.exp(lp - old)", "ratio = torch.exp(old - lp)"),
    Mutant("surrogate: lower clip uses eps_high", GRPO,
           "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)", "torch.clamp(ratio, 1.0 - eps_high, 1.0 + eps_high)"),
    Mutant("surrogate: upper clip uses eps_low", GRPO,
           "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)", "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_low)"),
    Mutant("surrogate: max instead of min (pessimistic bound flipped)", GRPO,
           "return -torch.min(ratio * adv, clipped * adv), ratio", "return -torch.max(ratio * adv, clipped * adv), ratio"),
    Mutant("surrogate: sign flipped", GRPO,
           "return -torch.min(ratio * adv, clipped * adv), ratio", "return torch.min(ratio * adv, clipped * adv), ratio"),
    Mutant("surrogate: unclipped term drops the ratio", GRPO,
           "return -torch.min(ratio * adv, clipped * adv), ratio", "return -torch.min(adv, clipped * adv), ratio"),
    Mutant("epsilon_high ignored", GRPO,
           "eps_high = eps_low if epsilon_high is None else float(epsilon_high)", "eps_high = eps_low"),
    Mutant("old_logp ignored (always on-policy)", GRPO,
           "old = lp.detach() if old_logp is None else torch.where(mask, old_logp.to(lp.dtype), zero)",
           "old = lp.detach()"),
    Mutant("old_logp not masked", GRPO,
           "old = lp.detach() if old_logp is None else torch.where(mask, old_logp.to(lp.dtype), zero)",
           "old = lp.detach() if old_logp is None else old_logp.to(lp.dtype)"),
    Mutant("logp not masked", GRPO, "lp = torch.where(mask, logp, zero)", "lp = logp"),
    Mutant("advantages not masked", GRPO,
           "adv = torch.where(mask, adv[:, None].expand(B, T) if adv.dim() == 1 else adv, zero)",
           "adv = adv[:, None].expand(B, T) if adv.dim() == 1 else adv"),
    Mutant("ref_logp not masked", GRPO,
           "ref = torch.where(mask, ref_logp.to(lp.dtype), zero)", "ref = ref_logp.to(lp.dtype)"),
    # ---- rl/grpo.py: the KL term
    Mutant("KL term subtracted", GRPO, "per_tok = per_tok + beta * kl", "per_tok = per_tok - beta * kl"),
    Mutant("KL gradient dropped (policy detached)", GRPO,
           "kl = kl_k3(lp if beta != 0.0 else lp.detach(), ref)", "kl = kl_k3(lp.detach(), ref)"),
    Mutant("KL arguments swapped", GRPO,
           "kl = kl_k3(lp if beta != 0.0 else lp.detach(), ref)", "kl = kl_k3(ref, lp if beta != 0.0 else lp.detach())"),
    Mutant("KL importance weight detached", GRPO, "kl = kl * ratio", "kl = kl * ratio.detach()"),
    Mutant("KL importance weight always on", GRPO, "        if kl_importance_weight:\n            kl = kl * ratio",
           "        if True:\n            kl = kl * ratio"),
    # ---- rl/grpo.py: clip metrics
    Mutant("clip_ratio/low counts positive advantages", GRPO,
           "low = mask & (ratio < 1.0 - eps_low) & (adv < 0)", "low = mask & (ratio < 1.0 - eps_low) & (adv > 0)"),
    Mutant("clip_ratio/high uses eps_low", GRPO,
           "high = mask & (ratio > 1.0 + eps_high) & (adv > 0)", "high = mask & (ratio > 1.0 + eps_low) & (adv > 0)"),
    Mutant("clip_ratio/region is low AND high", GRPO, '"clip_ratio/region": (low | high).sum() / tok',
           '"clip_ratio/region": (low & high).sum() / tok'),
    Mutant("ratio metric counts masked slots", GRPO,
           '"ratio": torch.where(mask, ratio, ratio.new_zeros(())).sum() / tok', '"ratio": ratio.sum() / tok'),
    Mutant("kl metric is a mean over every slot", GRPO,
           'metrics["kl"] = kl.detach().sum() / tok', 'metrics["kl"] = kl.detach().mean()'),
    # ---- rl/grpo.py: log-probs and entropy
    Mutant("token_logprobs multiplies by the temperature", GRPO,
           "            row = row / temperature\n        picked", "            row = row * temperature\n        picked"),
    Mutant("token_logprobs normalises over the wrong axis", GRPO,
           "rows.append(picked - torch.logsumexp(row, dim=-1))", "rows.append(picked - torch.logsumexp(row, dim=0))"),
    Mutant("token_entropy ignores the temperature", GRPO,
           "            row = row / temperature\n        lse", "            row = row\n        lse"),
    Mutant("token_entropy sign flipped", GRPO,
           "rows.append(lse - (p * torch.where(p > 0, row, 0.0)).sum(-1))",
           "rows.append(lse + (p * torch.where(p > 0, row, 0.0)).sum(-1))"),
    Mutant("token_entropy 0 * -inf guard dropped", GRPO,
           "rows.append(lse - (p * torch.where(p > 0, row, 0.0)).sum(-1))", "rows.append(lse - (p * row).sum(-1))"),
    # ---- rl/advantages.py
    Mutant("reward_validity: valid OR finite", ADV, "ok = ok & valid.to(", "ok = ok | valid.to("),
    Mutant("invalid rewards not zeroed before the statistics", ADV,
           "r = torch.where(ok, rewards.view(-1, group_size).double(), 0.0)",
           "r = rewards.view(-1, group_size).double()"),
    Mutant("group mean divides by G, invalid rewards included", ADV,
           "mean = r.sum(1, keepdim=True) / n.clamp(min=1)", "mean = r.sum(1, keepdim=True) / group_size"),
    Mutant("zero-spread check off (hi >= lo)", ADV, "live = (n >= 2) & (hi > lo)", "live = (n >= 2) & (hi >= lo)"),
    Mutant("groups of one valid reward are live", ADV, "live = (n >= 2) & (hi > lo)", "live = (n >= 0) & (hi > lo)",
           equivalent="hi > lo already needs two valid rewards that differ, so n >= 2 only says it outright"),
    Mutant("max over invalid rewards uses +inf", ADV,
           "hi = torch.where(ok, r, -torch.inf).amax(1, keepdim=True)",
           "hi = torch.where(ok, r, torch.inf).amax(1, keepdim=True)"),
    Mutant("std ignores Bessel's correction", ADV,
           "std = (sq / (n - int(unbiased)).clamp(min=1)).sqrt()", "std = (sq / n.clamp(min=1)).sqrt()"),
    Mutant("std: squares of invalid rewards included", ADV,
           "sq = torch.where(ok, adv, 0.0).square().sum(1, keepdim=True)", "sq = adv.square().sum(1, keepdim=True)"),
    Mutant("eps subtracted", ADV, "denom = std + eps", "denom = std - eps"),
    Mutant("eps dropped", ADV, "denom = std + eps", "denom = std"),
    Mutant("batch std ignores Bessel's correction", ADV,
           "std = flat.std(correction=int(unbiased)) if m > 1", "std = flat.std(correction=0) if m > 1"),
    Mutant("batch std over invalid rewards too", ADV,
           "flat = rewards.double()[ok.view(-1)]", "flat = torch.where(ok.view(-1), rewards.double(), 0.0)"),
    Mutant("invalid rewards keep their advantage", ADV,
           "adv = torch.where(ok & live, adv, 0.0)", "adv = torch.where(live, adv, 0.0)"),
    Mutant("advantages always float32", ADV,
           "out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32", "out_dtype = torch.float32"),
    Mutant("scale 'none' still divides", ADV, '    if scale != "none":\n', '    if True:\n'),
    # ---- rl/kl.py
    Mutant("k3: d reversed", KL, "    d = ref_logp - logp\n    return torch.expm1(d) - d",
           "    d = logp - ref_logp\n    return torch.expm1(d) - d"),
    Mutant("k3: + d", KL, "return torch.expm1(d) - d", "return torch.expm1(d) + d"),
    Mutant("k3: exp instead of expm1", KL, "return torch.expm1(d) - d", "return torch.exp(d) - d"),
    Mutant("k1: sign flipped", KL, "    return logp - ref_logp\n", "    return ref_logp - logp\n"),
    Mutant("k2: without the 1/2", KL, "return 0.5 * (logp - ref_logp).square()", "return (logp - ref_logp).square()"),
    # ---- rewards/grading_fast.py: number parsing and comparison
    Mutant("decimal: sign dropped", FAST,
           'else body)\n        return (-value if m.group(1) == "-" else value), "." not in body',
           'else body)\n        return value, "." not in body'),
    Mutant("decimal: always exact", FAST,
           'else body)\n        return (-value if m.group(1) == "-" else value), "." not in body',
           'else body)\n        return (-value if m.group(1) == "-" else value), True'),
    Mutant("scientific: exponent sign flipped", FAST, "* Fraction(10) ** exp", "/ Fraction(10) ** exp"),
    Mutant("scientific: sign dropped", FAST,
           '* Fraction(10) ** exp\n        return (-value if m.group(1) == "-" else value)',
           '* Fraction(10) ** exp\n        return (value)'),
    Mutant("integer: sign dropped", FAST, 'Fraction(int(m.group(2)) * (-1 if m.group(1) == "-" else 1))',
           "Fraction(int(m.group(2)))"),
    Mutant("power: sign dropped", FAST, "return sign * Fraction(base) ** exp", "return Fraction(base) ** exp"),
    Mutant("power: exponent sign dropped", FAST, "return sign * Fraction(base) ** exp",
           "return sign * Fraction(base) ** abs(exp)"),
    Mutant("fraction: numerator and denominator swapped", FAST, "    value = num / den\n", "    value = den / num\n"),
    Mutant("fraction: sign dropped", FAST, '    return (-value if parts[0] == "-" else value), True',
           "    return value, True"),
    Mutant("bare integer: sign dropped", FAST, "return Num(Fraction(int(m.group(1))))",
           "return Num(Fraction(abs(int(m.group(1)))))"),
    Mutant("terminating: only powers of 2", FAST, "    for p in (2, 5):\n", "    for p in (2,):\n"),
    Mutant("terminating: inverted", FAST, "    return d == 1\n", "    return d != 1\n"),
    Mutant("tolerance 1e-3 instead of 1e-6", FAST, "max(abs(x), abs(y)) * Fraction(1, 10**6)",
           "max(abs(x), abs(y)) * Fraction(1, 10**3)"),
    Mutant("absolute tolerance instead of relative", FAST, "abs(x - y) <= max(abs(x), abs(y)) * Fraction(1, 10**6)",
           "abs(x - y) <= Fraction(1, 10**6)"),
    Mutant("tolerance scaled by the smaller value", FAST, "max(abs(x), abs(y)) * Fraction(1, 10**6)",
           "min(abs(x), abs(y)) * Fraction(1, 10**6)"),
    Mutant("tolerance for every pair", FAST,
           "inexact = (not a.exact and not _terminates(y)) or (not b.exact and not _terminates(x))",
           "inexact = True"),
    Mutant("tolerance when the exact side terminates", FAST,
           "inexact = (not a.exact and not _terminates(y)) or (not b.exact and not _terminates(x))",
           "inexact = (not a.exact) or (not b.exact)"),
    Mutant("tolerance checks the wrong side", FAST,
           "inexact = (not a.exact and not _terminates(y)) or (not b.exact and not _terminates(x))",
           "inexact = (not a.exact and not _terminates(x)) or (not b.exact and not _terminates(y))"),
    Mutant("percent: x100 instead of /100", FAST,
           "pairs += [(a.value / 100, b.value)] if a.percent else [(a.value, b.value / 100)]",
           "pairs += [(a.value * 100, b.value)] if a.percent else [(a.value, b.value * 100)]"),
    Mutant("percent: only the prediction's sign counts", FAST,
           "pairs += [(a.value / 100, b.value)] if a.percent else [(a.value, b.value / 100)]",
           "pairs += [(a.value / 100, b.value)] if a.percent else []"),
    Mutant("percent: allowance on both sides", FAST, "    if a.percent != b.percent:\n", "    if a.percent or b.percent:\n"),
    Mutant("choice letters always equal", FAST, "return p.letter == r.letter", "return True"),
    Mutant("lists: length not compared", FAST,
           "        if len(p.items) != len(r.items):\n            return False\n", ""),
    Mutant("lists: an item may match twice", FAST, "            unused.pop(hit)\n", ""),
    Mutant("lists: compared in order", FAST,
           "hit = next((k for k, pi in enumerate(unused) if simple_equal(pi, ri)), None)",
           "hit = 0 if unused and simple_equal(unused[0], ri) else None"),
    # ---- rewards/grading.py: the numeric branch of grade()
    Mutant("grade: numeric comparison inverted", GRADING,
           "return 1.0 if simple_equal(pred_s, ref_s) else 0.0", "return 0.0 if simple_equal(pred_s, ref_s) else 1.0"),
    Mutant("grade: prediction and reference swapped", GRADING,
           "return 1.0 if simple_equal(pred_s, ref_s) else 0.0", "return 1.0 if simple_equal(ref_s, pred_s) else 0.0",
           equivalent="simple_equal is symmetric: _num_eq's tolerance is relative to the larger value, the "
                      "percent allowance goes both ways, and the greedy multiset match gives the same answer "
                      "from either side (checked for every relation between two lists of up to 4 items)"),
    Mutant("parse_number: percent answer divided", GRADING,
           "return parsed.value if isinstance(parsed, Num) else None",
           "return (parsed.value / 100 if parsed.percent else parsed.value) if isinstance(parsed, Num) else None"),
]


def copy_repo(dest: Path) -> Path:
    """``src/``, ``tests/``, ``bench/`` and ``pyproject.toml`` copied to ``dest/main``, with
    ``dest/shared`` linked to the real shared data (tests find it as ``REPO.parent / "shared"``)."""
    root = dest / "main"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests", "bench"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    shared = REPO.parent / "shared"
    if shared.exists():
        (dest / "shared").symlink_to(shared)
    return root


def run_tests(root: Path, tests: list[str], deselect: list[str], timeout: float) -> tuple[str, list[str], float]:
    """``("pass" | "fail" | "timeout", failed test ids, seconds)`` for the test files that exist."""
    files = [t for t in tests if (root / t).exists()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rf", *files]
    if any("grading" in t for t in files):
        cmd += ["-k", GRADING_DESELECT]
    for node in deselect:
        cmd += ["--deselect", node]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", [], time.perf_counter() - start
    failed = re.findall(r"^FAILED (\S+)", out.stdout, flags=re.MULTILINE)
    errored = re.findall(r"^ERROR (\S+)", out.stdout, flags=re.MULTILINE)
    status = "pass" if out.returncode == 0 else "fail"
    if out.returncode not in (0, 1):  # collection error, usage error, ...: the mutant broke an import
        failed = failed + errored or [f"pytest exit {out.returncode}"]
    return status, failed + errored, time.perf_counter() - start


def baseline_failures(root: Path, groups: list[list[str]], timeout: float) -> list[str]:
    """Tests that fail with no mutant (they are deselected: they cannot tell a mutant apart)."""
    bad: list[str] = []
    for tests in groups:
        while True:  # -x stops at the first failure: rerun until the rest passes
            status, failed, _ = run_tests(root, tests, bad, timeout)
            new = [f for f in failed if f not in bad and "::" in f]
            if status == "pass" or not new:
                if status != "pass":
                    raise SystemExit(f"baseline run of {tests} fails outside single tests: {failed}")
                break
            bad += new
    return bad


def run_mutant(root: Path, m: Mutant, deselect: list[str], timeout: float) -> dict:
    """Apply ``m`` to the copy, run its tests, restore the copy's file."""
    path = root / m.path
    original = path.read_text()
    if original.count(m.old) != 1:
        return {"name": m.name, "file": m.path, "status": "stale", "seconds": 0.0, "failed": []}
    try:
        path.write_text(original.replace(m.old, m.new))
        status, failed, secs = run_tests(root, m.tests, deselect, timeout)
    finally:
        path.write_text(original)
    verdict = "killed" if status != "pass" else "equivalent" if m.equivalent else "survived"
    return {"name": m.name, "file": m.path, "status": verdict, "seconds": round(secs, 1), "failed": failed[:3],
            "equivalent": m.equivalent}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run the mutants whose name or file contains this text")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per test run (a timeout kills)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only in m.name or args.only in m.path]
    tmp = Path(tempfile.mkdtemp(prefix="nanoseek-mutants-"))
    start = time.perf_counter()
    try:
        root = copy_repo(tmp)
        groups = [g for g in (RL_TESTS, GRADING_TESTS) if any(m.tests is g for m in mutants)]
        deselect = baseline_failures(root, groups, args.timeout)
        results = []
        for m in mutants:
            r = run_mutant(root, m, deselect, args.timeout)
            results.append(r)
            if not args.json:
                print(f"{r['status']:9s} {r['seconds']:6.1f}s  {Path(m.path).name:16s} {m.name}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = {s: sum(r["status"] == s for r in results) for s in ("killed", "survived", "equivalent", "stale")}
    summary = {"mutants": len(results), **counts, "baseline_deselected": deselect,
               "seconds": round(time.perf_counter() - start, 1),
               "survivors": [f"{Path(r['file']).name}: {r['name']}" for r in results if r["status"] == "survived"]}
    if args.json:
        print(json.dumps({**summary, "results": results}, indent=1))
    else:
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
