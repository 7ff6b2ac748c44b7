"""Task registry: ``get_task(name_or_path, data_dir=None, **options) -> Task``.

Names:

========== ============================================== ======================================
name       splits                                         data
========== ============================================== ======================================
gsm8k      train, test                                    DATA/gsm8k/{train,test}.jsonl
math500    test                                           DATA/math500/test.jsonl
math       train (MATH 12k), test (MATH-500)              DATA/math500/math_train12k.jsonl
countdown  train (generated), test                        DATA/countdown/countdown_cd3_test.jsonl
chain      (the built-in task of the default recipe)      generated, ``nanoseek.tasks.chain``
signs     train, test (levels 1-4)                       generated, ``nanoseek.tasks.signs``
========== ============================================== ======================================

Any path ending in ``.jsonl`` (or an existing file) is a user task (``nanoseek.tasks.jsonl``).
``DATA`` is ``data_dir`` (the ``--data-dir`` option), else ``$NANOSEEK_DATA_DIR``, else ``./data``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from nanoseek.errors import NanoseekError
from nanoseek.tasks.base import Example, Task
from nanoseek.tasks.chain import ChainTask
from nanoseek.tasks.countdown import CountdownTask
from nanoseek.tasks.gsm8k import GSM8KTask
from nanoseek.tasks.jsonl import JsonlTask
from nanoseek.tasks.math import Math500Task, MathTask
from nanoseek.tasks.signs import SignsTask

__all__ = ["Example", "Task", "TASKS", "get_task", "task_names"]

TASKS: dict[str, type[Task]] = {
    "gsm8k": GSM8KTask,
    "math500": Math500Task,
    "math": MathTask,
    "countdown": CountdownTask,
    "chain": ChainTask,
    "signs": SignsTask,
}


def task_names() -> list[str]:
    """The registered task names."""
    return list(TASKS)


def get_task(name_or_path: str | Path, data_dir: str | Path | None = None, **options) -> Task:
    """The task called ``name_or_path`` (see the table above), or a user JSONL file.

    Options are passed to the task's constructor (e.g. ``countdown``: ``num_train``, ``seed``,
    ``exactly_once``). Raises ``nanoseek.NanoseekError`` for an unknown name (listing the known
    ones), bad options, missing data files or a malformed user file.
    """
    name = str(name_or_path)
    if name in TASKS:
        task_cls = TASKS[name]
        given = sorted(options)
        params = inspect.signature(task_cls.__init__).parameters
        if "data_dir" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            options = {"data_dir": data_dir, **options}  # generated tasks (chain) take no data_dir
        try:
            return task_cls(**options)
        except TypeError as e:
            if "keyword argument" not in str(e):
                raise
            raise NanoseekError(f"task {name!r}: bad options {given} ({e})") from e
    if name.endswith(".jsonl") or Path(name).expanduser().is_file():
        return JsonlTask(name, **options)
    raise NanoseekError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}, or a path to a .jsonl file")
