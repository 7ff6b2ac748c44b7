"""User tasks from a JSON-lines file (``--task path/to/file.jsonl``), and the shared JSONL reader.

Each line is one object with a ``prompt`` (str) and an ``answer`` (str or number) field; an ``id``
field is used when present, every other field becomes metadata (a reward-function column). A
malformed row raises ``NanoseekError`` naming the file and line. The same rows serve every split
(a user file is one set of problems: train on it or evaluate on it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from nanoseek.errors import NanoseekError
from nanoseek.rewards.grading import check_reference
from nanoseek.tasks.base import Example, Task

log = logging.getLogger(__name__)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; a bad line raises ``NanoseekError``."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise NanoseekError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise NanoseekError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def report_bad_references(task_name: str, split: str, examples: list[Example], deep: bool = False) -> list[str]:
    """Log (once per load) the examples whose reference answer cannot be parsed; return their ids.

    Such examples stay in the data but are never rewarded 1 (``accuracy_reward`` gives ``None``).
    ``deep`` also parses each non-numeric reference with math-verify (``grading.check_reference``).
    """
    bad = [ex.id for ex in examples if not check_reference(ex.answer, deep=deep)]
    if bad:
        log.warning("%s/%s: %d reference answer(s) cannot be parsed and will not be graded: %s%s",
                    task_name, split, len(bad), ", ".join(bad[:5]), " ..." if len(bad) > 5 else "")
    return bad


class JsonlTask(Task):
    """A task read from a user's JSONL file with ``prompt`` and ``answer`` fields."""

    answer_type = "math"
    splits = ("train", "test")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise NanoseekError(f"task file not found: {self.path}")
        self.name = self.path.stem
        self._examples: list[Example] | None = None
        self.bad_references: list[str] = []

    def examples(self, split: str = "train") -> list[Example]:
        self.check_split(split)
        if self._examples is None:
            rows = []
            for lineno, row in read_jsonl(self.path):
                missing = [k for k in ("prompt", "answer") if k not in row]
                if missing:
                    raise NanoseekError(f"{self.path}:{lineno}: missing field(s) {', '.join(missing)}; "
                                        f"each line needs \"prompt\" and \"answer\" (has: {', '.join(row) or 'nothing'})")
                prompt, answer = row["prompt"], row["answer"]
                if not isinstance(prompt, str) or not prompt.strip():
                    raise NanoseekError(f"{self.path}:{lineno}: \"prompt\" must be a non-empty string")
                if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                    raise NanoseekError(f"{self.path}:{lineno}: \"answer\" must be a string or a number, "
                                        f"got {type(answer).__name__}")
                meta = {k: v for k, v in row.items() if k not in ("prompt", "answer", "id")}
                rows.append(Example(str(row.get("id", f"{self.name}/{lineno}")), prompt, str(answer), meta))
            self.bad_references = report_bad_references(self.name, "all", rows)
            self._examples = rows
        return self._examples
