"""Held-out evaluation of a policy: pass@1 averaged over k samples, cons@k, well-formed rate, thinking share.

DeepSeek-R1 (sec. 3, "Evaluation Setup") reports pass@1 as the mean correctness over k samples per
problem drawn at temperature 0.6 and top-p 0.95; this module does exactly that for a local
``Policy`` and a list of ``Example`` rows, grading with the task's accuracy reward. Every sample is
seeded by (seed, problem index, sample index), so the numbers do not depend on batch size.

Besides pass@1 it measures what tells a reasoning run apart from format learning:
- ``well_formed``: for the R1-Zero template (``style="r1_zero"``) a closed think block, exactly one
  answer block, and an answer that parses as the task's answer type; for the R1 chat format
  (``style="r1"``, answers in ``\\boxed{}``) a closed think block and an answer that parses;
- ``thinking``: the share of completions whose think block holds reasoning (is not empty);
- ``mean_length``: completion length in tokens; ``truncated``: share cut at the token budget.
``summarize`` adds the unbiased ``pass@k`` for every k <= samples, ``cons@k`` (majority vote over
the k extracted answers) and ``pass@1_stderr`` (see ``nanoseek.evaluation.metrics``).

The same ``GradedSample`` rows come from the endpoint path (``nanoseek.evaluation.endpoint``), where
the server returns the reasoning separately (``reasoning_content``); ``nanoseek eval``
(``nanoseek.evaluation.run``) builds on ``generate_results`` and ``summarize``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

from nanoseek.config import check_ranges
from nanoseek.evaluation import behaviour
from nanoseek.evaluation import metrics as eval_metrics
from nanoseek.policy.generate import SamplingParams
from nanoseek.rewards import grading
from nanoseek.rewards import rules as rewards
from nanoseek.tokenizer import THINK_CLOSE, THINK_OPEN

STYLES = ("r1_zero", "r1")


@dataclass
class EvalConfig:
    """Held-out evaluation: pass@1 averaged over ``samples`` per problem (DeepSeek-R1 sec. 3:
    temperature 0.6, top-p 0.95). ``limit``: the first that many test problems (0: all of them;
    no evaluation at all in ``nanoseek sft``)."""

    limit: int = 200
    samples: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 64
    batch_size: int = 256
    seed: int = 1234

    def __post_init__(self):
        check_ranges(self, "eval", {"limit": ">= 0", "samples": ">= 1", "temperature": ">= 0", "top_p": "(0, 1]",
                                    "max_new_tokens": ">= 1", "batch_size": ">= 1", "seed": ">= 0"})


def completion_seed(seed: int, problem: int, sample: int) -> int:
    """A deterministic 63-bit seed for completion ``sample`` of problem ``problem`` (a hash of the
    three, so a completion depends on neither the batch it is drawn in nor the other rows)."""
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


def split_think_block(completion: str, think_prefilled: bool) -> tuple[str | None, str]:
    """``(reasoning, answer_part)`` of a completion: the think block's text and what follows it,
    both unstripped, as stored in an evaluation's ``samples.jsonl``.

    A think block that never closes is all reasoning (answer part ``""``); a completion with no
    think block at all (and no prefilled one) is all answer (reasoning ``None``). (The server's
    ``reasoning_content`` / ``content`` split, with its stripping, null fields and answer tags, is
    another function: ``serve.reasoning.split_reasoning``.)
    """
    if THINK_CLOSE in completion:
        head, tail = completion.split(THINK_CLOSE, 1)
        return (head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head), tail
    if think_prefilled:
        return completion, ""
    if THINK_OPEN in completion:
        return completion.split(THINK_OPEN, 1)[1], ""
    return None, completion


@dataclass
class GradedSample:
    """One graded sample of one problem.

    ``answer`` is the reference answer; ``completion`` the generated text (from an endpoint:
    ``<think>reasoning</think>`` + content when the server returned the reasoning separately);
    ``reasoning`` the think-block text; ``error`` why a request failed (then ``correct`` is False).
    """

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
    reasoning: str | None = None
    error: str | None = None


def _parses(task, extracted: str | None) -> bool:
    """Whether an extracted answer parses as the task's answer type."""
    if extracted is None:
        return False
    if task.answer_type != "number":
        return True
    return grading.parse_number(extracted) is not None


def grade_completions(task, examples, completions: list[str], think_prefilled: bool, style: str = "r1_zero") -> list[dict]:
    """Grade completions (one per example, aligned): correctness, well-formedness, thinking.

    ``style`` is the answer format the prompt asked for: "r1_zero" (``<answer>`` tags, graded for
    form by ``format_reward``) or "r1" (``\\boxed{}`` after a closed think block).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    # the task's own accuracy reward (Countdown checks an equation against nums/target), given every
    # example column as the trainer gives them (TRL protocol, nanoseek.rewards.rules)
    accuracy = (task.reward_funcs() if hasattr(task, "reward_funcs") else {}).get("accuracy", rewards.accuracy_reward)
    rows = [e.columns() for e in examples]
    columns = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
    acc = accuracy(completions, think_prefilled=think_prefilled, **columns)
    fmt = rewards.format_reward(completions, think_prefilled=think_prefilled)
    out = []
    for c, a, f in zip(completions, acc, fmt):
        extracted = grading.extract_answer(c, think_prefilled=think_prefilled)
        parses = _parses(task, extracted)
        t = think_text(c, think_prefilled)
        form = f == 1.0 if style == "r1_zero" else t is not None
        out.append({"extracted": extracted, "correct": bool(a == 1.0), "well_formed": bool(form and parses),
                    "thinking": bool(t is not None and t.strip())})
    return out


def generate_results(policy, task, examples, rows: Sequence[tuple[int, int]], *, questions: Sequence[str] | None = None,
                     temperature: float = 0.6, top_p: float = 0.95, max_new_tokens: int = 64, seed: int = 1234,
                     batch_size: int = 256, style: str = "r1_zero") -> Iterator[list[GradedSample]]:
    """Sample and grade the ``(problem, sample)`` pairs ``rows``, yielding one list per batch.

    ``questions[i]`` is the user message of problem i (default: ``examples[i].prompt``); it is
    rendered with the policy's chat template. Sample ``(i, j)`` is seeded by
    ``completion_seed(seed, i, j)``, so any subset of rows, in any batching, gives the same samples.
    """
    questions = [e.prompt for e in examples] if questions is None else list(questions)
    needed = sorted({i for i, _ in rows})
    encoded = dict(zip(needed, policy.encode_prompts([questions[i] for i in needed])))
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            stop_token_ids=list(policy.stop_ids))
    rows = list(rows)
    for s in range(0, len(rows), max(1, batch_size)):
        chunk = rows[s:s + max(1, batch_size)]
        comps = policy.generate([encoded[i] for i, _ in chunk], params, seeds=[completion_seed(seed, i, j) for i, j in chunk])
        texts = [policy.decode(c.token_ids) for c in comps]
        grades = grade_completions(task, [examples[i] for i, _ in chunk], texts, policy.think_prefilled, style)
        batch = []
        for (i, j), c, text, g in zip(chunk, comps, texts, grades):
            e = examples[i]
            batch.append(GradedSample(i, j, e.id, questions[i], e.answer, text, g["extracted"], g["correct"],
                                      g["well_formed"], g["thinking"], len(c.token_ids), c.finish_reason,
                                      split_think_block(text, policy.think_prefilled)[0]))
        yield batch


def evaluate_policy(policy, task, examples, *, samples: int = 4, temperature: float = 0.6, top_p: float = 0.95,
                    max_new_tokens: int = 64, seed: int = 1234, batch_size: int = 256,
                    progress=None) -> tuple[dict, list[GradedSample]]:
    """Sample ``samples`` completions per example and grade them.

    Returns ``(metrics, results)`` where metrics holds ``pass@1`` (mean correctness over all
    samples of all problems), ``well_formed``, ``thinking``, ``mean_length`` (tokens),
    ``truncated`` and ``n`` (problems), plus the keys ``summarize`` adds (cons@k voting with the
    task's own answer equivalence when it has one) and those ``behaviour.behaviour_metrics`` adds
    (``reflection``, ``mixed_notation``, ``by_level``, for tasks with detectors or levels); results
    holds one ``GradedSample`` per sample.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rows = [(i, j) for i in range(len(examples)) for j in range(samples)]
    results: list[GradedSample] = []
    for batch in generate_results(policy, task, examples, rows, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size):
        results.extend(batch)
        if progress is not None:
            progress.update(len(batch))
    m = summarize(results, len(examples), equivalent=behaviour.answer_equivalence(task))
    m.update(behaviour.behaviour_metrics(task, examples, results))  # reflection, mixed notation, by_level
    return m, results


def summarize(results: list[GradedSample], n_problems: int, *, cons: bool = True, equivalent=None) -> dict:
    """Aggregate metrics of graded samples (see ``evaluate_policy``).

    Keys: ``pass@1`` (mean over all samples), ``pass@1_stderr`` (across problems), ``pass@k``
    ({"1": …, …, "k": …}, unbiased, every k up to the samples per problem), ``cons@k`` (the real k
    in the key; left out with ``cons=False``), ``well_formed``, ``thinking``, ``mean_length``
    (tokens; failed requests and unknown lengths left out), ``truncated``, ``failed`` (requests that never got an
    answer: counted as wrong), ``n`` (problems), ``samples`` (per problem). ``equivalent(a, b)``:
    the answer equivalence of the cons@k vote (default: ``metrics.default_equivalent``).
    """
    m = max(1, len(results))
    ok = [r for r in results if r.error is None]
    known = [r for r in ok if r.length >= 0]  # an endpoint that reports no usage gives length -1
    k = len(results) // max(1, n_problems)
    by_problem: dict[int, list[GradedSample]] = {}
    for r in sorted(results, key=lambda r: (r.problem, r.sample)):
        by_problem.setdefault(r.problem, []).append(r)
    groups = list(by_problem.values())
    per_problem = [sum(r.correct for r in g) / len(g) for g in groups]
    out = {
        "pass@1": sum(r.correct for r in results) / m,
        "pass@1_stderr": eval_metrics.pass1_stderr(per_problem),
        "pass@k": eval_metrics.pass_at_k_curve([[r.correct for r in g] for g in groups]),
    }
    if cons and k >= 1:
        vote = {"equivalent": equivalent} if equivalent is not None else {}  # the task's own, else the grader
        votes = [eval_metrics.cons_at_k([r.extracted for r in g], [r.correct for r in g], **vote) for g in groups]
        out[f"cons@{k}"] = sum(votes) / max(1, len(votes))
    out.update({
        "well_formed": sum(r.well_formed for r in results) / m,
        "thinking": sum(r.thinking for r in results) / m,
        "mean_length": sum(r.length for r in known) / max(1, len(known)),
        "truncated": sum(r.finish_reason == "length" for r in results) / m,
        "failed": len(results) - len(ok),
        "n": n_problems,
        "samples": k,
    })
    return out


def results_as_dicts(results: list[GradedSample]) -> list[dict]:
    """The samples as plain dicts (what a run stores in ``eval_*.json`` and shows in its report)."""
    return [asdict(r) for r in results]


def eval_metrics_record(m: dict) -> dict:
    """The ``metrics.jsonl`` fields of one held-out evaluation (``m`` from ``evaluate_policy``):
    ``eval/pass@1``, ``eval/well_formed``, ``eval/thinking`` and ``eval/mean_length``, plus
    ``eval/cons@k`` and what ``behaviour.metrics_record`` adds (reflection, mixed notation, per level)."""
    return {"eval/pass@1": m["pass@1"], "eval/well_formed": m["well_formed"], "eval/thinking": m["thinking"],
            "eval/mean_length": m["mean_length"], **behaviour.metrics_record(m)}
