"""The output directory of ``nanoseek eval`` (``--out DIR``): resumable and crash-safe.

Layout::

    settings.json   the sampling settings every sample depends on (model or endpoint, template,
                    temperature, top-p, max tokens, seed) and the last command
    samples.jsonl   one line per finished sample, appended as it finishes: task, problem, sample,
                    id, prompt, reference, reasoning, answer, extracted, correct, ... (a failed
                    request is logged with its error and retried on a rerun)
    results.json    {task: {"pass@1": …, "cons@k": …, "pass@k": {"1": …}, "n": …, …}}; with one task
                    also that task's "pass@1" and "cons@k" (the real k) at the top level
    results.md      the same as tables a person can paste into a paper or README

A rerun with the same settings reuses every finished sample (later lines win over earlier ones);
a rerun with different settings is refused with a message naming what differs. Whole files are
replaced atomically (``nanoseek.atomic``) and sample lines are fsync'ed as they are appended, so a
crash at any instant loses at most the samples in flight.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from nanoseek.atomic import atomic_write_json, atomic_write_text
from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import GradedSample, split_think_block
from nanoseek.evaluation.report import results_markdown
from nanoseek.runs.rundir import to_jsonable

SETTINGS, SAMPLES, RESULTS_JSON, RESULTS_MD = "settings.json", "samples.jsonl", "results.json", "results.md"


def record_of(task: str, r: GradedSample) -> dict:
    """The samples.jsonl line of one graded sample."""
    reasoning, answer = split_think_block(r.completion, False)
    if r.reasoning is not None:  # the sampler knew better (a prefilled or server-side think block)
        reasoning = r.reasoning
        if "</think>" not in r.completion:  # the think block never closed: no answer part
            answer = ""
    return {"task": task, "problem": r.problem, "sample": r.sample, "id": r.id, "prompt": r.prompt,
            "reference": r.answer, "reasoning": reasoning, "answer": answer, "extracted": r.extracted,
            "correct": r.correct, "well_formed": r.well_formed, "thinking": r.thinking, "length": r.length,
            "finish_reason": r.finish_reason, "error": r.error, "completion": r.completion}


def result_of(rec: dict) -> GradedSample:
    """The ``GradedSample`` back from a samples.jsonl line (inverse of ``record_of``)."""
    return GradedSample(rec["problem"], rec["sample"], rec["id"], rec["prompt"], rec["reference"], rec["completion"],
                        rec["extracted"], rec["correct"], rec["well_formed"], rec["thinking"], rec["length"],
                        rec["finish_reason"], rec.get("reasoning"), rec.get("error"))


def headline(metrics: dict[str, dict]) -> dict:
    """The top-level numbers of results.json: the one task's ``pass@1`` and ``cons@k`` ({} for
    several tasks, whose numbers are only under their names)."""
    if len(metrics) != 1:
        return {}
    m = next(iter(metrics.values()))
    return {k: v for k, v in m.items() if k == "pass@1" or k.startswith("cons@")}


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k} {new.get(k)!r} (the directory has {old.get(k)!r})" for k in keys if old.get(k) != new.get(k)]


class EvalDir:
    """An evaluation output directory; ``EvalDir.open`` checks it, the methods read and write it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | os.PathLike, sampling: dict, command: str = "nanoseek eval") -> EvalDir:
        """Start or continue an evaluation in ``path`` with these sampling settings.

        Raises ``NanoseekError`` when ``path`` is a file, a non-empty directory that is not an
        evaluation, or an evaluation made with different sampling settings.
        """
        d = cls(Path(path))
        if d.path.exists() and not d.path.is_dir():
            raise NanoseekError(f"--out {d.path} is a file, not a directory")
        settings_path = d.path / SETTINGS
        if settings_path.exists():
            try:
                stored = json.loads(settings_path.read_text(encoding="utf-8"))["sampling"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise NanoseekError(f"cannot read {settings_path}: {e}") from None
            diff = _differences(stored, json.loads(json.dumps(sampling)))
            if diff:
                raise NanoseekError(f"--out {d.path} holds an evaluation made with other settings: " + "; ".join(diff)
                                    + ". Use the same settings to continue it, or another --out")
        elif d.path.is_dir() and any(d.path.iterdir()):
            raise NanoseekError(f"--out {d.path} is not empty and holds no evaluation ({SETTINGS}); choose another --out")
        atomic_write_json(settings_path, {"sampling": sampling, "command": command})
        return d

    # -------------------------------------------------------------------------- samples
    def load_samples(self) -> dict[tuple[str, int, int], dict]:
        """Finished-sample records by ``(task, problem, sample)``; later lines win. A torn last line
        (a crash mid-write) is skipped with a warning."""
        path = self.path / SAMPLES
        out: dict[tuple[str, int, int], dict] = {}
        if not path.exists():
            return out
        bad, good = 0, []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    out[(rec["task"], int(rec["problem"]), int(rec["sample"]))] = rec
                    good.append(line if line.endswith("\n") else line + "\n")
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    bad += 1
        if bad:  # drop them for good (atomically), so the warning is given once
            warnings.warn(f"{path}: skipped {bad} malformed line(s)", RuntimeWarning, stacklevel=2)
            atomic_write_text(path, "".join(good))
        return out

    def append(self, records: list[dict]) -> None:
        """Append sample records durably (one fsync per call); a torn last line is closed first."""
        if not records:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with open(self.path / SAMPLES, "ab+") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    # -------------------------------------------------------------------------- results
    def write_results(self, metrics: dict[str, dict], view: dict) -> None:
        """Write results.json and results.md atomically."""
        atomic_write_json(self.path / RESULTS_JSON, to_jsonable({**headline(metrics), **metrics}))
        atomic_write_text(self.path / RESULTS_MD, results_markdown(metrics, view))
