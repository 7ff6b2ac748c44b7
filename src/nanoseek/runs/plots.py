"""Training curves as PNG files: reward, held-out accuracy, completion length, thinking share.

``plot_run(run.read_metrics(), run.plots_dir)`` draws one 800×500 figure per quantity against the
step, from the records of ``metrics.jsonl``. matplotlib is imported only when plotting, and only
its object-oriented API is used (``Figure`` with the Agg canvas, never ``pyplot``), so plotting
touches no global state and needs no display.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoseek.atomic import atomic_write_bytes

__all__ = ["PlotSpec", "DEFAULT_PLOTS", "plot_run", "series_of"]


@dataclass(frozen=True)
class PlotSpec:
    """One figure: which metric keys to draw and how to label it.

    ``keys`` are exact metric names or regular expressions (``re.fullmatch``) when ``pattern``
    is true. ``sparse`` draws markers on every point (for metrics logged every N steps);
    ``unit_range`` fixes the y axis to [0, 1] when all values lie there.
    """

    title: str
    ylabel: str
    keys: tuple[str, ...]
    pattern: bool = False
    sparse: bool = False
    unit_range: bool = False
    exclude: tuple[str, ...] = field(default=())


# The default figures. "reward/std" and similar statistics are not reward functions, so they are
# excluded from the reward plot (std is drawn as a band around the mean instead).
_STATS = r".*/(std|min|max|var)$"
DEFAULT_PLOTS: dict[str, PlotSpec] = {
    "reward": PlotSpec(
        "Reward", "reward", (r"reward/mean", r"reward/[^/]+"), pattern=True, exclude=(_STATS,)
    ),
    "accuracy": PlotSpec(
        "Held-out accuracy", "pass@1", (r"eval/pass@1", r"eval/.+/pass@1", r"eval/cons@\d+"),
        pattern=True, sparse=True, unit_range=True,
    ),
    "length": PlotSpec("Mean completion length", "tokens", ("completion/mean_length",)),
    "thinking": PlotSpec(
        "Thinking share of the completion", "fraction", ("completion/thinking",), unit_range=True
    ),
}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def series_of(metrics: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """The ``(steps, values)`` of one metric, skipping records without it or with a non-number.

    If a step appears twice (a resumed run whose log was not truncated), the later value wins.
    """
    by_step: dict[float, float] = {}
    for rec in metrics:
        step, value = _number(rec.get("step")), _number(rec.get(key))
        if step is not None and value is not None:
            by_step[step] = value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _matching_keys(metrics: Sequence[Mapping[str, Any]], spec: PlotSpec) -> list[str]:
    present: list[str] = []
    for rec in metrics:
        for k in rec:
            if k not in present:
                present.append(k)
    chosen: list[str] = []
    for want in spec.keys:  # the spec's order first (mean before the parts), then file order
        for k in present:
            hit = re.fullmatch(want, k) if spec.pattern else k == want
            if hit and k not in chosen and not any(re.fullmatch(x, k) for x in spec.exclude):
                chosen.append(k)
    return [k for k in chosen if series_of(metrics, k)[0]]


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average over what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _draw(metrics: Sequence[Mapping[str, Any]], spec: PlotSpec, keys: list[str]) -> bytes:
    from matplotlib.figure import Figure  # lazy: matplotlib takes ~0.5 s to import

    fig = Figure(figsize=(8, 5), dpi=100)  # 800×500 px
    ax = fig.subplots()
    all_values: list[float] = []
    for i, key in enumerate(keys):
        steps, values = series_of(metrics, key)
        all_values += values
        color = f"C{i % 10}"
        main = i == 0 and key.endswith("/mean")
        width = 2.2 if main else 1.5
        if spec.sparse or len(steps) < 3:
            ax.plot(steps, values, marker="o", markersize=5, lw=width, color=color, label=key)
        elif len(steps) > 30:  # noisy per-step values: faint raw line + moving average
            window = max(2, len(steps) // 20)
            ax.plot(steps, values, lw=0.8, alpha=0.3, color=color)
            ax.plot(steps, _smooth(values, window), lw=width, color=color,
                    label=f"{key} (avg over {window})")
        else:
            ax.plot(steps, values, lw=width, color=color, label=key)
        if main:  # ± one standard deviation of the reward within the batch
            std_key = key[: -len("mean")] + "std"
            s_steps, s_values = series_of(metrics, std_key)
            if s_steps:
                stds = dict(zip(s_steps, s_values))
                xs = [s for s in steps if s in stds]
                ys = [v for s, v in zip(steps, values) if s in stds]
                lo = [y - stds[x] for x, y in zip(xs, ys)]
                hi = [y + stds[x] for x, y in zip(xs, ys)]
                ax.fill_between(xs, lo, hi, color=color, alpha=0.12, lw=0, label=f"± {std_key}")
    if spec.unit_range and all_values and all(0.0 <= v <= 1.0 for v in all_values):
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(spec.title, fontsize=14)
    ax.set_xlabel("step", fontsize=12)
    ax.set_ylabel(spec.ylabel, fontsize=12)
    ax.grid(True, alpha=0.35)
    ax.tick_params(labelsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if len(keys) > 1 or spec.sparse:
        ax.legend(fontsize=10, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_run(
    metrics: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    series: Mapping[str, PlotSpec | Sequence[str]] | None = None,
) -> list[Path]:
    """Draw the training curves of a run as PNG files in ``out_dir``; return the written paths.

    ``metrics`` are the records of ``metrics.jsonl`` (each with ``"step"``). The default figures
    (``DEFAULT_PLOTS``) are ``reward.png`` ("reward/mean" and each "reward/<name>"),
    ``accuracy.png`` ("eval/pass@1", logged every N steps, drawn as points and line),
    ``length.png`` ("completion/mean_length") and ``thinking.png`` ("completion/thinking"). A
    figure whose keys never appear is skipped (so an empty log writes nothing).

    ``series`` adds figures or replaces default ones by file stem: a ``PlotSpec``, or a list of
    exact metric keys (titled after the stem). Each file is written atomically; an existing
    file of the same name is replaced. Raises ``OSError`` if ``out_dir`` cannot be written.
    """
    specs: dict[str, PlotSpec] = dict(DEFAULT_PLOTS)
    for stem, spec in (series or {}).items():
        if not isinstance(spec, PlotSpec):
            spec = PlotSpec(stem.replace("_", " ").capitalize(), "value", tuple(spec))
        specs[stem] = spec
    metrics = list(metrics)
    out_dir = Path(out_dir)
    written = []
    for stem, spec in specs.items():
        keys = _matching_keys(metrics, spec)
        if keys:
            written.append(atomic_write_bytes(out_dir / f"{stem}.png", _draw(metrics, spec, keys)))
    return written
