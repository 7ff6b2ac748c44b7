"""``report.md`` and ``summary.json`` of an R1 run: every stage's held-out numbers beside R1-Zero's.

The table has one row per stage (base, R1-Zero, then the four R1 stages) with pass@1, well-formed
rate, thinking share, mean completion length and the stage's wall time; below it the rejection
sampling counts (what each filter dropped), a plot of pass@1 after each stage, and links to each
stage's own report (training curves, sample completions). The stage table (names and titles) is the
pipeline's own (``R1Pipeline.stages`` / ``titles``), read from the pipeline object given.
"""

from __future__ import annotations

from pathlib import Path

from nanoseek.atomic import atomic_write_text
from nanoseek.recipes.common import read_json
from nanoseek.recipes.rejection import counts_table
from nanoseek.runs.plots import PlotSpec, plot_run
from nanoseek.runs.report import format_duration, markdown_table

ROW_KEYS = (("pass@1", "pass@1"), ("well-formed", "well_formed"), ("thinking", "thinking"), ("mean length", "mean_length"))


def stage_rows(pipe) -> list[dict]:
    """One dict per stage of ``pipe.stages`` that has an evaluation: ``stage``, ``title``, metrics,
    ``wall_seconds``."""
    walls = read_json(pipe.path / "stage_seconds.json") or {}
    rows = []
    for stage in pipe.stages:
        m = pipe.evaluation(stage)
        if m is None:
            continue
        rows.append({"stage": stage, "title": pipe.titles[stage], **{k: m.get(k) for _, k in ROW_KEYS},
                     "n": m.get("n"), "samples": m.get("samples"), "wall_seconds": walls.get(stage)})
    return rows


def write_r1_report(pipe, wall: float) -> dict:
    """Write ``summary.json``, ``plots/stages.png`` and ``report.md`` for the pipeline's run; return the summary."""
    run, path = pipe.run, pipe.path
    rows = stage_rows(pipe)
    by = {r["stage"]: r for r in rows}
    r1_stages = [s for s in pipe.stages[2:] if s in by]  # after base and zero: the four R1 stages
    walls = read_json(path / "stage_seconds.json") or {}
    summary = {"task": pipe.task.name, "command": pipe.command, "stages": by,
               "base": pipe.evaluation("base"), "zero": pipe.evaluation("zero") if pipe.cfg.compare_zero else None,
               "final": pipe.evaluation(r1_stages[-1]) if r1_stages else None, "final_stage": r1_stages[-1] if r1_stages else None,
               "rejection": read_json(path / "rejection" / "counts.json"), "cold_start_data": read_json(path / "cold_start_counts.json"),
               "wall_seconds": round(sum(walls.values()), 1), "wall_seconds_this_call": round(wall, 1)}

    r1_rows = [r for r in rows if r["stage"] != "zero"]  # x = 0 (base), 1..4 (the R1 stages)
    records = [{"step": i, "r1/pass@1": r["pass@1"], "r1/well_formed": r["well_formed"], "r1/thinking": r["thinking"]}
               for i, r in enumerate(r1_rows)]
    if "zero" in by and "base" in by:  # R1-Zero: straight from the base to its final numbers, drawn at x = 4
        records[0]["r1_zero/pass@1"] = by["base"]["pass@1"]
        records.append({"step": 4, "r1_zero/pass@1": by["zero"]["pass@1"]})
    spec = PlotSpec("Held-out metrics: base (0), R1 stages 1-4, and R1-Zero from the same base", "share",
                    ("r1/pass@1", "r1/well_formed", "r1/thinking", "r1_zero/pass@1"), sparse=True, unit_range=True)
    plots = plot_run(records, run.plots_dir, series={"stages": spec}) if records else []

    lines = [f"# nanoseek r1: {pipe.task.name}", "",
             f"Run directory: `{path}` · wall time: **{format_duration(summary['wall_seconds'])}**", "",
             "```bash", pipe.command, "```", "", "## Held-out results after every stage", ""]
    e = pipe.cfg.eval
    table = [[r["title"]] + [r[k] for _, k in ROW_KEYS] + [format_duration(r["wall_seconds"])] for r in rows]
    lines += [markdown_table(["stage"] + [h for h, _ in ROW_KEYS] + ["stage wall time"], table, align="lrrrrr"),
              f"Each row: {rows[0]['n'] if rows else '?'} held-out problems × {e.samples} samples, temperature "
              f"{e.temperature}, top-p {e.top_p}, at most {e.max_new_tokens} new tokens. The R1-Zero row is GRPO from "
              "the same base (the `nanoseek zero` recipe); stages 1-4 are the R1 pipeline (R1 paper v1 sec. 2.3).", ""]
    f, z = summary["final"], summary["zero"]
    if f and z:
        verdict = "at least" if f["pass@1"] >= z["pass@1"] else "BELOW"
        lines += [f"- Final R1 pass@1 **{f['pass@1']:.3f}** is {verdict} R1-Zero's **{z['pass@1']:.3f}**; "
                  f"well-formed {f['well_formed']:.3f} vs {z['well_formed']:.3f}.", ""]
    counts = summary["rejection"]
    if counts:
        lines += ["## Rejection sampling (stage 3)", "",
                  f"{counts['kept']} reasoning samples kept from {counts['candidates']} candidates, plus "
                  f"{counts.get('non_reasoning', 0)} non-reasoning chats; SFT of the base model on "
                  f"{counts.get('sft_examples', counts['kept'])} chats.", "", counts_table(counts)]
    if summary["cold_start_data"]:
        cs = summary["cold_start_data"]
        lines += [f"Cold-start data ({pipe.cfg.cold_start.source}): "
                  f"{cs.get('kept', '?')} chats kept of {cs.get('candidates', cs.get('kept', '?'))}.", ""]
    for p in plots:
        lines += ["## Curves", "", f"![{Path(p).stem}](plots/{Path(p).name})", ""]
    links = [f"- {by[s]['title'] if s in by else s}: [`{s}/report.md`]({s}/report.md)"
             for s in pipe.stages[1:] if (path / s / "report.md").exists()]
    if links:
        lines += ["## Stage reports (training curves, sample completions)", ""] + links + [""]
    atomic_write_text(run.report_path, "\n".join(lines).rstrip("\n") + "\n")
    run.write_summary(summary)  # last: a resumed run that finds it (and every stage done) is complete
    return summary
