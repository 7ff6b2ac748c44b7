"""Reinforcement learning for nanoseek: GRPO math as pure tensor functions.

* ``advantages``: group-relative advantages (DeepSeekMath §4.1.2; Dr. GRPO ``scale="none"``).
* ``masks``: completion masks from generated lengths.
* ``kl``: per-token KL estimators (k3 is GRPO's).
* ``grpo``: the clipped GRPO loss, its registered loss aggregations (grpo / bnpo / dr_grpo /
  dapo, ``register_loss``), token log-probs and entropy.
* ``presets``: the papers' hyperparameters by name.

The training loop around them (imported on demand, not here):

* ``trainer``: ``GRPOTrainer``, one step = rollout, advantages, update, health metrics;
* ``config``: ``GRPOConfig``, every knob, presets applied;
* ``rollout``: ``RolloutCollector``: prompt stream, per-completion seeds, rewards, DAPO dynamic
  sampling, stop strings;
* ``update``: micro-batches of whole groups, log-prob scoring, globally normalised loss;
* ``health``: metrics and once-only alarms; ``loggers``: optional TensorBoard / W&B;
* ``distributed``: data parallelism over ranks (torchrun, gloo / nccl).
"""

from nanoseek.rl.advantages import group_advantages, reward_validity
from nanoseek.rl.grpo import LOSS_AGGREGATIONS, LOSS_TYPES, grpo_loss, register_loss, token_entropy, token_logprobs
from nanoseek.rl.kl import kl_k1, kl_k2, kl_k3
from nanoseek.rl.masks import completion_mask, truncated
from nanoseek.rl.presets import PRESET_NAMES, preset, preset_sources

__all__ = [
    "LOSS_AGGREGATIONS",
    "LOSS_TYPES",
    "PRESET_NAMES",
    "completion_mask",
    "group_advantages",
    "grpo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "preset",
    "preset_sources",
    "register_loss",
    "reward_validity",
    "token_entropy",
    "token_logprobs",
    "truncated",
]
