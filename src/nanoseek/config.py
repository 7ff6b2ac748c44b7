"""The one config builder: TOML recipe files -> typed dataclasses, strict keys, ``section.key=value`` overrides.

A recipe file (``configs/zero-cpu.toml``) has one table per section (``[run]``, ``[task]``,
``[model]``, ``[pretrain]``, ``[grpo]``, ``[eval]``, ...). Each config dataclass lives next to the
code that reads it (``rl.config.GRPOConfig``, ``train.pretrain.PretrainConfig``,
``evaluation.evaluate.EvalConfig``, ``recipes.config.ZeroConfig``, ...); this module only turns
dicts into them. Every key must be a field of its dataclass: an unknown key is an error that names
it, never silently ignored, and a value of the wrong type names the key, the type and the value.
Every numeric field has a range (:func:`check_ranges`, called from each dataclass's
``__post_init__``), so a negative step count or learning rate is one line before anything loads.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

from nanoseek.errors import NanoseekError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class RangeError(NanoseekError):
    """A config value outside its range. ``key`` is the field name without its section, so that
    :func:`build` can name the section the value came from (``reasoning_rl.lr``, not ``grpo.lr``)."""

    def __init__(self, section: str, key: str, rule: str, value):
        self.key, self.rule, self.value = key, rule, value
        super().__init__(f"{section}.{key} must be {rule}, got {value!r}")


_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")


def range_problem(value, rule: str) -> str | None:
    """None when the number ``value`` satisfies ``rule``, else the rule as a phrase for an error.

    A rule is a bound (``">= 1"``, ``"> 0"``) or an interval (``"[0, 1]"``, ``"(0, 1]"``,
    ``"[0, 65535]"``). NaN and infinities never satisfy a rule (no config value needs them).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"a finite number {rule}" if _BOUND.match(rule) else f"a finite number in {rule}"
    if m := _BOUND.match(rule):
        op, b = m.group(1), float(m.group(2))
        ok = {">=": value >= b, ">": value > b, "<=": value <= b, "<": value < b}[op]
        return None if ok else rule
    m = _INTERVAL.match(rule)
    if not m:
        raise ValueError(f"not a range rule: {rule!r}")
    lo, hi = float(m.group(2)), float(m.group(3))
    ok = (value >= lo if m.group(1) == "[" else value > lo) and (value <= hi if m.group(4) == "]" else value < hi)
    return None if ok else f"in {rule}"


def check_value(name: str, value, rule: str) -> None:
    """Raise ``NanoseekError`` ("``name`` must be ..., got ...") unless ``value`` satisfies ``rule``
    (:func:`range_problem`): for values that are not dataclass fields (task options, flags)."""
    if (problem := range_problem(value, rule)) is not None:
        raise NanoseekError(f"{name} must be {problem}, got {value!r}")


def check_ranges(cfg, section: str, rules: dict[str, str]) -> None:
    """Raise :class:`RangeError` for the first field of ``cfg`` (a config dataclass, from its
    ``__post_init__``) outside its rule (:func:`range_problem`); a ``None`` value is left alone
    (an optional field that is unset). ``section`` names the table for a dataclass built directly;
    :func:`build` renames it to the table the value came from."""
    for key, rule in rules.items():
        value = getattr(cfg, key)
        if value is not None and (problem := range_problem(value, rule)) is not None:
            raise RangeError(section, key, problem, value)


def _dataclass_of(tp):
    """The dataclass in a field type (``X``, ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def build(cls, data: dict | None, where: str = "recipe"):
    """An instance of dataclass ``cls`` from ``data`` (nested dataclass fields from sub-tables).

    A dataclass may define ``fill_defaults(kwargs) -> kwargs`` (a classmethod) to fill keys the
    table leaves unset before construction (``GRPOConfig`` applies its ``preset`` this way).
    Raises ``NanoseekError`` for a key that is not a field (naming it and the known keys), a
    section that is not a table, or a value of the wrong type (:func:`check_type`) or out of range
    (the dataclass's own ``__post_init__`` checks; a :class:`RangeError` is named by ``where``).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise NanoseekError(f"config section [{where}] must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise NanoseekError(f"unknown config key {where}.{key}; known keys: {', '.join(sorted(fields))}")
        sub = _dataclass_of(hints[key])
        name = f"{where}.{key}" if where != "recipe" else key
        kwargs[key] = build(sub, value, name) if sub and value is not None else check_type(value, fields[key].type, name)
    fill = getattr(cls, "fill_defaults", None)
    if fill is not None:
        kwargs = fill(kwargs)
    try:
        return cls(**kwargs)
    except RangeError as e:  # name the table this value came from
        raise NanoseekError(f"config key {where}.{e.key} must be {e.rule}, got {e.value!r}") from None
    except TypeError as e:  # wrong value types surface here
        raise NanoseekError(f"bad config section [{where}]: {e}") from None


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list,)}


def check_type(value, annotation, name: str):
    """``value`` if it fits the field's annotation (``int``, ``float | None``, ...), else a
    ``NanoseekError`` naming the key, the expected type and the value. An ``int`` given for a
    ``float`` field becomes a float. Annotations it does not know (a class) accept any value."""
    names = [t.strip() for t in str(annotation).split("|")]
    if value is None and "None" in names:
        return value
    allowed = tuple(t for n in names for t in _TYPES.get(n, ()))
    if not allowed or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)):
        return float(value) if "float" in names and "int" not in names and isinstance(value, int) else value
    want = " or ".join(n for n in names)
    raise NanoseekError(f"config key {name} must be {want}, got {value!r}")


def parse_value(text: str) -> Any:
    """An override's value: parsed as TOML (``3``, ``1e-3``, ``true``, ``["a"]``), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (value parsed as TOML, else a string) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise NanoseekError(f"override {item!r} must look like section.key=value")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise NanoseekError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = parse_value(value.strip())
    return data


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe file path, or the name of a built-in recipe in ``configs/`` (e.g. ``zero-cpu``)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    builtin = CONFIG_DIR / f"{name_or_path}.toml"
    if builtin.exists():
        return builtin
    known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.toml")))
    raise NanoseekError(f"config {name_or_path!r} not found (neither a .toml file nor a built-in recipe: {known})")


def load_config_dict(name_or_path: str) -> dict:
    """A recipe file (path or built-in name) as a dict. Raises ``NanoseekError`` for invalid TOML."""
    path = resolve_recipe_path(name_or_path)
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise NanoseekError(f"config {path} is not valid TOML: {e}") from None


def load(name_or_path: str, overrides: list[str] | None = None) -> dict:
    """A recipe file (path or built-in name) as a dict, with ``section.key=value`` overrides applied."""
    return apply_overrides(load_config_dict(name_or_path), list(overrides or []))


def to_dict(cfg) -> dict:
    """The plain-dict form of a config dataclass (what ``RunDir`` stores as config.toml)."""
    return dataclasses.asdict(cfg)
