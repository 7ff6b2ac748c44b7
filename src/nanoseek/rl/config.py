"""``GRPOConfig``: every knob of the GRPO trainer, and how a named preset fills the ones left unset."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nanoseek.config import check_ranges
from nanoseek.errors import NanoseekError
from nanoseek.rl.advantages import SCALES
from nanoseek.rl.grpo import LOSS_AGGREGATIONS
from nanoseek.rl.presets import PRESET_NAMES, preset
from nanoseek.train.optim import LR_SCHEDULES


# What DAPO's dynamic sampling looks at (GRPOConfig.dynamic_sampling_metric; nanoseek.rl.rollout).
DYNAMIC_SAMPLING_METRICS = ("accuracy", "reward")


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
    (:func:`apply_grpo_preset`); fields set in the recipe win. ``loss_type`` is a name registered in
    ``nanoseek.rl.grpo.LOSS_AGGREGATIONS`` (``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``).

    The remaining knobs, each off (or the plain algorithm) by default:

    * ``dynamic_sampling``: DAPO sec. 3.2, drop groups with no spread in
      ``dynamic_sampling_metric`` and draw more prompts (at most ``dynamic_sampling_max_rounds``
      rounds of ``prompts_per_step``) until the batch holds ``prompts_per_step`` groups. The metric
      is ``"accuracy"`` (the default; DAPO eq. 11 keeps a prompt when ``0 < #correct < G``, i.e. its
      accuracy rewards are not all 0 or all 1; verl's DAPO recipe ``filter_groups.metric: acc``
      keeps a group whose accuracy has a non-zero std, the same rule for partial scores) or
      ``"reward"`` (the combined reward, format included).
    * ``mask_truncated_completions``: DAPO sec. 3.4 overlong filtering (truncated completions
      leave the loss). ``overlong_buffer`` > 0: DAPO's soft overlong punishment
      (``nanoseek.rewards.rules.overlong_penalty`` with ``max_length = max_new_tokens``,
      ``cache_length = overlong_buffer``, weight ``reward_weights["overlong"]``, default 1).
    * ``minibatches_per_step``: optimizer steps per rollout batch, each on a disjoint slice of the
      groups (R1-Nature Methods: 16); ``grad_accumulation_steps``: micro-batches per optimizer
      step (memory only: the update is the same up to float rounding).
    * ``lr_schedule`` ``cosine`` (to ``lr * min_lr_ratio``; 1.0 = constant) or ``linear``, after
      ``warmup_steps`` of linear warm-up (``nanoseek.train.optim.lr_at``); ``grad_clip`` (0 = off)
      on the global gradient norm.
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

    Optimizer defaults and their sources: AdamW with ``nanoseek.train.optim.GRPO_BETAS`` (0.9, 0.999)
    and eps 1e-8, ``weight_decay`` 0.0, ``grad_clip`` 1.0 and ``warmup_steps`` 0 are TRL's
    ``GRPOTrainer`` defaults (``transformers.TrainingArguments``: ``adam_beta1/2``, ``adam_epsilon``,
    ``weight_decay``, ``max_grad_norm``, ``warmup_steps``); no DeepSeek paper gives them for RL. A
    constant rate (``min_lr_ratio`` 1.0) is DAPO sec. 4.1's ("constant learning rate"; DeepSeekMath
    sec. 4.2 and R1-Nature give one rate and no schedule); TRL decays linearly to 0 instead. ``lr``
    1e-3 has no source: it is nanoseek's value for the tiny CPU models of the tests (the papers'
    1e-6 to 3e-6 are for 7B-671B models and come with the presets; the built-in recipes set their own).
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
    dynamic_sampling_metric: str = "accuracy"  # DAPO eq. 11; verl filter_groups.metric = acc
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

    @classmethod
    def fill_defaults(cls, data: dict) -> dict:
        """``data`` with ``preset``'s values in the keys it leaves unset (``nanoseek.config.build``'s hook)."""
        return apply_grpo_preset(data)

    def __post_init__(self):
        check_ranges(self, "grpo", _RANGES)
        check_ranges(self, "grpo", {"overlong_buffer": f"[0, {self.max_new_tokens}]"})  # within max_new_tokens
        bad = {k: v for k, v in self.reward_weights.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}
        if bad:
            raise NanoseekError(f"grpo.reward_weights must map reward names to finite numbers, got {bad}")
        if self.loss_type not in LOSS_AGGREGATIONS:  # registered names only: the trainer's normalisers read them
            raise NanoseekError(f"grpo.loss_type must be one of {', '.join(LOSS_AGGREGATIONS)}; got {self.loss_type!r}")
        if self.preset is not None and self.preset not in PRESET_NAMES:
            raise NanoseekError(f"grpo.preset must be one of {', '.join(PRESET_NAMES)}; got {self.preset!r}")
        if self.scale_rewards not in SCALES:
            raise NanoseekError(f"grpo.scale_rewards must be one of {', '.join(SCALES)}; got {self.scale_rewards!r}")
        if self.dynamic_sampling_metric not in DYNAMIC_SAMPLING_METRICS:
            raise NanoseekError(f"grpo.dynamic_sampling_metric must be one of {', '.join(DYNAMIC_SAMPLING_METRICS)}; "
                                f"got {self.dynamic_sampling_metric!r}")
        if self.dynamic_sampling and self.dynamic_sampling_metric == "accuracy" and "accuracy" not in self.reward_weights:
            raise NanoseekError("grpo.dynamic_sampling_metric = 'accuracy' needs an 'accuracy' reward in "
                                "grpo.reward_weights (weight 0 is enough); or set dynamic_sampling_metric = 'reward'")
        if self.lr_schedule not in LR_SCHEDULES:
            raise NanoseekError(f"grpo.lr_schedule must be {' or '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        bad = [r for r in self.report_to if r not in ("tensorboard", "wandb")]
        if bad:
            raise NanoseekError(f"grpo.report_to: unknown logger(s) {bad}; known: tensorboard, wandb")
        if not all(isinstance(s, str) and s for s in self.stop_strings):
            raise NanoseekError(f"grpo.stop_strings must be non-empty strings, got {self.stop_strings!r}")


# The range of every numeric field, checked before anything is loaded (a negative step count or
# learning rate is a one-line error, not a run). A group of one has no relative advantage;
# epsilon_low has no upper bound: R1's clip ratio of 10 (presets.r1_zero) leaves the ratio unclipped below.
_RANGES = {
    "steps": ">= 1", "prompts_per_step": ">= 1", "group_size": ">= 2", "lr": "> 0", "min_lr_ratio": "[0, 1]",
    "warmup_steps": ">= 0", "weight_decay": ">= 0", "beta": ">= 0", "epsilon_low": ">= 0", "epsilon_high": ">= 0",
    "mu": ">= 1", "ref_reset_every": ">= 0", "max_new_tokens": ">= 1", "temperature": "> 0", "top_p": "(0, 1]",
    "grad_clip": ">= 0", "eval_every": ">= 0", "max_prompt_length": ">= 1", "log_samples": ">= 0",
    "dynamic_sampling_max_rounds": ">= 1", "overlong_buffer": ">= 0", "minibatches_per_step": ">= 1",
    "grad_accumulation_steps": ">= 1", "lora_r": ">= 0", "lora_alpha": "> 0", "lora_dropout": "[0, 1)",
}

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
