"""Numerical edge cases of the GRPO math: equal rewards, missing rewards, NaN/inf in masked slots."""

import pytest
import torch

from nanoseek.rl import completion_mask, group_advantages, grpo_loss, reward_validity


@pytest.mark.parametrize("value", [0.35, 1e6, -7.1, 0.1 + 0.2, 1 / 3])
@pytest.mark.parametrize("eps", [0.0, 1e-4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_equal_rewards_give_exact_zero(value, eps, dtype):
    r = torch.full((8,), value, dtype=dtype)
    for scale in ("std", "none", "batch"):
        adv = group_advantages(r, 8, scale=scale, eps=eps)
        assert adv.dtype == dtype
        assert (adv == 0).all(), (scale, adv)


def test_naive_float32_zscore_would_fake_an_advantage():
    """Why the exact-zero path exists: the float32 mean of 0.35 x 8 is not 0.35 (gives ~3e-4)."""
    r = torch.full((8,), 0.35)
    naive = (r - r.mean()) / (r.std() + 1e-4)  # the plain float32 formula
    assert (naive != 0).any()
    assert (group_advantages(r, 8) == 0).all()


def test_equal_group_next_to_live_group():
    r = torch.tensor([0.35] * 4 + [0.0, 1.0, 1.0, 0.0])
    adv = group_advantages(r, 4, eps=0.0)
    assert (adv[:4] == 0).all()
    torch.testing.assert_close(adv[4:], torch.tensor([-1.0, 1.0, 1.0, -1.0]) * (3 ** 0.5) / 2)


def test_group_of_one_gives_zero():
    r = torch.tensor([1.0, 0.0, 5.0])
    for scale in ("std", "none", "batch"):
        assert (group_advantages(r, 1, scale=scale) == 0).all()
    # a group with a single valid reward is also a group of one
    r = torch.tensor([1.0, float("nan"), float("nan"), float("nan")])
    assert (group_advantages(r, 4) == 0).all()


def test_nan_masked_within_its_group_only():
    r = torch.tensor([1.0, 0.0, float("nan"), 0.0, 1.0, 0.0, 1.0, 0.0])
    adv = group_advantages(r, 4, eps=0.0)
    assert torch.isfinite(adv).all() and adv[2] == 0
    # group 0 statistics come from [1, 0, 0] only
    clean = group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3, eps=0.0)
    torch.testing.assert_close(adv[[0, 1, 3]], clean)
    # group 1 is untouched by group 0's NaN
    torch.testing.assert_close(adv[4:], group_advantages(r[4:], 4, eps=0.0))


def test_invalid_flag_masks_like_none():
    r = torch.tensor([1.0, 0.0, 123.0, 0.0])  # 123 is a placeholder for a None reward
    valid = torch.tensor([True, True, False, True])
    adv = group_advantages(r, 4, eps=0.0, valid=valid)
    assert adv[2] == 0
    torch.testing.assert_close(adv[[0, 1, 3]], group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3, eps=0.0))
    assert reward_validity(r, valid).tolist() == [True, True, False, True]
    inf = torch.tensor([1.0, float("inf"), 0.0, 0.0])
    assert reward_validity(inf).tolist() == [True, False, True, True]
    assert group_advantages(inf, 4)[1] == 0


def test_all_invalid_group_is_zero():
    r = torch.full((4,), float("nan"))
    assert (group_advantages(r, 4) == 0).all()


def _batch(B=3, T=5):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(B, T, generator=g)
    old = logp + 0.1 * torch.randn(B, T, generator=g)
    ref = logp + 0.1 * torch.randn(B, T, generator=g)
    mask = completion_mask(torch.tensor([5, 2, 3]), T)
    adv = torch.tensor([1.0, -0.5, 0.7])
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
def test_masked_nan_inf_never_reach_loss_or_grad(loss_type, poison):
    logp, old, ref, adv, mask = _batch()
    clean_logp = logp.clone().requires_grad_()
    clean, _ = grpo_loss(clean_logp, old, adv, mask, ref, loss_type=loss_type, beta=0.04)
    (g_clean,) = torch.autograd.grad(clean, clean_logp)

    dirty_logp = torch.where(mask, logp, poison).requires_grad_()
    d_old, d_ref = torch.where(mask, old, poison), torch.where(mask, ref, -poison)
    loss, metrics = grpo_loss(dirty_logp, d_old, adv, mask, d_ref, loss_type=loss_type, beta=0.04)
    (g,) = torch.autograd.grad(loss, dirty_logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert all(torch.isfinite(v) for v in metrics.values())
    torch.testing.assert_close(loss, clean)
    torch.testing.assert_close(g, g_clean)
    assert (g[~mask] == 0).all()


def test_nan_advantage_of_dropped_row_does_not_poison_grad():
    logp, old, ref, adv, mask = _batch()
    adv = adv.clone()
    adv[1] = float("nan")
    mask = completion_mask(torch.tensor([5, 2, 3]), 5, drop=torch.tensor([False, True, False]))
    lp = logp.clone().requires_grad_()
    loss, _ = grpo_loss(lp, old, adv, mask)
    (g,) = torch.autograd.grad(loss, lp)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_upstream_nan_logits_in_masked_slots_get_zero_grad():
    """NaN produced upstream (e.g. logits of padding) gets a 0 gradient, not 0 * nan."""
    logits = torch.randn(2, 4, 7, requires_grad=True)
    lp = torch.log_softmax(logits, -1)[..., 0] + torch.tensor([[0, 0, float("nan"), float("nan")]] * 2)
    mask = completion_mask(torch.tensor([2, 2]), 4)
    loss, _ = grpo_loss(lp, None, torch.tensor([1.0, -1.0]), mask)
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(g).all() and (g[:, 2:] == 0).all()


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])
def test_dropping_truncated_rows_shrinks_denominator(loss_type):
    logp, old, ref, adv, mask = _batch()
    keep = torch.tensor([True, False, True])  # row 1 truncated (overlong filtering)
    dropped = completion_mask(torch.tensor([5, 2, 3]), 5, drop=~keep)
    full, _ = grpo_loss(logp, old, adv, dropped, loss_type=loss_type)
    sub, _ = grpo_loss(logp[keep], old[keep], adv[keep], mask[keep], loss_type=loss_type)
    torch.testing.assert_close(full, sub)  # same as if the row had never been sampled


def test_dr_grpo_denominator_is_constant():
    logp, old, _, adv, mask = _batch()
    dropped = completion_mask(torch.tensor([5, 2, 3]), 5, drop=torch.tensor([False, True, False]))
    loss, _ = grpo_loss(logp, old, adv, dropped, loss_type="dr_grpo", max_completion_length=8)
    per_tok = -torch.min(torch.exp(logp - old) * adv[:, None], torch.exp(logp - old).clamp(0.8, 1.2) * adv[:, None])
    torch.testing.assert_close(loss, per_tok[dropped].sum() / (3 * 8))


def test_all_masked_batch_gives_zero_loss_and_grad():
    logp, old, ref, adv, _ = _batch()
    lp = logp.clone().requires_grad_()
    mask = torch.zeros(3, 5, dtype=torch.bool)
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
        loss, _ = grpo_loss(lp, old, adv, mask, ref, loss_type=lt, beta=0.1)
        (g,) = torch.autograd.grad(loss, lp)
        assert loss == 0 and (g == 0).all()


def test_dapo_global_token_count_over_microbatches():
    """Two micro-batches with num_items = global token count sum to the full-batch DAPO loss."""
    logp, old, _, adv, mask = _batch()
    full, _ = grpo_loss(logp, old, adv, mask, loss_type="dapo")
    n = int(mask.sum())
    a, _ = grpo_loss(logp[:1], old[:1], adv[:1], mask[:1], loss_type="dapo", num_items=n)
    b, _ = grpo_loss(logp[1:], old[1:], adv[1:], mask[1:], loss_type="dapo", num_items=n)
    torch.testing.assert_close(a + b, full)


def test_clip_metrics():
    mask = torch.ones(1, 4, dtype=torch.bool)
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[0.5, 1.0, 1.5, 1.1]]))
    _, m = grpo_loss(logp, old, torch.tensor([-1.0]), mask)
    assert float(m["clip_ratio/low"]) == 0.25 and float(m["clip_ratio/high"]) == 0.0
    _, m = grpo_loss(logp, old, torch.tensor([1.0]), mask, epsilon_high=0.28)
    assert float(m["clip_ratio/high"]) == 0.25 and float(m["clip_ratio/region"]) == 0.25
    assert float(m["ratio"]) == pytest.approx((0.5 + 1 + 1.5 + 1.1) / 4)
