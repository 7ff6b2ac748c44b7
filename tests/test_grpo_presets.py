"""GRPO presets carry the papers' values, each with a source, and plug into the loss functions."""

import inspect
import math

import pytest
import torch

from nanoseek.rl import completion_mask, group_advantages, grpo_loss
from nanoseek.rl.advantages import group_advantages_loop
from nanoseek.rl.presets import BASE, PRESET_NAMES, PRESETS, preset, preset_sources


def test_paper_values():
    dsm = preset("deepseekmath")
    assert (dsm["group_size"], dsm["beta"], dsm["lr"]) == (64, 0.04, 1e-6)
    r1 = preset("r1_zero")
    assert (r1["group_size"], r1["beta"], r1["lr"], r1["temperature"], r1["ref_reset_every"]) == (16, 0.001, 3e-6, 1.0, 400)
    dr = preset("dr_grpo")
    assert (dr["scale"], dr["loss_type"], dr["beta"]) == ("none", "dr_grpo", 0.0)
    dapo = preset("dapo")
    assert (dapo["epsilon_low"], dapo["epsilon_high"], dapo["loss_type"], dapo["beta"]) == (0.2, 0.28, "dapo", 0.0)
    assert dapo["dynamic_sampling"] and dapo["overlong_filtering"] and dapo["soft_overlong_punishment"]


def test_every_value_has_a_source_and_presets_are_read_only():
    for name in PRESET_NAMES:
        src = preset_sources(name)
        assert set(src) >= set(BASE) and all(isinstance(s, str) and s for s in src.values())
    p = preset("dapo")
    p["beta"] = 1.0
    assert preset("dapo")["beta"] == 0.0
    with pytest.raises(TypeError):
        PRESETS["dapo"]["beta"] = (1.0, "x")
    with pytest.raises(KeyError, match="known"):
        preset("ppo")


def _by_hand(logp, old, ref, adv, mask, loss_type, el, eh, beta, kl_iw):
    """Loss and d loss / d logp of DeepSeekMath eq. 3 (+ beta k3, x rho when ``kl_iw``), token by
    token in Python floats, for the on- and off-clip cases."""
    B, T = mask.shape
    lengths = mask.sum(1).tolist()
    rows = sum(n > 0 for n in lengths)
    weight = {"grpo": lambda b: 1 / (lengths[b] * rows), "dapo": lambda b: 1 / sum(lengths),
              "bnpo": lambda b: 1 / sum(lengths), "dr_grpo": lambda b: 1 / (B * T)}[loss_type]
    loss, grad = 0.0, [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(lengths[b]):
            lp, a = float(logp[b, t]), float(adv[b])
            rho = math.exp(lp - float(old[b, t]))
            clipped = min(max(rho, 1 - el), 1 + eh)
            if rho * a <= clipped * a:  # the unclipped term is the min: gradient -rho A
                surrogate, dsur = -rho * a, -rho * a
            else:  # clipped and constant
                surrogate, dsur = -clipped * a, 0.0
            d = float(ref[b, t]) - lp
            k3, dk3 = math.exp(d) - d - 1, 1 - math.exp(d)
            kl, dkl = (k3 * rho, dk3 * rho + k3 * rho) if kl_iw else (k3, dk3)
            loss += weight(b) * (surrogate + beta * kl)
            grad[b][t] = weight(b) * (dsur + beta * dkl)
    return loss, torch.tensor(grad, dtype=torch.float64)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_drive_the_loss(name):
    p = preset(name)
    loss_kw = {k: p[k] for k in inspect.signature(grpo_loss).parameters if k in p}
    g = p["group_size"]
    r = torch.arange(2 * g, dtype=torch.float64) % 3
    adv = group_advantages(r, g, scale=p["scale"], unbiased=p["std_unbiased"])
    assert adv.tolist() == pytest.approx(group_advantages_loop(r.tolist(), g, p["scale"], unbiased=p["std_unbiased"]),
                                         rel=1e-12, abs=1e-12)
    T = 4
    gen = torch.Generator().manual_seed(0)
    mask = completion_mask(torch.randint(1, T + 1, (2 * g,), generator=gen), T)
    logp = (-torch.rand(2 * g, T, generator=gen, dtype=torch.float64)).requires_grad_()
    # ratios from exp(-0.4) to exp(0.4): some below 1 - 0.2, some above 1 + 0.28, most inside
    old = logp.detach() + torch.linspace(-0.4, 0.4, 2 * g * T, dtype=torch.float64).view(2 * g, T)
    ref = logp.detach() - 0.1
    loss_kw["max_completion_length"] = T  # the paper's 32k would only rescale dr_grpo
    loss, _ = grpo_loss(logp, old, adv, mask, ref, **loss_kw)
    loss.backward()
    eh = p["epsilon_low"] if p["epsilon_high"] is None else p["epsilon_high"]
    want, want_grad = _by_hand(logp.detach(), old, ref, adv, mask, p["loss_type"], p["epsilon_low"], eh, p["beta"],
                               p["kl_importance_weight"])
    assert float(loss.detach()) == pytest.approx(want, rel=1e-12, abs=1e-15)
    torch.testing.assert_close(logp.grad, want_grad, rtol=1e-12, atol=1e-15)
