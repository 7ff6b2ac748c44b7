"""Unit tests for the pure GRPO functions in nanoseek.rl (CPU, milliseconds)."""

import math

import pytest
import torch

from nanoseek.rl import (
    completion_mask,
    group_advantages,
    grpo_loss,
    kl_k3,
    token_entropy,
    token_logprobs,
    truncated,
)
from nanoseek.rl.advantages import group_advantages_loop


def test_group_advantages_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (6 * 4,), generator=g).float() * 0.5
    r[5] = float("nan")
    for scale in ("std", "none"):
        for unbiased in (True, False):
            got = group_advantages(r, 4, scale=scale, unbiased=unbiased)
            want = group_advantages_loop(r.tolist(), 4, scale=scale, unbiased=unbiased)
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))


def test_group_advantages_zscore_known_values():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = group_advantages(r, 4, eps=0.0)
    std = math.sqrt(0.75**2 + 3 * 0.25**2) / math.sqrt(3)  # unbiased
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]) / std)
    adv_pop = group_advantages(r, 4, eps=0.0, unbiased=False)
    torch.testing.assert_close(adv_pop, torch.tensor([0.75, -0.25, -0.25, -0.25]) / math.sqrt(0.1875))
    torch.testing.assert_close(group_advantages(r, 4, scale="none"), torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert abs(float(adv.sum())) < 1e-6


def test_group_advantages_bad_args():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 2, scale="z")


def test_completion_mask_from_lengths():
    m = completion_mask(torch.tensor([0, 2, 5, 9]), 5)
    assert m.dtype == torch.bool and m.shape == (4, 5)
    assert m.sum(1).tolist() == [0, 2, 5, 5]
    m = completion_mask(torch.tensor([3, 3]), 4, drop=torch.tensor([True, False]))
    assert m.sum(1).tolist() == [0, 3]
    tr = truncated(torch.tensor([4, 4, 2]), 4, eos_seen=torch.tensor([False, True, False]))
    assert tr.tolist() == [True, False, False]


def test_kl_k3_values():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -3.0])
    d = ref - lp
    torch.testing.assert_close(kl_k3(lp, ref), torch.exp(d) - d - 1)
    assert (kl_k3(lp, ref) >= 0).all() and kl_k3(lp, ref)[0] == 0


def _inputs(B=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    ref = logp.detach() + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    mask = completion_mask(torch.tensor([6, 3, 1, 4])[:B], T)
    return logp, old, ref, adv, mask


def _reference_loss(logp, old, ref, adv, mask, loss_type, el=0.2, eh=0.2, beta=0.0, L=None):
    """Loop reference: DeepSeekMath eq. 3 written term by term."""
    B, T = mask.shape
    rows, total, ntok = [], 0.0, 0
    for b in range(B):
        terms = []
        for t in range(T):
            if not mask[b, t]:
                continue
            rho = torch.exp(logp[b, t] - old[b, t])
            s = -torch.min(rho * adv[b], rho.clamp(1 - el, 1 + eh) * adv[b])
            if beta:
                d = ref[b, t] - logp[b, t]
                s = s + beta * (torch.exp(d) - d - 1)
            terms.append(s)
        if terms:
            rows.append(sum(terms) / len(terms))
            total = total + sum(terms)
            ntok += len(terms)
    if loss_type == "grpo":
        return sum(rows) / len(rows)
    if loss_type in ("bnpo", "dapo"):
        return total / ntok
    return total / (B * (L or T))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_loop_reference(loss_type, beta):
    logp, old, ref, adv, mask = _inputs()
    loss, metrics = grpo_loss(logp, old, adv, mask, ref, loss_type=loss_type, beta=beta, epsilon_high=0.28)
    (g1,) = torch.autograd.grad(loss, logp)
    want = _reference_loss(logp, old, ref, adv, mask, loss_type, eh=0.28, beta=beta)
    (g2,) = torch.autograd.grad(want, logp)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(g1, g2)
    assert set(metrics) >= {"clip_ratio/low", "clip_ratio/high", "clip_ratio/region", "ratio", "kl"}


def test_on_policy_ratio_one_gradient_flows():
    logp, _, _, adv, mask = _inputs()
    loss, m = grpo_loss(logp, None, adv, mask)
    assert float(m["ratio"]) == pytest.approx(1.0)
    (g,) = torch.autograd.grad(loss, logp)
    # d/dlogp of -A*rho at rho=1 is -A / |o_i| / n_completions.
    want = torch.where(mask, -adv[:, None] / mask.sum(1, keepdim=True) / 4, 0.0)
    torch.testing.assert_close(g, want)


def test_grpo_loss_validation():
    logp, old, _, adv, mask = _inputs()
    with pytest.raises(ValueError):
        grpo_loss(logp, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError):
        grpo_loss(logp, old, adv, mask, loss_type="ppo")


def test_loss_registry_drives_grpo_loss_and_the_config():
    from nanoseek.errors import NanoseekError
    from nanoseek.rl import LOSS_AGGREGATIONS, LOSS_TYPES, register_loss
    from nanoseek.rl.config import GRPOConfig
    from nanoseek.rl.grpo import LOSS_UNITS

    assert LOSS_TYPES == tuple(LOSS_AGGREGATIONS) == ("grpo", "bnpo", "dr_grpo", "dapo")
    assert all(a.unit in LOSS_UNITS for a in LOSS_AGGREGATIONS.values())
    for name in LOSS_TYPES:
        assert GRPOConfig(loss_type=name).loss_type == name
    with pytest.raises(NanoseekError, match="loss_type"):
        GRPOConfig(loss_type="seq-mean-token-mean")  # aliases are for grpo_loss callers, not configs
    with pytest.raises(ValueError):
        register_loss("grpo", unit="tokens")
    with pytest.raises(ValueError):
        register_loss("new", unit="bytes")

    @register_loss("token_sum_test", unit="tokens")
    def token_sum(per_token, mask, *, max_completion_length=None, num_items=None):
        return per_token.sum()

    try:
        logp, old, _, adv, mask = _inputs()
        total, _ = grpo_loss(logp, old, adv, mask, loss_type="token_sum_test")
        mean, _ = grpo_loss(logp, old, adv, mask, loss_type="bnpo")
        torch.testing.assert_close(total / mask.sum(), mean)
        assert GRPOConfig(loss_type="token_sum_test").loss_type == "token_sum_test"
    finally:
        del LOSS_AGGREGATIONS["token_sum_test"]


def test_token_logprobs_and_entropy_match_log_softmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g, requires_grad=True)
    tgt = torch.randint(0, 11, (3, 5), generator=g)
    for temp in (1.0, 0.7):
        lsm = torch.log_softmax(logits / temp, -1)
        torch.testing.assert_close(token_logprobs(logits, tgt, temperature=temp), lsm.gather(-1, tgt[..., None])[..., 0])
        torch.testing.assert_close(token_entropy(logits, temperature=temp), -(lsm.exp() * lsm).sum(-1))
    (gr,) = torch.autograd.grad(token_logprobs(logits, tgt).sum(), logits)
    assert torch.isfinite(gr).all()
    masked = logits.detach().clone()
    masked[..., 0] = -torch.inf
    assert torch.isfinite(token_entropy(masked)).all()
    bf = token_logprobs(logits.detach().bfloat16(), tgt)
    assert bf.dtype == torch.float32
