"""``results.md``: evaluation numbers as Markdown tables, ready to paste into a paper or README.

One main table (a row per task: problems, pass@1 ± standard error, cons@k, pass@k for k = 2, 4,
8, … and k, mean length, truncated share, failed requests), the settings line that produced it,
a subject x level table for tasks whose problems carry them (MATH), and the failed requests by
kind. Percentages as DeepSeek-R1's tables print them (one decimal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nanoseek.runs.report import markdown_table


def _pct(x: Any) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{100 * x:.1f}"


def _shown_ks(k: int) -> list[int]:
    ks, p = [], 2
    while p < k:
        ks.append(p)
        p *= 2
    return ks + ([k] if k >= 2 else [])


def settings_line(view: Mapping[str, Any]) -> str:
    """One line saying how the numbers were made."""
    who = (f"endpoint `{view['endpoint']}`, model `{view['model']}`" if view.get("endpoint")
           else f"model `{view.get('model')}`")
    style = {"r1": "R1 chat prompt (answer in \\boxed{})", "r1_zero": "R1-Zero template (answer in <answer> tags)"}
    parts = [who, f"k = {view.get('samples')} samples per problem", f"temperature {view.get('temperature')}",
             f"top-p {view.get('top_p')}", f"max tokens {view.get('max_tokens')}", f"seed {view.get('seed')}",
             style.get(view.get("style"), str(view.get("style")))]
    if view.get("instruction") not in (None, "auto"):
        parts.append(f"instruction: {view['instruction']!r}")
    return " · ".join(parts)


def main_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The table of every task (see the module docstring)."""
    k = max((m.get("samples", 1) for m in metrics.values()), default=1)
    ks = _shown_ks(k)
    cons_keys = {key for m in metrics.values() for key in m if key.startswith("cons@")}
    cons_header = next(iter(cons_keys)) if len(cons_keys) == 1 else "cons@k"
    headers = ["task", "problems", "pass@1 (%)", f"{cons_header} (%)"] + [f"pass@{j} (%)" for j in ks] + \
        ["mean length", "truncated (%)", "failed"]
    rows = []
    for name, m in metrics.items():
        se = m.get("pass@1_stderr")
        p1 = _pct(m.get("pass@1")) + ("" if se is None else f" ± {100 * se:.1f}")
        cons = next((v for key, v in m.items() if key.startswith("cons@")), None)
        pk = m.get("pass@k") or {}
        rows.append([name, m.get("n"), p1, _pct(cons)] + [_pct(pk.get(str(j))) for j in ks] +
                    [f"{m.get('mean_length', 0):.1f}", _pct(m.get("truncated")), m.get("failed", 0)])
    return markdown_table(headers, rows, align="l" + "r" * (len(headers) - 1))


def subject_level_table(cells: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """pass@1 (%) by subject (rows) and level (columns), with the problem count in brackets."""
    cols: list[str] = []
    for row in cells.values():
        cols += [c for c in row if c not in cols]
    cols = sorted((c for c in cols if c != "all"), key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
    cols.append("all")
    rows = []
    for subject, row in cells.items():
        rows.append([subject] + [f"{_pct(row[c]['pass@1'])} ({row[c]['n']})" if c in row else "–" for c in cols])
    headers = ["subject"] + [f"level {c}" if c != "all" else "all" for c in cols]
    return markdown_table(headers, rows, align="l" + "r" * len(cols))


def results_markdown(metrics: Mapping[str, Mapping[str, Any]], view: Mapping[str, Any]) -> str:
    """The whole results.md text."""
    lines = ["# Evaluation results", "", settings_line(view), "", main_table(metrics),
             "pass@1: mean correctness over the k samples of each problem, averaged over problems "
             "(± one standard error across problems), as DeepSeek-R1 reports it (R1 paper, sec. 3). "
             "pass@k: the unbiased estimator of Chen et al. (2021). cons@k: majority vote over the k "
             "extracted final answers (equivalent answers grouped, ties to the first). Failed "
             "requests count as wrong answers.", ""]
    for name, m in metrics.items():
        cells = m.get("by_subject_level")
        if cells:
            lines += [f"## {name}: pass@1 (%) by subject and level", "", subject_level_table(cells)]
    failed = {name: m for name, m in metrics.items() if m.get("failed")}
    if failed:
        lines += ["## Failed requests", "",
                  markdown_table(["task", "failed", "by kind"],
                                 [[n, m["failed"], ", ".join(f"{k}: {v}" for k, v in (m.get("errors") or {}).items())]
                                  for n, m in failed.items()], align="lrl"),
                  "Rerun the same command with the same --out to retry them.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
