"""The recipe configs: ``[run]``, ``[task]``, ``[model]`` and the R1-Zero recipe ``ZeroConfig`` that R1
and distillation extend, and how recipe configs are built from and written back to TOML."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from nanoseek.config import build, check_ranges, check_type, load_config_dict, to_dict
from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import EvalConfig
from nanoseek.model.config import ModelConfig
from nanoseek.rl.config import GRPOConfig
from nanoseek.runs.rundir import RunDir
from nanoseek.train.pretrain import PretrainConfig


@dataclass
class RunConfig:
    """Run-level settings: seed, output directory, threads, checkpoint cadence."""

    name: str = "zero"
    seed: int = 0
    out: str | None = None
    threads: int = 0  # 0: torch's default
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_wall_seconds: float = 0.0  # 0: no limit; else stop with a checkpoint after this long

    def __post_init__(self):
        check_ranges(self, "run", {"seed": ">= 0", "threads": ">= 0", "checkpoint_every": ">= 1",
                                   "keep_checkpoints": ">= 1", "max_wall_seconds": ">= 0"})


@dataclass
class TaskConfig:
    """Which task, where its data lives, and task-specific options (e.g. chain ``max_terms``)."""

    name: str = "chain"
    data_dir: str | None = None
    options: dict = field(default_factory=dict)
    system_prompt: str | None = None


@dataclass
class ModelSource:
    """Where a recipe's model comes from: its ``[model]`` table (``[student]`` in distillation).

    ``path = "..."`` loads a model (a run directory, checkpoint, Hugging Face folder or short name;
    ``model.load.resolve_model_dir``). Without a path the table's keys are ``ModelConfig`` fields
    (the DeepSeek-V3 ``config.json`` names) of a fresh model that the recipe pretrains
    (``recipes.common.fresh_model``: vocabulary size and special token ids default to the
    tokenizer's). ``config`` keeps those keys as given, so ``to_table`` writes the table back as read.
    """

    path: str | None = None
    config: dict = field(default_factory=dict)

    @classmethod
    def from_table(cls, table, where: str = "model") -> ModelSource:
        """The source a TOML table describes. Raises ``NanoseekError`` when it is not a table or its
        ``path`` is not a string."""
        table = check_type(table, "dict", where)
        path = check_type(table.get("path"), "str | None", f"{where}.path")
        config = {k: v for k, v in table.items() if k != "path"}
        if path is None:  # a fresh model: its fields are checked now, before any run directory exists
            try:
                ModelConfig.from_dict({"vocab_size": 1, **config})  # the real size comes from the tokenizer
            except (ValueError, TypeError) as e:
                raise NanoseekError(f"config section [{where}]: {e}") from None
        return cls(path=path, config=config)

    def to_table(self) -> dict:
        """The TOML table this source was read from (``from_table`` of it gives it back)."""
        return {**self.config, "path": self.path} if self.path is not None else dict(self.config)


@dataclass
class ZeroConfig:
    """The R1-Zero recipe: optional base pretraining, then GRPO, evaluated before and after."""

    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelSource = field(default_factory=ModelSource)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def build_recipe(cls, data: dict):
    """``config.build`` for a recipe dataclass whose ``ModelSource`` fields (``model``, ``student``)
    are read from their tables by ``ModelSource.from_table``. Raises ``NanoseekError`` as
    ``config.build`` does."""
    hints = typing.get_type_hints(cls)
    sources = {f.name for f in dataclasses.fields(cls) if hints[f.name] is ModelSource}
    cfg = build(cls, {k: v for k, v in data.items() if k not in sources})
    for name in sources & data.keys():
        setattr(cfg, name, ModelSource.from_table(data[name], name))
    return cfg


def recipe_dict(cfg) -> dict:
    """The plain-dict form of a recipe config (what ``RunDir`` stores as config.toml): ``config.to_dict``
    with every ``ModelSource`` written back as its table."""
    out = to_dict(cfg)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, ModelSource):
            out[f.name] = value.to_table()
    return out


def build_zero_config(data: dict) -> ZeroConfig:
    """Build and validate a ``ZeroConfig`` from a dict (unknown keys raise ``NanoseekError``)."""
    return build_recipe(ZeroConfig, data)


def resume_or_recipe_dict(resume: str | None, recipe: str) -> dict:
    """The config dict a command starts from: the stored config of the run directory ``resume``,
    else the recipe ``recipe`` (a TOML file or built-in name). Raises ``NanoseekError`` when
    ``resume`` is not a run directory."""
    if resume:
        if not Path(resume).is_dir():
            raise NanoseekError(f"cannot resume: run directory {resume} does not exist")
        run = RunDir(resume)
        if not run.config_path.exists():
            raise NanoseekError(f"cannot resume: {resume} has no config.toml, so it is not a nanoseek run directory")
        return run.read_config()
    return load_config_dict(recipe)


def run_out(resume: str | None, out: str | None) -> str | None:
    """The run directory of a command given ``--resume`` and ``--out``: ``resume`` when set, else
    ``out``. Raises ``NanoseekError`` when both name different directories (a resumed run stays
    where it is; ``--out`` cannot move or copy it)."""
    if resume and out and Path(out).resolve() != Path(resume).resolve():
        raise NanoseekError(f"--out {out} conflicts with --resume {resume}: a resumed run stays in its own "
                            "directory (drop --out, or start a new run with --out alone)")
    return resume or out
