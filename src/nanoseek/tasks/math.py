"""MATH (Hendrycks et al. 2021): competition problems with LaTeX answers.

Files (PRM800K / MATH-500 layout: ``problem``, ``solution``, ``answer``, ``subject``, ``level``,
``unique_id``), in ``DATA/math500/``:

* ``test.jsonl``: MATH-500 (Lightman et al. 2023), the development part kept in this project;
* ``math_train12k.jsonl``: the PRM800K 12k training split (all MATH problems minus MATH-500).

Tasks: ``math500`` (split ``test``) and ``math`` (``train`` = the 12k split, ``test`` = MATH-500).
The reference is the ``answer`` field; ``solution``, ``subject``, ``level`` and ``unique_id`` are
metadata. Reference answers that cannot be parsed are reported (logged, ``bad_references``) at load.
"""

from __future__ import annotations

from pathlib import Path

from nanoseek import paths
from nanoseek.errors import NanoseekError
from nanoseek.tasks.base import Example, Task
from nanoseek.tasks.jsonl import read_jsonl, report_bad_references

SOURCE = "https://github.com/openai/prm800k (prm800k/math_splits/{train,test}.jsonl)"
FILES = {"math500": {"test": "test.jsonl"}, "math": {"train": "math_train12k.jsonl", "test": "test.jsonl"}}


class _MathFiles(Task):
    answer_type = "math"

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.root = paths.data_dir(data_dir) / "math500"
        files = FILES[self.name]
        missing = [str(self.root / f) for f in files.values() if not (self.root / f).is_file()]
        if missing:
            raise NanoseekError(f"MATH data not found: expected {', '.join(missing)}; the MATH-500 and 12k train "
                                f"splits are published at {SOURCE} (or set --data-dir / NANOSEEK_DATA_DIR)")
        self._cache: dict[str, list[Example]] = {}
        self.bad_references: dict[str, list[str]] = {}

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        if split not in self._cache:
            path = self.root / FILES[self.name][split]
            rows = []
            for lineno, row in read_jsonl(path):
                if not isinstance(row.get("problem"), str) or "answer" not in row:
                    raise NanoseekError(f"{path}:{lineno}: expected fields \"problem\" (str) and \"answer\"")
                meta = {k: row.get(k) for k in ("solution", "subject", "level", "unique_id")}
                rows.append(Example(str(row.get("unique_id") or f"{path.stem}/{lineno}"), row["problem"],
                                    str(row["answer"]), meta))
            self.bad_references[split] = report_bad_references(self.name, split, rows)
            self._cache[split] = rows
        return self._cache[split]


class Math500Task(_MathFiles):
    """MATH-500 (the development part: 400 problems), split ``test``."""

    name = "math500"
    splits = ("test",)


class MathTask(_MathFiles):
    """MATH: ``train`` = PRM800K 12k training split, ``test`` = MATH-500 (development part)."""

    name = "math"
    splits = ("train", "test")
