"""``report.md``: the page a person reads after a run.

It holds the title, the command and config, a base-vs-final table (pass@1, well-formed share,
thinking share, mean length), the training curves, a few completions from before and after
training, and the wall time and step count. ``markdown_table`` is shared with the evaluator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nanoseek.atomic import atomic_write_text
from nanoseek.errors import NanoseekError
from nanoseek.runs.rundir import RunDir

__all__ = ["markdown_table", "write_report", "format_duration", "BEFORE_AFTER_ROWS"]

# (label, summary key, decimals) of the before/after table.
BEFORE_AFTER_ROWS: tuple[tuple[str, str, int], ...] = (
    ("pass@1", "pass@1", 3),
    ("well_formed", "well_formed", 3),
    ("thinking", "thinking", 3),
    ("mean length", "mean_length", 2),
)
MAX_COMPLETION_CHARS = 2000
MAX_PROMPT_CHARS = 600
MAX_CONFIG_ROWS = 60


def _cell(value: Any, float_fmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = "–" if math.isnan(value) else format(value, float_fmt)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def markdown_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    float_fmt: str = ".3f",
    align: Sequence[str] | None = None,
) -> str:
    """A GitHub-flavoured Markdown table, one line per row, ending in a newline.

    Cells are ``str()``-ed (floats with ``float_fmt``, ``None`` and nan as "–"); ``|`` is escaped
    and newlines become ``<br>``. ``align`` gives "l", "r" or "c" per column; by default a column
    whose cells are all numbers is right-aligned. Raises ``ValueError`` if a row's length differs
    from the header's.
    """
    rows = [list(r) for r in rows]
    n = len(headers)
    for r in rows:
        if len(r) != n:
            raise ValueError(f"row has {len(r)} cells, the header has {n}: {r!r}")
    if align is None:
        align = [
            "r" if rows and all(_is_number(r[j]) or r[j] is None for r in rows) else "l"
            for j in range(n)
        ]
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(_cell(h, float_fmt) for h in headers) + " |",
        "| " + " | ".join(rule[a] for a in align) + " |",
    ]
    lines += ["| " + " | ".join(_cell(c, float_fmt) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def format_duration(seconds: float | None) -> str:
    """``3725.4`` → ``"1:02:05"``; under a minute → ``"42.0 s"``; ``None`` → ``"–"``."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _before_after(summary: Mapping[str, Any]) -> str:
    base = summary.get("base") or summary.get("before") or {}
    final = summary.get("final") or summary.get("after") or {}
    rows = []
    for label, key, decimals in BEFORE_AFTER_ROWS:
        b, f = base.get(key), final.get(key)
        change = f - b if _is_number(b) and _is_number(f) else None
        rows.append([
            label,
            "–" if not _is_number(b) else f"{b:.{decimals}f}",
            "–" if not _is_number(f) else f"{f:.{decimals}f}",
            "–" if change is None else f"{change:+.{decimals}f}",
        ])
    return markdown_table(["metric", "base", "final", "change"], rows, align="lrrr")


def _prompt_text(prompt: Any) -> str:
    """A chat prompt (list of messages) shows its last user message; text shows as is."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, Mapping)
                 and m.get("role") == "user"]
        return str(users[-1] if users else prompt)
    return str(prompt)


def _code_block(text: str) -> str:
    """Fence ``text`` with more backticks than any run of backticks inside it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _samples_section(samples: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    if not samples:
        return ["_No samples recorded._", ""]
    out = []
    for i, s in enumerate(samples[:limit], 1):
        completion = str(s.get("completion", ""))
        if len(completion) > MAX_COMPLETION_CHARS:
            extra = len(completion) - MAX_COMPLETION_CHARS
            completion = completion[:MAX_COMPLETION_CHARS] + f"\n… ({extra} more characters)"
        facts = []
        if _is_number(s.get("reward")):
            facts.append(f"reward **{s['reward']:.3f}**")
        if isinstance(s.get("rewards"), Mapping):
            facts += [f"{k} {v:.3f}" for k, v in s["rewards"].items() if _is_number(v)]
        for key in ("answer", "step"):
            if s.get(key) is not None:
                facts.append(f"{key} `{s[key]}`")
        prompt = " ".join(_prompt_text(s.get("prompt", "")).split())
        if len(prompt) > MAX_PROMPT_CHARS:
            prompt = prompt[:MAX_PROMPT_CHARS] + " …"
        out += [f"**Sample {i}.** {prompt}", "", _code_block(completion), ""]
        if facts:
            out += [" · ".join(facts), ""]
    return out


def write_report(
    run_dir: RunDir,
    *,
    title: str,
    summary: Mapping[str, Any],
    plots: Sequence[str | os.PathLike],
    samples_before: Sequence[Mapping[str, Any]],
    samples_after: Sequence[Mapping[str, Any]],
    notes: Sequence[str] = (),
    max_samples: int = 3,
) -> Path:
    """Write ``report.md`` in ``run_dir`` atomically and return its path.

    ``summary`` keys used (all optional): ``"command"`` (the command line), ``"config"`` (else
    the run's stored config is read), ``"base"`` and ``"final"`` (or ``"before"``/``"after"``):
    dicts with ``"pass@1"``, ``"well_formed"``, ``"thinking"``, ``"mean_length"``;
    ``"wall_time_s"`` (or ``"wall_seconds"``) and ``"steps"``. Other scalar entries are listed
    under "Other numbers". ``plots`` are embedded with links relative to the report. Sample
    records show ``"prompt"``, ``"completion"``, ``"reward"`` (and ``"rewards"``, ``"answer"``,
    ``"step"`` if present); at most ``max_samples`` of each. Raises ``OSError`` if the file
    cannot be written.
    """
    report = run_dir.report_path
    lines = [f"# {title}", ""]
    facts = [f"Run directory: `{run_dir.path}`"]
    if summary.get("steps") is not None:
        facts.append(f"steps: **{summary['steps']}**")
    wall = summary.get("wall_time_s", summary.get("wall_seconds"))
    facts.append(f"wall time: **{format_duration(wall)}**")
    lines += [" · ".join(facts), ""]
    if summary.get("command"):
        resumed = [f"# resumed with: {c}" for c in run_dir.commands()[1:]]
        lines += ["```bash", str(summary["command"]), *resumed, "```", ""]

    lines += ["## Before and after", "", _before_after(summary)]
    if notes:
        lines += [f"- {n}" for n in notes] + [""]

    if plots:
        lines += ["## Training curves", ""]
        for p in plots:
            rel = Path(os.path.relpath(Path(p).resolve(), report.parent.resolve())).as_posix()
            lines += [f"![{Path(p).stem}]({rel})", ""]

    lines += ["## Samples before training", ""] + _samples_section(samples_before, max_samples)
    lines += ["## Samples after training", ""] + _samples_section(samples_after, max_samples)

    skip = {"command", "config", "base", "final", "before", "after", "wall_time_s",
            "wall_seconds", "steps"}
    other = [(k, v) for k, v in _flatten({k: v for k, v in summary.items() if k not in skip})
             if v is None or isinstance(v, (str, int, float, bool))]
    if other:
        lines += ["## Other numbers", "", markdown_table(["name", "value"], other, float_fmt=".4g")]

    config = summary.get("config")
    if config is None:
        try:
            config = run_dir.read_config()
        except (NanoseekError, OSError) as e:  # a report is still written, saying why the config is missing
            config = None
            lines += ["## Configuration", "", f"Not shown: {e}", ""]
    if config:
        items = _flatten(config)
        shown = [(k, v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
                 for k, v in items[:MAX_CONFIG_ROWS]]
        more = f" ({len(items) - len(shown)} more in the file)" if len(items) > len(shown) else ""
        lines += [
            "## Configuration", "",
            f"The resolved config is in [`{run_dir.config_path.name}`]"
            f"({run_dir.config_path.name}){more}.", "",
            "<details><summary>all settings</summary>", "",
            markdown_table(["setting", "value"], shown, float_fmt="g", align="ll"),
            "</details>", "",
        ]
    return atomic_write_text(report, "\n".join(lines).rstrip("\n") + "\n")
