"""Plain values for run files: ``to_jsonable`` (any value a run logs, as strict JSON types) and
``dumps_toml`` (a tiny TOML writer for ``config.toml``; ``tomllib`` reads it back)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["drop_none", "dumps_toml", "to_jsonable"]


# --------------------------------------------------------------------------- value conversion


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` into plain JSON types, recursively.

    torch tensors and numpy scalars/arrays become Python numbers or nested lists (via their
    ``tolist()``), ``Path`` becomes ``str``, tuples and sets become lists, dataclasses become dicts,
    and non-finite floats (nan, ±inf) become ``None`` so every line is strict JSON that any
    reader (a browser included) can parse. Raises ``TypeError`` for anything else.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    tolist = getattr(value, "tolist", None)  # torch.Tensor, numpy scalar / ndarray
    if callable(tolist):
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            tolist = value.tolist
        return to_jsonable(tolist())
    raise TypeError(f"cannot store a value of type {type(value).__name__} as JSON: {value!r}")


# --------------------------------------------------------------------------- a tiny TOML writer

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_str(key)


def _toml_str(s: str) -> str:
    # A JSON string is a valid TOML basic string except for DEL, which TOML wants escaped.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007F")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"TOML cannot hold a value of type {type(v).__name__}: {v!r}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _dump_table(table: dict, prefix: list[str], out: list[str]) -> None:
    # TOML needs a table's plain keys before its sub-tables and arrays of tables.
    for k, v in table.items():
        if v is None:  # TOML has no null: an unset field is left out (its default applies)
            out.append(f"# {_toml_key(k)} is unset (None)")
        elif not isinstance(v, dict) and not _is_table_array(v):
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in table.items():
        path = prefix + [_toml_key(k)]
        if isinstance(v, dict):
            out.extend(["", f"[{'.'.join(path)}]"])
            _dump_table(v, path, out)
        elif _is_table_array(v):
            for item in v:
                out.extend(["", f"[[{'.'.join(path)}]]"])
                _dump_table(item, path, out)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialise a nested dict of str/int/float/bool/list/dict as TOML text.

    Values go through ``to_jsonable`` first (so paths, tuples, numpy scalars are fine), except that
    non-finite floats are kept (TOML has ``nan`` and ``inf``). TOML has no null: a ``None`` value
    in a table is left out (a comment marks it), so loading gives the dataclass default, which
    for nanoseek's optional fields is ``None``. Raises ``TypeError`` for ``None`` inside a list or
    another value TOML cannot hold. Otherwise ``tomllib.loads(dumps_toml(d)) == d``.
    """

    def _plain(v: Any, in_list: bool) -> Any:  # like to_jsonable, but keeps nan/inf
        if v is None and in_list:
            raise TypeError("TOML cannot hold None inside a list")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, Mapping):
            return {str(k): _plain(x, False) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [_plain(x, True) for x in v]
        return _plain(to_jsonable(v), in_list)  # a path, a numpy/torch scalar, a dataclass, ...

    out: list[str] = []
    _dump_table(_plain(dict(data), False), [], out)
    return "\n".join(out).lstrip("\n") + "\n"


def drop_none(v: Any) -> Any:
    """``v`` with None-valued table entries removed: the form a TOML round trip gives."""
    if isinstance(v, dict):
        return {k: drop_none(x) for k, x in v.items() if x is not None}
    return [drop_none(x) for x in v] if isinstance(v, list) else v
