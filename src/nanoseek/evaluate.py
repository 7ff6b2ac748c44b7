"""Held-out evaluation of a policy: pass@1 averaged over k samples, well-formed rate, thinking share.

DeepSeek-R1 (sec. 3, "Evaluation Setup") reports pass@1 as the mean correctness over k samples per
problem drawn at temperature 0.6 and top-p 0.95; this module does exactly that for a local
``Policy`` and a list of ``Example`` rows, grading with the task's accuracy reward. Every sample is
seeded by (seed, problem index, sample index), so the numbers do not depend on batch size.

Besides pass@1 it measures what tells a reasoning run apart from format learning:
- ``well_formed``: a closed think block, exactly one answer block, and an answer that parses as
  the task's answer type;
- ``thinking``: the share of completions whose think block holds reasoning (is not empty);
- ``mean_length``: completion length in tokens; ``truncated``: share cut at the token budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nanoseek.generation import SamplingParams
from nanoseek.tokenizer import THINK_CLOSE, THINK_OPEN


def sample_seed(seed: int, problem: int, sample: int) -> int:
    """A deterministic 63-bit seed for sample ``sample`` of problem ``problem``."""
    x = (seed * 0x9E3779B97F4A7C15 + problem * 0xBF58476D1CE4E5B9 + sample * 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    return x % (1 << 63)


def think_text(completion: str, think_prefilled: bool) -> str | None:
    """The reasoning inside the think block, or None when the block never closes/opens."""
    if not think_prefilled:
        if THINK_OPEN not in completion:
            return None
        completion = completion.split(THINK_OPEN, 1)[1]
    if THINK_CLOSE not in completion:
        return None
    return completion.split(THINK_CLOSE, 1)[0]


@dataclass
class SampleResult:
    """One graded sample of one problem."""

    problem: int
    sample: int
    id: str
    prompt: str
    answer: str
    completion: str
    extracted: str | None
    correct: bool
    well_formed: bool
    thinking: bool
    length: int
    finish_reason: str


def grade_completions(task, examples, completions: list[str], think_prefilled: bool) -> list[dict]:
    """Grade completions (one per example, aligned): correctness, well-formedness, thinking."""
    from nanoseek import grading, rewards

    columns = {"answer": [e.answer for e in examples]}
    acc = rewards.accuracy_reward(completions, think_prefilled=think_prefilled, **columns)
    fmt = rewards.format_reward(completions, think_prefilled=think_prefilled)
    out = []
    for c, a, f in zip(completions, acc, fmt):
        extracted = grading.extract_answer(c, think_prefilled=think_prefilled)
        parses = extracted is not None and (task.answer_type != "number" or grading.parse_number(extracted) is not None)
        t = think_text(c, think_prefilled)
        out.append({"extracted": extracted, "correct": bool(a == 1.0), "well_formed": bool(f == 1.0 and parses),
                    "thinking": bool(t is not None and t.strip())})
    return out


def evaluate_policy(policy, task, examples, *, samples: int = 4, temperature: float = 0.6, top_p: float = 0.95,
                    max_new_tokens: int = 64, seed: int = 1234, batch_size: int = 256, progress=None) -> tuple[dict, list[SampleResult]]:
    """Sample ``samples`` completions per example and grade them.

    Returns ``(metrics, results)`` where metrics holds ``pass@1`` (mean correctness over all
    samples of all problems), ``well_formed``, ``thinking``, ``mean_length`` (tokens),
    ``truncated`` and ``n`` (problems); results holds one ``SampleResult`` per sample.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    prompts = policy.encode_prompts([e.prompt for e in examples])
    rows = [(i, j) for i in range(len(examples)) for j in range(samples)]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            stop_token_ids=list(policy.stop_ids))
    results: list[SampleResult] = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        comps = policy.generate([prompts[i] for i, _ in chunk], params, seeds=[sample_seed(seed, i, j) for i, j in chunk])
        texts = [policy.decode(c.token_ids) for c in comps]
        grades = grade_completions(task, [examples[i] for i, _ in chunk], texts, policy.think_prefilled)
        for (i, j), c, text, g in zip(chunk, comps, texts, grades):
            e = examples[i]
            results.append(SampleResult(i, j, e.id, e.prompt, e.answer, text, g["extracted"], g["correct"],
                                        g["well_formed"], g["thinking"], len(c.token_ids), c.finish_reason))
        if progress is not None:
            progress.update(len(chunk))
    return summarize(results, len(examples)), results


def summarize(results: list[SampleResult], n_problems: int) -> dict:
    """Aggregate metrics of graded samples (see ``evaluate_policy``)."""
    m = max(1, len(results))
    return {
        "pass@1": sum(r.correct for r in results) / m,
        "well_formed": sum(r.well_formed for r in results) / m,
        "thinking": sum(r.thinking for r in results) / m,
        "mean_length": sum(r.length for r in results) / m,
        "truncated": sum(r.finish_reason == "length" for r in results) / m,
        "n": n_problems,
        "samples": len(results) // max(1, n_problems),
    }


def results_as_dicts(results: list[SampleResult]) -> list[dict]:
    return [asdict(r) for r in results]
