"""Argument types that check a flag's range while the command line is parsed, before anything loads.

``ranged(int, ">= 1")`` parses an int and refuses one outside the rule (the rules of
``nanoseek.config.range_problem``: ``">= 0"``, ``"> 0"``, ``"(0, 1]"``, ``"[0, 65535]"``), so
``--port 70000`` or ``--temperature -1`` is one line naming the flag, not a traceback after a
model has been loaded. Flags that set a config field are checked again, with the field's own rule,
when the config is built.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from nanoseek.config import range_problem

PORT = "[0, 65535]"  # 0: the system picks a free port


def ranged(kind: type, rule: str) -> Callable[[str], int | float]:
    """An argparse ``type``: the flag's text as ``kind`` (``int`` or ``float``), refused unless it
    satisfies ``rule``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        problem = range_problem(value, rule)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"must be {problem}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse
