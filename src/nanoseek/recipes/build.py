"""Building nested typed configs (the SFT, sampling, R1 and distillation recipes) from TOML dicts.

``build(cls, data)`` turns a dict into the dataclass ``cls``, recursing into fields whose type is
itself a dataclass, with the same strictness as ``nanoseek.config``: an unknown key is an error
that names it and lists the known ones, never silently ignored. ``load(name_or_path, overrides)``
reads a recipe file (or a built-in one from ``configs/``) and applies ``section.key=value``
overrides.
"""

from __future__ import annotations

import dataclasses
import typing

from nanoseek.errors import NanoseekError


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

    Raises ``NanoseekError`` for a key that is not a field (naming it and the known keys), a
    section that is not a table, or a value of the wrong type (``config._check_type``: the key, the
    expected type and the value are named) or out of range (the dataclass's own checks).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise NanoseekError(f"config section [{where}] must be a table, got {type(data).__name__}")
    from nanoseek import config

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check = getattr(config, "_check_type", lambda value, annotation, name: value)  # same type checks as config.py
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise NanoseekError(f"unknown config key {where}.{key}; known keys: {', '.join(sorted(fields))}")
        sub = _dataclass_of(hints[key])
        name = f"{where}.{key}" if where != "recipe" else key
        kwargs[key] = build(sub, value, name) if sub and value is not None else check(value, fields[key].type, name)

    preset = getattr(config, "apply_grpo_preset", None)  # a GRPO ``preset`` fills the fields left unset
    if cls is config.GRPOConfig and preset is not None:
        kwargs = preset(kwargs)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise NanoseekError(f"bad config section [{where}]: {e}") from None


def load(name_or_path: str, overrides: list[str] | None = None) -> dict:
    """A recipe file (path or built-in name) as a dict, with ``section.key=value`` overrides applied."""
    from nanoseek.config import apply_overrides, load_config_dict

    return apply_overrides(load_config_dict(name_or_path), list(overrides or []))


def to_dict(cfg) -> dict:
    """The plain-dict form of a config dataclass (what ``RunDir`` stores as config.toml)."""
    return dataclasses.asdict(cfg)
