"""What the completions of an evaluation do besides being right: reflection, mixed notation, and every
number per difficulty level.

DeepSeek-R1 reports more than accuracy for R1-Zero: the response length grows during RL (Fig. 3),
reflection appears on its own (the "aha moment", Table 3), and the reasoning mixes languages
(sec. 2.3). These are measured here from the graded samples of one evaluation
(``nanoseek.evaluation.evaluate.GradedSample``), when the task brings the detectors:

- ``reflection``: the share of completions whose reasoning re-checks or backtracks
  (``task.is_reflection(reasoning)``, the task's own markers, e.g. "wait," / "backtrack");
  ``reflection_accuracy`` / ``no_reflection_accuracy``: pass@1 of the completions with and without
  it (``None`` when there are none); ``reflection_n``: how many completions reflect;
- ``mixed_notation``: the share of completions whose reasoning mixes two notations
  (``task.notation_mix(reasoning)``), R1-Zero's language mixing;
- ``by_level``: for problems whose metadata has a ``level``, per level: ``n``, ``pass@1``,
  ``pass@1_stderr``, ``cons@k``, ``mean_length``, ``thinking``, ``truncated`` and the numbers above.

``answer_equivalence(task)`` is the task's own answer equivalence for majority voting
(``task.answers_equivalent``), when it has one (an exact one is both right and fast where the math
grader would compare expressions by value). ``metrics_record`` is what of this goes into a run's
``metrics.jsonl`` (``eval/*`` keys).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from nanoseek.evaluation import metrics as eval_metrics


def _mean(values: Sequence[Any]) -> float | None:
    return sum(values) / len(values) if values else None


def answer_equivalence(task) -> Callable[[str, str], bool] | None:
    """The task's answer equivalence for cons@k (``task.answers_equivalent``), else ``None``."""
    return getattr(task, "answers_equivalent", None)


def has_detectors(task) -> bool:
    """Whether ``task`` brings a reflection or notation detector (``is_reflection``, ``notation_mix``)."""
    return hasattr(task, "is_reflection") or hasattr(task, "notation_mix")


def reflection_metrics(task, results: Sequence) -> dict:
    """``reflection``, ``reflection_accuracy``, ``no_reflection_accuracy`` and ``reflection_n`` of
    ``results`` ({} when the task has no ``is_reflection``). A failed request does not reflect."""
    detect = getattr(task, "is_reflection", None)
    if detect is None:
        return {}
    flags = [r.error is None and bool(detect(r.reasoning)) for r in results]
    with_ = [r.correct for r, f in zip(results, flags) if f]
    without = [r.correct for r, f in zip(results, flags) if not f]
    return {"reflection": _mean(flags) or 0.0, "reflection_accuracy": _mean(with_),
            "no_reflection_accuracy": _mean(without), "reflection_n": len(with_)}


def notation_metrics(task, results: Sequence) -> dict:
    """``mixed_notation``: the share of ``results`` whose reasoning mixes notations ({} when the task
    has no ``notation_mix``)."""
    detect = getattr(task, "notation_mix", None)
    if detect is None:
        return {}
    return {"mixed_notation": _mean([r.error is None and bool(detect(r.reasoning)) for r in results]) or 0.0}


def group_metrics(results: Sequence, equivalent: Callable[[str, str], bool] | None = None) -> dict:
    """``n``, ``pass@1``, ``pass@1_stderr``, ``cons@k``, ``mean_length``, ``thinking`` and
    ``truncated`` of the samples of a group of problems (k: the samples per problem)."""
    by_problem: dict[int, list] = {}
    for r in sorted(results, key=lambda r: (r.problem, r.sample)):
        by_problem.setdefault(r.problem, []).append(r)
    groups = list(by_problem.values())
    known = [r.length for r in results if r.error is None and r.length >= 0]
    k = len(results) // max(1, len(groups))
    vote = {"equivalent": equivalent} if equivalent is not None else {}
    out = {"n": len(groups), "pass@1": _mean([r.correct for r in results]) or 0.0,
           "pass@1_stderr": eval_metrics.pass1_stderr([sum(r.correct for r in g) / len(g) for g in groups])}
    if groups:
        out[f"cons@{k}"] = _mean([eval_metrics.cons_at_k([r.extracted for r in g], [r.correct for r in g], **vote)
                                  for g in groups])
    out.update({"mean_length": _mean(known) or 0.0, "thinking": _mean([r.thinking for r in results]) or 0.0,
                "truncated": _mean([r.finish_reason == "length" for r in results]) or 0.0})
    return out


def level_of(example) -> Any:
    """An example's difficulty level (its ``metadata['level']``), or ``None``."""
    return (getattr(example, "metadata", None) or {}).get("level")


def by_level(task, examples: Sequence, results: Sequence) -> dict[str, dict]:
    """Per difficulty level (``str(level)``, in numeric order): ``group_metrics`` plus the task's
    reflection and notation metrics; {} when no example has a level. ``results[i].problem`` indexes
    ``examples``."""
    levels: dict[Any, list] = {}
    for r in results:
        level = level_of(examples[r.problem]) if 0 <= r.problem < len(examples) else None
        if level is not None:
            levels.setdefault(level, []).append(r)
    order = sorted(levels, key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))
    equivalent = answer_equivalence(task)
    return {str(v): {**group_metrics(levels[v], equivalent), **reflection_metrics(task, levels[v]),
                     **notation_metrics(task, levels[v])} for v in order}


def behaviour_metrics(task, examples: Sequence, results: Sequence) -> dict:
    """Everything this module measures for one evaluation of ``task`` on ``examples`` (see the module
    docstring); {} for a task with neither detectors nor levels."""
    out = {**reflection_metrics(task, results), **notation_metrics(task, results)}
    levels = by_level(task, examples, results)
    if levels:
        out["by_level"] = levels
    return out


RECORD_KEYS = ("reflection", "reflection_accuracy", "no_reflection_accuracy", "mixed_notation")
LEVEL_RECORD_KEYS = ("pass@1", "mean_length", "reflection")


def metrics_record(m: dict) -> dict:
    """The ``metrics.jsonl`` fields of these measurements in one evaluation's metrics ``m``:
    ``eval/cons@k``, ``eval/reflection``, ``eval/reflection_accuracy``, ``eval/no_reflection_accuracy``,
    ``eval/mixed_notation`` and ``eval/level<L>/{pass@1,mean_length,reflection}``; a value that is
    missing or ``None`` (no completion to measure) is left out."""
    out = {f"eval/{k}": v for k, v in m.items() if k.startswith("cons@") and v is not None}
    out.update({f"eval/{k}": m[k] for k in RECORD_KEYS if m.get(k) is not None})
    for level, block in (m.get("by_level") or {}).items():
        out.update({f"eval/level{level}/{k}": block[k] for k in LEVEL_RECORD_KEYS if block.get(k) is not None})
    return out
