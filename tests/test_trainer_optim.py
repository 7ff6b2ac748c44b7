"""train/optim.py: the AdamW builder and learning-rate schedules shared by pretraining, SFT and GRPO."""

import math

import pytest
import torch

from nanoseek.train.optim import ADAMW_BETAS, GRPO_BETAS, LR_SCHEDULES, lr_at, make_adamw, set_lr


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2, bias=False))
    m[2].weight.requires_grad_(False)
    return m


def test_adamw_decays_matrices_only_with_v3_betas():
    m = _model()
    opt = make_adamw(m, 1e-3, 0.1)
    decay, rest = opt.param_groups
    assert [p.shape for p in decay["params"]] == [(3, 4)] and decay["weight_decay"] == 0.1
    assert [p.shape for p in rest["params"]] == [(3,), (3,), (3,)] and rest["weight_decay"] == 0.0
    assert all(g["betas"] == ADAMW_BETAS == (0.9, 0.95) and g["eps"] == 1e-8 and g["lr"] == 1e-3 for g in opt.param_groups)


def test_grpo_adamw_is_one_group_over_every_trainable_parameter():
    m = _model()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = make_adamw(params, 2e-3, 0.01, betas=GRPO_BETAS, decay="all")
    (g,) = opt.param_groups
    assert g["params"] == params and g["weight_decay"] == 0.01 and g["betas"] == (0.9, 0.99) and g["eps"] == 1e-8
    with pytest.raises(ValueError):
        make_adamw(m, 1e-3, 0.1, decay="vectors")
    set_lr(opt, 0.5)
    assert g["lr"] == 0.5


def test_lr_schedules():
    assert set(LR_SCHEDULES) == {"cosine", "linear"}
    assert [lr_at(s, 10, 1.0, 2, 0.0) for s in (0, 1)] == [0.5, 1.0]  # warm-up, either schedule
    assert lr_at(2, 10, 1.0, 2, 0.1) == 1.0 and lr_at(10, 10, 1.0, 2, 0.1) == pytest.approx(0.1)
    assert lr_at(6, 10, 1.0, 2, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(6, 10, 1.0, 2, 0.0, "linear") == pytest.approx(0.5)
    assert lr_at(5, 3, 1.0, 3, 0.1) == 1.0  # cosine: no decay when total <= warmup
    assert lr_at(7, 10, 2.0, 0, 1.0) == 2.0  # min_ratio 1: constant
