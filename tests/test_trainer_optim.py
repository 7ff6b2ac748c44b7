"""train/optim.py: the AdamW builder and learning-rate schedules shared by pretraining, SFT and GRPO."""

import math

import pytest
import torch

from nanoseek.rl.config import GRPOConfig
from nanoseek.train.optim import ADAMW_BETAS, ADAMW_EPS, GRPO_BETAS, LR_SCHEDULES, lr_at, make_adamw, set_lr


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
    assert g["params"] == params and g["weight_decay"] == 0.01 and g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8
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


def test_grpo_optimizer_defaults_are_trls():
    """TRL's GRPOTrainer takes AdamW's betas, eps, weight decay, clipping and warm-up from
    transformers.TrainingArguments; the GRPO trainer's defaults are those values (train/optim.py)."""
    import dataclasses

    from transformers import TrainingArguments

    hf = {f.name: f.default for f in dataclasses.fields(TrainingArguments)}
    assert GRPO_BETAS == (hf["adam_beta1"], hf["adam_beta2"]) == (0.9, 0.999)
    assert ADAMW_EPS == hf["adam_epsilon"] == 1e-8
    cfg = GRPOConfig()
    assert (cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps) == (hf["weight_decay"], hf["max_grad_norm"],
                                                                 hf["warmup_steps"]) == (0.0, 1.0, 0)
    assert cfg.min_lr_ratio == 1.0  # constant rate (DAPO sec. 4.1)
    assert ADAMW_BETAS == (0.9, 0.95)  # DeepSeek-V3 sec. 4.2, pre-training and SFT
