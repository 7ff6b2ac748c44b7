"""GRPO presets carry the papers' values, each with a source, and plug into the loss functions."""

import inspect

import pytest
import torch

from nanoseek.rl import completion_mask, group_advantages, grpo_loss
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


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_drive_the_loss(name):
    p = preset(name)
    loss_kw = {k: p[k] for k in inspect.signature(grpo_loss).parameters if k in p}
    g = p["group_size"]
    r = torch.arange(2 * g, dtype=torch.float32) % 3
    adv = group_advantages(r, g, scale=p["scale"], unbiased=p["std_unbiased"])
    T = 4
    mask = completion_mask(torch.randint(1, T + 1, (2 * g,)), T)
    logp = (-torch.rand(2 * g, T)).requires_grad_()
    ref = logp.detach() - 0.1
    loss_kw["max_completion_length"] = T  # the paper's 32k would only rescale dr_grpo
    loss, _ = grpo_loss(logp, None, adv, mask, ref, **loss_kw)
    loss.backward()
    assert torch.isfinite(loss) and logp.grad.abs().sum() > 0
