"""Typed recipe configs loaded from TOML, with strict keys and ``section.key=value`` overrides.

A recipe file (``configs/zero-cpu.toml``) has one table per section: ``[run]``, ``[task]``,
``[model]`` (DeepSeek-V3 ``config.json`` field names, used when a fresh base model is pretrained),
``[pretrain]``, ``[grpo]`` and ``[eval]``. Every key must be a field of its dataclass: an unknown
key is an error that names it, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoseek.errors import NanoseekError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


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
class PretrainConfig:
    """Next-token pretraining of a fresh base model on the task's generated corpus.

    ``think_fraction`` is the share of corpus documents that write out worked steps; the rest
    answer directly. ``steps`` optimizer steps of ``batch_size`` documents at learning rate ``lr``
    (AdamW, linear warm-up then cosine decay to ``lr * min_lr_ratio``).
    """

    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    think_fraction: float = 0.5
    corpus_seed: int = 7
    grad_clip: float = 1.0
    log_every: int = 25


@dataclass
class GRPOConfig:
    """Group Relative Policy Optimization (DeepSeekMath eq. 3; DeepSeek-R1 sec. 2.2.1).

    Each step samples ``group_size`` completions for each of ``prompts_per_step`` prompts, scores
    them with the task's rule-based rewards weighted by ``reward_weights``, turns rewards into
    group-relative advantages and takes ``mu`` clipped policy-gradient updates (``epsilon_low``/
    ``epsilon_high``) with a k3 KL penalty of weight ``beta`` to a frozen reference (``beta = 0``
    loads no reference). ``ref_reset_every`` > 0 replaces the reference by the current policy every
    that many steps (DeepSeek-R1 v2 suppl.: 400).

    ``preset`` (``deepseekmath``, ``r1_zero``, ``r1_stage1``, ``dr_grpo``, ``dapo``; see
    ``nanoseek.rl.presets``) fills every field the recipe leaves unset with that paper's value
    (:func:`apply_grpo_preset`); fields set in the recipe win.

    The remaining knobs, each off (or the plain algorithm) by default:

    * ``dynamic_sampling``: DAPO sec. 3.2, drop groups whose rewards are all equal and draw more
      prompts (at most ``dynamic_sampling_max_rounds`` rounds of ``prompts_per_step``) until the
      batch holds ``prompts_per_step`` groups.
    * ``mask_truncated_completions``: DAPO sec. 3.4 overlong filtering (truncated completions
      leave the loss). ``overlong_buffer`` > 0: DAPO's soft overlong punishment
      (``nanoseek.rewards.rules.overlong_penalty`` with ``max_length = max_new_tokens``,
      ``cache_length = overlong_buffer``, weight ``reward_weights["overlong"]``, default 1).
    * ``minibatches_per_step``: optimizer steps per rollout batch, each on a disjoint slice of the
      groups (R1-Nature Methods: 16); ``grad_accumulation_steps``: micro-batches per optimizer
      step (memory only: the update is the same up to float rounding).
    * ``lr_schedule`` ``cosine`` (to ``lr * min_lr_ratio``; 1.0 = constant) or ``linear``, after
      ``warmup_steps`` of linear warm-up; ``grad_clip`` (0 = off) on the global gradient norm.
    * ``stop_strings``: completions end after the first of these strings (kept, like a stop token)
      besides the tokenizer's stop ids; ``max_prompt_length``: longer train prompts are dropped at
      load and counted (never truncated).
    * ``lora_r`` > 0: train LoRA adapters (peft) on a ``transformers`` policy; the reference is
      the base model with the adapter disabled; checkpoints hold the adapter only.
    * ``expert_bias_update``: keep updating DeepSeekMoE's balancing bias during RL (off: routing
      must not drift between the old, reference and current policy).
    * ``fast_rollout`` / ``share_prompt``: for Llama-family ``transformers`` policies, sample with
      ``nanoseek.policy.generate_static`` and score each prompt once per group
      (``nanoseek.model.hf_fast``); same numbers as the plain paths up to float rounding.
    * ``report_to``: also log to ``tensorboard`` and/or ``wandb`` (skipped when not installed).
    """

    steps: int = 100
    prompts_per_step: int = 16
    group_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 1.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "grpo"
    scale_rewards: str = "std"
    mu: int = 1
    ref_reset_every: int = 0
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    grad_clip: float = 1.0
    reward_weights: dict = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5})
    eval_every: int = 25
    max_prompt_length: int = 512
    mask_truncated_completions: bool = False  # DAPO overlong filtering (DAPO sec. 3.4)
    log_samples: int = 4
    preset: str | None = None
    kl_importance_weight: bool = False  # plain k3 (DeepSeekMath eq. 4); True: DeepSeek-V3.2 / TRL 1.16
    dynamic_sampling: bool = False  # DAPO sec. 3.2
    dynamic_sampling_max_rounds: int = 10  # verl DAPO recipe max_num_gen_batches
    overlong_buffer: int = 0  # DAPO sec. 3.4 soft overlong punishment interval (DAPO sec. 4.1: 4096)
    minibatches_per_step: int = 1
    grad_accumulation_steps: int = 1
    lr_schedule: str = "cosine"
    stop_strings: list = field(default_factory=list)
    lora_r: int = 0
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                        "down_proj"])
    expert_bias_update: bool = False
    fast_rollout: bool = True
    share_prompt: bool = True
    report_to: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "GRPOConfig":
        """Build from a ``[grpo]`` table, ``preset`` applied (``GRPOConfig(preset=...)`` alone does not)."""
        return cls(**apply_grpo_preset(dict(data)))

    def __post_init__(self):
        from nanoseek.rl.advantages import SCALES
        from nanoseek.rl.presets import PRESET_NAMES

        if self.group_size < 2:
            raise NanoseekError(f"grpo.group_size must be >= 2 (a group of one has no relative advantage), got {self.group_size}")
        if self.loss_type not in ("grpo", "bnpo", "dr_grpo", "dapo"):
            raise NanoseekError(f"grpo.loss_type must be one of grpo, bnpo, dr_grpo, dapo; got {self.loss_type!r}")
        if self.mu < 1:
            raise NanoseekError(f"grpo.mu must be >= 1, got {self.mu}")
        if self.preset is not None and self.preset not in PRESET_NAMES:
            raise NanoseekError(f"grpo.preset must be one of {', '.join(PRESET_NAMES)}; got {self.preset!r}")
        if self.scale_rewards not in SCALES:
            raise NanoseekError(f"grpo.scale_rewards must be one of {', '.join(SCALES)}; got {self.scale_rewards!r}")
        if self.lr_schedule not in ("cosine", "linear"):
            raise NanoseekError(f"grpo.lr_schedule must be cosine or linear; got {self.lr_schedule!r}")
        for name in ("minibatches_per_step", "grad_accumulation_steps", "dynamic_sampling_max_rounds", "prompts_per_step"):
            if getattr(self, name) < 1:
                raise NanoseekError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.overlong_buffer <= self.max_new_tokens:
            raise NanoseekError(f"grpo.overlong_buffer must be in [0, max_new_tokens={self.max_new_tokens}], "
                                f"got {self.overlong_buffer}")
        bad = [r for r in self.report_to if r not in ("tensorboard", "wandb")]
        if bad:
            raise NanoseekError(f"grpo.report_to: unknown logger(s) {bad}; known: tensorboard, wandb")
        if self.lora_r < 0:
            raise NanoseekError(f"grpo.lora_r must be >= 0, got {self.lora_r}")
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            raise NanoseekError(f"grpo.stop_strings must be non-empty strings, got {self.stop_strings!r}")


# preset key (nanoseek.rl.presets) -> GRPOConfig field. Left out on purpose: run-length and batch
# keys a CPU recipe must choose itself (total_steps, batch_size), conventions fixed in the code
# (std_unbiased, kl_estimator: k3).
_PRESET_FIELDS = {
    "group_size": "group_size", "scale": "scale_rewards", "loss_type": "loss_type", "epsilon_low": "epsilon_low",
    "epsilon_high": "epsilon_high", "beta": "beta", "kl_importance_weight": "kl_importance_weight", "lr": "lr",
    "temperature": "temperature", "max_completion_length": "max_new_tokens", "num_iterations": "mu",
    "ref_reset_every": "ref_reset_every", "dynamic_sampling": "dynamic_sampling",
    "overlong_filtering": "mask_truncated_completions", "questions_per_step": "prompts_per_step",
    "minibatches_per_rollout": "minibatches_per_step",
}


def apply_grpo_preset(data: dict) -> dict:
    """A ``[grpo]`` table with ``preset``'s values filled into the keys it does not set.

    Sources of every value: ``nanoseek.rl.presets.preset_sources(name)``. ``ref_reset_every: None``
    becomes 0 (fixed reference); the soft overlong punishment becomes ``overlong_buffer`` (scaled to
    the recipe's ``max_new_tokens`` when it sets its own, e.g. 64 tokens -> a buffer of 13).
    Returns a new dict; ``data`` without a preset is returned unchanged.
    """
    name = data.get("preset")
    if name is None:
        return data
    from nanoseek.rl.presets import PRESET_NAMES, preset

    if name not in PRESET_NAMES:
        raise NanoseekError(f"grpo.preset must be one of {', '.join(PRESET_NAMES)}; got {name!r}")
    values = preset(name)
    out = dict(data)
    for key, fld in _PRESET_FIELDS.items():
        if key in values and fld not in out:
            v = values[key]
            if fld == "ref_reset_every" and v is None:
                v = 0
            if v is not None:
                out[fld] = v
    if "overlong_buffer" not in out and values.get("soft_overlong_punishment"):
        buf, length = values["overlong_buffer"], values["max_completion_length"]
        # a recipe with its own max_new_tokens keeps DAPO's proportion (4,096 of 20,480 tokens)
        out["overlong_buffer"] = buf if out["max_new_tokens"] == length else round(out["max_new_tokens"] * buf / length)
    return out


@dataclass
class EvalConfig:
    """Held-out evaluation: pass@1 averaged over ``samples`` per problem (DeepSeek-R1 sec. 3:
    temperature 0.6, top-p 0.95)."""

    limit: int = 200
    samples: int = 4
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 64
    batch_size: int = 256
    seed: int = 1234


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


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise NanoseekError(f"config section [{where}] must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise NanoseekError(f"unknown config key {where}.{key}; known keys: {', '.join(sorted(fields))}")
        sub_cls = _SECTIONS.get(key) if cls is ZeroConfig else None
        kwargs[key] = _build(sub_cls, value, key) if sub_cls else _check_type(value, fields[key].type, f"{where}.{key}")
    if cls is GRPOConfig:
        kwargs = apply_grpo_preset(kwargs)
    try:
        return cls(**kwargs)
    except TypeError as e:  # wrong value types surface here
        raise NanoseekError(f"bad config section [{where}]: {e}") from None


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,), "list": (list,)}


def _check_type(value, annotation, name: str):
    """``value`` if it fits the field's annotation (``int``, ``float | None``, ...), else a
    ``NanoseekError`` naming the key, the expected type and the value."""
    names = [t.strip() for t in str(annotation).split("|")]
    if value is None and "None" in names:
        return value
    allowed = tuple(t for n in names for t in _TYPES.get(n, ()))
    if not allowed or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)):
        return float(value) if "float" in names and "int" not in names and isinstance(value, int) else value
    want = " or ".join(n for n in names)
    raise NanoseekError(f"config key {name} must be {want}, got {value!r}")


_SECTIONS = {"run": RunConfig, "task": TaskConfig, "pretrain": PretrainConfig, "grpo": GRPOConfig, "eval": EvalConfig}


def _parse_value(text: str) -> Any:
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
        node[keys[-1]] = _parse_value(value.strip())
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
    path = resolve_recipe_path(name_or_path)
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise NanoseekError(f"config {path} is not valid TOML: {e}") from None


def build_zero_config(data: dict) -> ZeroConfig:
    """Build and validate a ``ZeroConfig`` from a dict (unknown keys raise ``NanoseekError``)."""
    return _build(ZeroConfig, data, "recipe")


def resume_or_recipe_dict(resume: str | None, recipe: str) -> dict:
    """The config dict a command starts from: the stored config of the run directory ``resume``,
    else the recipe ``recipe`` (a TOML file or built-in name). Raises ``NanoseekError`` when
    ``resume`` is not a run directory."""
    if resume:
        from nanoseek.runs.rundir import RunDir

        if not Path(resume).is_dir():
            raise NanoseekError(f"cannot resume: run directory {resume} does not exist")
        run = RunDir(resume)
        if not run.config_path.exists():
            raise NanoseekError(f"cannot resume: {resume} has no config.toml, so it is not a nanoseek run directory")
        return run.read_config()
    return load_config_dict(recipe)
