"""The recipe configs: ``[run]``, ``[task]`` and the R1-Zero recipe ``ZeroConfig`` that R1 and distillation extend."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from nanoseek.config import build, load_config_dict
from nanoseek.errors import NanoseekError
from nanoseek.evaluation.evaluate import EvalConfig
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


@dataclass
class TaskConfig:
    """Which task, where its data lives, and task-specific options (e.g. chain ``max_terms``)."""

    name: str = "chain"
    data_dir: str | None = None
    options: dict = field(default_factory=dict)
    system_prompt: str | None = None


@dataclass
class ZeroConfig:
    """The R1-Zero recipe: optional base pretraining, then GRPO, evaluated before and after."""

    run: RunConfig = field(default_factory=RunConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: dict = field(default_factory=dict)  # ModelConfig fields (DeepSeek-V3 names), or {"path": ...}
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_zero_config(data: dict) -> ZeroConfig:
    """Build and validate a ``ZeroConfig`` from a dict (unknown keys raise ``NanoseekError``)."""
    return build(ZeroConfig, data)


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
