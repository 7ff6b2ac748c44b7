"""The run directory every training command writes.

Layout (``RUN_DIR/``)::

    config.toml          the resolved config of this run (see ``RunDir.write_config``)
    metrics.jsonl        one JSON object per step, each with an integer "step"
    samples.jsonl        sampled completions (prompt, completion, reward, step, ...)
    checkpoints/step-N/  a Hugging Face model folder plus trainer_state/, written atomically
    checkpoints/latest   a text file naming the newest complete checkpoint ("step-N")
    plots/               reward.png, accuracy.png, length.png, ...
    report.md            what a person reads first
    summary.json         the final numbers (base vs. final, wall time, steps)
    commands.json        the command that started the run, then each command that resumed it

Everything here is crash-safe: log lines are flushed and fsync'ed as they are appended, whole
files are replaced atomically (``nanoseek.atomic``), and a checkpoint directory only appears
under its final name once complete, so a crash at any instant leaves a run that resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
import tomllib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from nanoseek.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, clear_temporaries
from nanoseek.atomic import fsync_dir, remove_path
from nanoseek.errors import NanoseekError
from nanoseek.runs.plain import drop_none, dumps_toml, to_jsonable

__all__ = ["RunDir", "default_path", "dumps_toml", "is_run_dir", "to_jsonable"]

_STEP_DIR = re.compile(r"^step-(\d+)$")


# --------------------------------------------------------------------------- the run directory


def default_path(recipe_name: str, root: str | os.PathLike = "runs") -> Path:
    """A fresh run directory name: ``<root>/<recipe>-<YYYYmmdd-HHMMSS>``.

    If that name is already taken (two runs started in the same second), ``-2``, ``-3``, ... is
    appended. Nothing is created.
    """
    base = Path(root) / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like a nanoseek run directory (a config file or ``checkpoints/``)."""
    p = Path(path)
    names = ("config.toml", "config.json", "checkpoints")
    return p.is_dir() and any((p / n).exists() for n in names)


def _append_line(path: Path, line: str) -> None:
    """Append one line durably. A torn last line (crash mid-write) is closed off first."""
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file; malformed lines (a torn write after a crash) are skipped with a
    warning. A missing file reads as empty."""
    if not path.exists():
        return []
    records, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in filter(str.strip, f):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    if bad:
        warnings.warn(f"{path}: skipped {bad} malformed line(s)", RuntimeWarning, stacklevel=3)
    return records


class RunDir:
    """A run directory (see the module docstring for the layout).

    ``RunDir(path)`` only wraps a path; use ``RunDir.create`` to start or resume a run.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.samples_path = self.path / "samples.jsonl"
        self.checkpoints_path = self.path / "checkpoints"
        self.plots_dir = self.path / "plots"
        self.report_path = self.path / "report.md"
        self.summary_path = self.path / "summary.json"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        """The config file in use: ``config.toml``, else ``config.json`` if only that exists."""
        toml_path = self.path / "config.toml"
        json_path = self.path / "config.json"
        return json_path if json_path.exists() and not toml_path.exists() else toml_path

    default_path = staticmethod(default_path)

    # ---------------------------------------------------------------- create / resume
    @classmethod
    def create(
        cls, path: str | os.PathLike, config: Mapping[str, Any] | None, resume: bool = False
    ) -> RunDir:
        """Start a new run in ``path``, or continue the run already there with ``resume=True``.

        A new run needs ``path`` to be missing or an empty directory; it is created with
        ``checkpoints/`` and ``plots/`` and ``config`` is written (``write_config``). A non-empty
        directory is never overwritten.

        With ``resume=True``, ``path`` must hold a run (a config file). If ``config`` is given and
        differs from the stored one, it replaces it and the previous one is kept as
        ``config.previous.toml`` (or ``.json``); ``config=None`` keeps the stored config. The
        temporary files and folders a killed run left (``nanoseek.atomic.clear_temporaries``) are
        removed from the run directory, ``checkpoints/`` and ``plots/``.

        Raises ``NanoseekError`` if ``path`` is a file, if it is a non-empty directory and
        ``resume`` is false, or if ``resume`` is true and ``path`` or its config is missing or
        unreadable (an empty, binary or malformed config is never replaced).
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise NanoseekError(f"run directory {path} is a file, not a directory")
        run = cls(path)
        if not resume:
            if path.is_dir() and any(path.iterdir()):
                raise NanoseekError(
                    f"run directory {path} is not empty; pass --resume to continue it "
                    "or choose another --out"
                )
            run.write_config(config or {})  # first: a run with a config can always be resumed
            run.checkpoints_path.mkdir(exist_ok=True)
            run.plots_dir.mkdir(exist_ok=True)
            fsync_dir(path.parent)
            return run
        if not path.is_dir():
            raise NanoseekError(f"cannot resume: run directory {path} does not exist")
        if not run.config_path.exists():
            raise NanoseekError(
                f"cannot resume: {path} has no config.toml or config.json, so it is not a "
                "nanoseek run directory"
            )
        stored = drop_none(run.read_config())  # first: an unreadable config stops here, untouched
        run.checkpoints_path.mkdir(exist_ok=True)
        run.plots_dir.mkdir(exist_ok=True)
        for folder in (run.path, run.checkpoints_path, run.plots_dir):
            clear_temporaries(folder)
        if config is not None and drop_none(to_jsonable(config)) != stored:
            old_path = run.config_path  # keep a copy first: a crash must leave a config behind
            prev = old_path.with_name(f"config.previous{old_path.suffix}")
            atomic_write_bytes(prev, old_path.read_bytes())
            run.write_config(config)
        return run

    # ---------------------------------------------------------------- config
    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write the resolved config atomically as ``config.toml`` and return its path.

        ``None`` entries are left out (see ``dumps_toml``), so the file is a recipe that
        ``nanoseek ... --config`` accepts. A config TOML cannot hold at all (``None`` inside a
        list) is written as ``config.json`` instead. The other format's file, if any, is removed.
        Raises ``TypeError`` for values that are neither TOML nor JSON (see ``to_jsonable``).
        """
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        toml_path, json_path = self.path / "config.toml", self.path / "config.json"
        try:
            written = atomic_write_text(toml_path, dumps_toml(config))
            stale = json_path
        except TypeError:
            written = atomic_write_json(json_path, to_jsonable(config))
            stale = toml_path
        if stale.exists():
            stale.unlink()
        return written

    def read_config(self) -> dict:
        """Read the stored config (TOML via ``tomllib``, or JSON).

        Raises ``NanoseekError`` (one line naming the file) if there is none, or it is empty, not
        UTF-8 text, not valid TOML/JSON or not a table: a run never continues on defaults
        standing in for a config it cannot read.
        """
        path = self.config_path
        if not path.exists():
            raise NanoseekError(f"{self.path} has no config.toml or config.json")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except UnicodeDecodeError:
            raise NanoseekError(f"cannot read {path}: it is not UTF-8 text (a damaged file?)") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise NanoseekError(f"cannot parse {path}: {e}") from None
        except OSError as e:
            raise NanoseekError(f"cannot read {path}: {e.strerror or e}") from None
        if not isinstance(data, dict):
            raise NanoseekError(f"cannot parse {path}: it holds a {type(data).__name__}, not a table")
        if not data:
            raise NanoseekError(f"{path} is empty: restore the run's config (a copy is in each checkpoint's "
                                "trainer_state/) or start a new run")
        return data

    # ---------------------------------------------------------------- commands
    @property
    def commands_path(self) -> Path:
        """``commands.json``: the command that started the run, then each one that resumed it."""
        return self.path / "commands.json"

    def commands(self) -> list[str]:
        """The commands recorded by ``record_command``, the original first (empty when none)."""
        try:
            data = json.loads(self.commands_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return []  # none yet (or unreadable: the next record_command writes it anew)
        return [c for c in data if isinstance(c, str)] if isinstance(data, list) else []

    def record_command(self, command: str) -> list[str]:
        """Append ``command`` to ``commands.json`` (atomically) and return every recorded command,
        the one that started the run first: reports show that one, not the last ``--resume``."""
        commands = self.commands() + [command]
        atomic_write_json(self.commands_path, commands)
        return commands

    # ---------------------------------------------------------------- logs
    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one step's metrics as a JSON line (flushed and fsync'ed).

        ``record`` must hold an integer ``"step"``; torch/numpy scalars are converted and
        non-finite floats stored as null (``to_jsonable``). Raises ``ValueError`` without a step,
        ``TypeError`` for an unstorable value.
        """
        rec = to_jsonable(dict(record))
        step = rec.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"a metrics record needs an integer 'step', got {step!r}")
        self.path.mkdir(parents=True, exist_ok=True)
        _append_line(self.metrics_path, json.dumps(rec, ensure_ascii=False))

    def log_samples(self, records: Iterable[Mapping[str, Any]], step: int | None = None) -> None:
        """Append sample records (prompt, completion, reward, ...) as JSON lines.

        If ``step`` is given it is stored in every record (so ``truncate_logs_after`` can drop
        them on resume). Raises ``TypeError`` for an unstorable value.
        """
        lines = []
        for r in records:
            rec = to_jsonable(dict(r))
            if step is not None:
                rec["step"] = int(step)
            lines.append(json.dumps(rec, ensure_ascii=False))
        if lines:
            self.path.mkdir(parents=True, exist_ok=True)
            _append_line(self.samples_path, "\n".join(lines))

    def read_metrics(self) -> list[dict]:
        """All metrics records in file order (malformed lines skipped with a warning)."""
        return _read_jsonl(self.metrics_path)

    def read_samples(self) -> list[dict]:
        """All sample records in file order (malformed lines skipped with a warning)."""
        return _read_jsonl(self.samples_path)

    def truncate_logs_after(self, step: int) -> None:
        """Drop records with ``"step" > step`` from metrics.jsonl and samples.jsonl.

        Used on resume from checkpoint ``step``: the steps after it are about to be redone. Each
        file is rewritten atomically; malformed (torn) lines are dropped too; records without a
        step are kept.
        """
        self.drop_records(lambda r: isinstance(r.get("step"), (int, float)) and r["step"] > step)

    def put_metrics(self, record: Mapping[str, Any], replaces) -> None:
        """Log ``record`` in place of the first metrics record for which ``replaces(r)`` is true (the
        others that match go): a value redone after a resume keeps its place in the file. Without a
        match it is appended, as ``log_metrics`` does."""
        records = self.read_metrics()
        first = next((i for i, r in enumerate(records) if replaces(r)), None)
        if first is None:
            self.log_metrics(record)
            return
        lines = [json.dumps(to_jsonable(dict(record)) if i == first else r, ensure_ascii=False)
                 for i, r in enumerate(records) if i == first or not replaces(r)]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in lines))

    def drop_records(self, drop, samples: bool = True) -> int:
        """Remove the records for which ``drop(record)`` is true from metrics.jsonl (and
        samples.jsonl unless ``samples`` is false), rewriting each file atomically only when
        something goes (malformed lines go too); return how many records went."""
        gone = 0
        for path in (self.metrics_path, self.samples_path) if samples else (self.metrics_path,):
            if not path.exists():
                continue
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            records = _read_jsonl(path)
            kept = [json.dumps(r, ensure_ascii=False) for r in records if not drop(r)]
            if len(kept) != len(lines):
                gone += len(records) - len(kept)
                atomic_write_text(path, "".join(line + "\n" for line in kept))
        return gone

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_dir(self, step: int) -> Path:
        """The folder of the checkpoint at ``step``: ``checkpoints/step-<step>``."""
        return self.checkpoints_path / f"step-{int(step)}"

    @contextlib.contextmanager
    def checkpoint(self, step: int) -> Iterator[Path]:
        """Context manager writing checkpoint ``step`` atomically; yields the temp folder.

        On success the folder becomes ``checkpoints/step-<step>`` and ``latest`` names it;
        on an exception nothing changes. See ``nanoseek.atomic.atomic_dir``.
        """
        with atomic_dir(self.checkpoint_dir(step)) as tmp:
            yield tmp
        self.mark_latest(step)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as ``(step, path)``, oldest first; ``.tmp-*`` folders ignored."""
        if not self.checkpoints_path.is_dir():
            return []
        matches = ((_STEP_DIR.match(p.name), p) for p in self.checkpoints_path.iterdir())
        return sorted((int(m.group(1)), p) for m, p in matches if m and p.is_dir())

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder, or ``None`` if there is none.

        Reads ``checkpoints/latest``; if it is missing, unreadable or names a folder that does not
        exist, falls back to the highest ``step-N`` folder. Half-written ``.tmp-*`` folders are
        never returned.
        """
        marker = self.checkpoints_path / "latest"
        try:
            name = marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if _STEP_DIR.match(name) and (self.checkpoints_path / name).is_dir():
            return self.checkpoints_path / name
        found = self.checkpoints()
        return found[-1][1] if found else None

    def latest_step(self) -> int | None:
        """The step of ``latest_checkpoint()``, or ``None``."""
        ckpt = self.latest_checkpoint()
        return int(_STEP_DIR.match(ckpt.name).group(1)) if ckpt else None

    def mark_latest(self, step: int) -> None:
        """Atomically point ``checkpoints/latest`` at ``step-<step>``.

        Raises ``FileNotFoundError`` if that checkpoint folder does not exist.
        """
        ckpt = self.checkpoint_dir(step)
        if not ckpt.is_dir():
            raise FileNotFoundError(f"no checkpoint folder {ckpt}")
        atomic_write_text(self.checkpoints_path / "latest", ckpt.name + "\n")

    def prune_checkpoints(self, keep_last: int | None) -> list[Path]:
        """Delete all but the newest ``keep_last`` checkpoints; return the deleted folders.

        The checkpoint named by ``latest`` is always kept. Leftover ``.tmp-*`` folders from
        processes that are no longer running are removed too. ``keep_last=None`` keeps all.
        Raises ``ValueError`` if ``keep_last < 1``.
        """
        if keep_last is None:
            return []
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 (or None to keep all), got {keep_last}")
        latest = self.latest_checkpoint()
        found = self.checkpoints()
        removed = []
        for _, p in found[: max(0, len(found) - keep_last)]:
            if latest is not None and p == latest:
                continue
            remove_path(p)
            removed.append(p)
        clear_temporaries(self.checkpoints_path)
        return removed

    # ---------------------------------------------------------------- summary
    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` atomically (values via ``to_jsonable``); return its path."""
        return atomic_write_json(self.summary_path, to_jsonable(dict(summary)))

    def read_summary(self) -> dict | None:
        """The stored summary, or ``None`` if there is none yet."""
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text(encoding="utf-8"))

