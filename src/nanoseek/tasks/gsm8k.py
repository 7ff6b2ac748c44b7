"""GSM8K (Cobbe et al. 2021): grade-school math word problems with integer answers.

Files: ``DATA/gsm8k/train.jsonl`` and ``DATA/gsm8k/test.jsonl`` (fields ``question``, ``answer``),
the official ones from github.com/openai/grade-school-math (``grade_school_math/data/``). The
reference answer is the text after the last ``####`` with thousands commas removed (the dataset
README's rule); the full solution text is kept as metadata ``solution``.
"""

from __future__ import annotations

from pathlib import Path

from nanoseek import paths
from nanoseek.errors import NanoseekError
from nanoseek.tasks.base import Example, Task
from nanoseek.tasks.jsonl import read_jsonl, report_bad_references

SOURCE = "https://github.com/openai/grade-school-math (grade_school_math/data/{train,test}.jsonl)"


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: after the last ``####``, commas stripped."""
    return solution.split("####")[-1].strip().replace(",", "")


class GSM8KTask(Task):
    """GSM8K train (7,473 rows) and test splits; answers are integers (``answer_type = "number"``)."""

    name = "gsm8k"
    splits = ("train", "test")
    answer_type = "number"

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.root = paths.data_dir(data_dir) / "gsm8k"
        missing = [f"{s}.jsonl" for s in self.splits if not (self.root / f"{s}.jsonl").is_file()]
        if missing:
            raise NanoseekError(
                f"GSM8K data not found: expected {', '.join(str(self.root / m) for m in missing)}; "
                f"download the official files from {SOURCE} into {self.root} "
                "(or set --data-dir / NANOSEEK_DATA_DIR)"
            )
        self._cache: dict[str, list[Example]] = {}
        self.bad_references: dict[str, list[str]] = {}

    def examples(self, split: str) -> list[Example]:
        self.check_split(split)
        if split not in self._cache:
            path = self.root / f"{split}.jsonl"
            rows = []
            for lineno, row in read_jsonl(path):
                if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
                    raise NanoseekError(f"{path}:{lineno}: expected string fields \"question\" and \"answer\"")
                rows.append(Example(f"gsm8k/{split}/{lineno}", row["question"], gsm8k_answer(row["answer"]),
                                    {"solution": row["answer"]}))
            self.bad_references[split] = report_bad_references(self.name, split, rows)
            self._cache[split] = rows
        return self._cache[split]
