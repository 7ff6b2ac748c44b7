"""Named GRPO hyperparameter presets with the papers' values, each value with its source.

Keys match the keyword arguments of :func:`nanoseek.rl.group_advantages` (``group_size``,
``scale``) and :func:`nanoseek.rl.grpo_loss` (``loss_type``, ``epsilon_low``, ``epsilon_high``,
``beta``, ``max_completion_length``, ``kl_importance_weight``), plus trainer settings (``lr``,
``temperature``, ``ref_reset_every``, ...). Every preset has every key of :data:`BASE`; a value a
paper does not state keeps the base value and says so in its source.

Use :func:`preset` for the values (a fresh dict each call, safe to edit) and :func:`preset_sources`
for where each value comes from. Sources: DEEPSEEK.md §2.1 (DeepSeekMath §4.2, R1-Nature §2 /
Methods / Suppl. 3.2); Dr. GRPO = Liu et al. 2025, "Understanding R1-Zero-Like Training";
DAPO = Yu et al. 2025.
"""

from __future__ import annotations

from types import MappingProxyType

# key -> (value, source). The defaults every preset starts from.
BASE: dict[str, tuple[object, str]] = {
    "group_size": (8, "TRL GRPOConfig.num_generations default (no paper)"),
    "scale": ("std", "group z-score, DeepSeekMath §4.1.2 / R1 eq. 3"),
    "std_unbiased": (True, "TRL / verl convention; papers do not say (see advantages.py)"),
    "loss_type": ("grpo", "DeepSeekMath eq. 3: 1/G sum_i 1/|o_i| sum_t"),
    "epsilon_low": (0.2, "PPO / TRL convention; DeepSeekMath does not state epsilon"),
    "epsilon_high": (None, "None = epsilon_low (symmetric clip)"),
    "beta": (0.0, "TRL default; no paper"),
    "kl_estimator": ("k3", "DeepSeekMath eq. 4 (Schulman's unbiased estimator)"),
    "kl_importance_weight": (False, "plain k3 as in DeepSeekMath / R1 (TRL 1.16 defaults to True)"),
    "lr": (1e-6, "DeepSeekMath §4.2"),
    "temperature": (1.0, "R1-Zero rollouts, R1-Nature §2"),
    "max_completion_length": (1024, "DeepSeekMath §4.2"),
    "num_iterations": (1, "mu = 1 policy update per batch, DeepSeekMath §4.2"),
    "ref_reset_every": (None, "None = fixed reference"),
    "dynamic_sampling": (False, "off outside DAPO"),
    "overlong_filtering": (False, "off outside DAPO"),
    "soft_overlong_punishment": (False, "off outside DAPO"),
    "overlong_buffer": (None, "only with soft_overlong_punishment"),
}

_PRESETS: dict[str, dict[str, tuple[object, str]]] = {
    "deepseekmath": {
        "group_size": (64, "DeepSeekMath §4.2: 64 outputs per question"),
        "beta": (0.04, "DeepSeekMath §4.2: KL coefficient 0.04"),
        "lr": (1e-6, "DeepSeekMath §4.2: policy learning rate 1e-6"),
        "max_completion_length": (1024, "DeepSeekMath §4.2: max length 1024"),
        "batch_size": (1024, "DeepSeekMath §4.2: batch size 1024"),
        "num_iterations": (1, "DeepSeekMath §4.2: single update per exploration stage (ratio = 1)"),
    },
    "r1_zero": {
        "group_size": (16, "R1-Nature §2 / Methods: 16 outputs per question"),
        "beta": (0.001, "R1-Nature Methods: KL coefficient 0.001"),
        "lr": (3e-6, "R1-Nature Methods: learning rate 3e-6"),
        "temperature": (1.0, "R1-Nature Methods: rollout temperature 1"),
        "ref_reset_every": (400, "R1-Nature Methods: reference replaced by the policy every 400 steps"),
        "epsilon_low": (10.0, "R1-Nature Suppl. 3.2.1 gives 10 for RL stage 1, 'same as R1-Zero'; "
                              "not stated for R1-Zero itself"),
        "max_completion_length": (32768, "R1-Nature Methods: 32,768, raised to 65,536 after step 8.2k"),
        "questions_per_step": (32, "R1-Nature Methods: 32 questions per step (batch 512)"),
        "minibatches_per_rollout": (16, "R1-Nature Methods: 8,192 outputs per rollout in 16 minibatches"),
        "total_steps": (10400, "R1-Nature Methods: 10,400 steps = 1.6 epochs"),
    },
    "r1_stage1": {
        "group_size": (16, "R1-Nature Suppl. 3.2.1: same as R1-Zero"),
        "beta": (0.001, "R1-Nature Suppl. 3.2.1: same as R1-Zero"),
        "lr": (3e-6, "R1-Nature Suppl. 3.2.1: same as R1-Zero"),
        "epsilon_low": (10.0, "R1-Nature Suppl. 3.2.1: clip ratio 10 ('plays a crucial role')"),
        "temperature": (1.0, "R1-Nature Suppl. 3.2.1: same as R1-Zero"),
        "ref_reset_every": (400, "R1-Nature Suppl. 3.2.1: same as R1-Zero"),
    },
    "dr_grpo": {
        "scale": ("none", "Dr. GRPO §3.1: drop the std division (question-difficulty bias)"),
        "loss_type": ("dr_grpo", "Dr. GRPO §3.1: drop 1/|o_i|, normalise by a constant (length bias)"),
        "beta": (0.0, "Dr. GRPO: no KL term"),
    },
    "dapo": {
        "epsilon_low": (0.2, "DAPO §3.1 clip-higher: eps_low 0.2"),
        "epsilon_high": (0.28, "DAPO §3.1 clip-higher: eps_high 0.28"),
        "loss_type": ("dapo", "DAPO §3.3 token-level policy-gradient loss"),
        "beta": (0.0, "DAPO §2.3: KL term removed"),
        "dynamic_sampling": (True, "DAPO §3.2 eq. 11: drop groups whose accuracy is all 0 or all 1, resample"),
        "overlong_filtering": (True, "DAPO §3.4: mask truncated samples out of the loss"),
        "soft_overlong_punishment": (True, "DAPO §3.4: length penalty in the last overlong_buffer tokens"),
        "group_size": (16, "DAPO §4.1: 16 responses per prompt"),
        "lr": (1e-6, "DAPO §4.1: constant learning rate 1e-6"),
        "max_completion_length": (20480, "DAPO §4.1: 16,384 expected + 4,096 buffer"),
        "overlong_buffer": (4096, "DAPO §4.1: soft punishment cache 4,096 tokens"),
    },
}

PRESET_NAMES = tuple(_PRESETS)
# Read-only views, so no caller can edit a preset for everyone.
PRESETS = MappingProxyType({n: MappingProxyType({**BASE, **p}) for n, p in _PRESETS.items()})


def preset(name: str) -> dict[str, object]:
    """The values of preset ``name`` as a new dict (``{key: value}``).

    Args:
        name: one of :data:`PRESET_NAMES` (``deepseekmath``, ``r1_zero``, ``r1_stage1``,
            ``dr_grpo``, ``dapo``).

    Raises:
        KeyError: unknown name, with the known ones in the message.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown GRPO preset {name!r}; known: {', '.join(PRESET_NAMES)}")
    return {k: v for k, (v, _) in PRESETS[name].items()}


def preset_sources(name: str) -> dict[str, str]:
    """Where each value of preset ``name`` comes from (``{key: source}``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown GRPO preset {name!r}; known: {', '.join(PRESET_NAMES)}")
    return {k: s for k, (_, s) in PRESETS[name].items()}
