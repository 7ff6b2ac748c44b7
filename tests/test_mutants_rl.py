"""Tests added for the mutants of the RL math that survived bench/mutation_pass.py (issue 19, item 21).

Each test names the mutant it kills; together with test_grpo_math.py, test_grpo_numerics.py,
test_grpo_presets.py and test_grpo_trl_parity.py they leave no surviving mutant in rl/grpo.py,
rl/advantages.py and rl/kl.py (the two equivalent ones are explained in the script).
"""

import pytest
import torch

from nanoseek.rl import completion_mask, group_advantages, grpo_loss, kl_k1, kl_k2
from nanoseek.rl.grpo import loss_aggregation


def _batch(B=4, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 2).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = completion_mask(torch.tensor([5, 0, 3, 1])[:B], T)
    return logp, old, adv, mask


def test_verl_alias_is_the_paper_loss():
    """Mutant: LOSS_ALIASES ignored ("seq-mean-token-mean" would be an unknown loss_type)."""
    logp, old, adv, mask = _batch()
    assert loss_aggregation("seq-mean-token-mean").name == "grpo"
    alias, _ = grpo_loss(logp, old, adv, mask, loss_type="seq-mean-token-mean")
    paper, _ = grpo_loss(logp, old, adv, mask, loss_type="grpo")
    assert torch.equal(alias, paper)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_no_nan_anywhere_in_the_backward_graph(poison):
    """Mutant: advantages not masked before the arithmetic. The loss and logp's gradient stay finite
    either way (a later ``where`` discards the row), but the discarded branch then carries
    ``0 * nan`` gradients, which autograd's anomaly mode reports. Masking first keeps every
    intermediate gradient finite, as grpo.py's docstring promises."""
    logp, old, adv, mask = _batch()
    adv = adv.clone()
    adv[1] = poison  # row 1 is dropped (length 0)
    with torch.autograd.detect_anomaly(check_nan=True):
        loss, _ = grpo_loss(logp, old, adv, mask)
        loss.backward()
    assert torch.isfinite(logp.grad).all() and (logp.grad[1] == 0).all()


@pytest.mark.parametrize("scale", ["std", "none", "batch"])
@pytest.mark.parametrize("rewards", [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1, float("nan")], [0.1, float("nan"), 0.1, 0.1]])
def test_equal_rewards_whose_float_mean_is_inexact_give_exact_zero(scale, rewards):
    """Mutants: zero-spread detection with ``hi >= lo``, and the max over a group that skips invalid
    rewards with +inf instead of -inf. The float64 mean of 0.1 x 3 is 0.10000000000000002, so
    ``r - mean`` is -1.4e-17, not 0: only the exact max == min test gives the promised 0."""
    r = torch.tensor(rewards, dtype=torch.float64)
    assert float(r[0] - r[torch.isfinite(r)].mean()) != 0.0  # the trap is real
    adv = group_advantages(r, len(rewards), scale=scale)
    assert adv.tolist() == [0.0] * len(rewards)


def test_k1_and_k2_values():
    """Mutants: k1's sign flipped, k2 without its 1/2 (Schulman 2020: k1 = log p - log q,
    k2 = (log p - log q)^2 / 2 for samples from p)."""
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-2.0, -1.0, -0.5])
    assert kl_k1(logp, ref).tolist() == [1.0, -1.0, 0.0]
    assert kl_k2(logp, ref).tolist() == [0.5, 0.5, 0.0]
