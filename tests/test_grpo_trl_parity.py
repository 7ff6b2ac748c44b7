"""Parity of nanoseek.rl with TRL 1.16's real GRPOTrainer code (offline, tiny in-test Qwen2).

TRL has no pure loss function: ``GRPOTrainer._compute_loss`` runs the model. We build one trainer
per module on a 2-layer, hidden-32 Qwen2 with a word-level tokenizer made here, then swap its
``_get_per_token_logps_and_entropies`` for one that returns planted log-probs (a leaf tensor, so
gradients can be compared). Advantages go through TRL's real ``_generate_and_score_completions``
with a reward function that returns planted rewards.

Deliberate differences, each tested below rather than hidden:
* ``"grpo"`` with an empty (fully masked) completion: TRL still divides by all ``B`` rows,
  nanoseek by the non-empty rows (a dropped completion should not dilute the others' gradient).
* Equal-reward groups: TRL's float32 z-score can give a small non-zero advantage (0.35 x 8 or
  0.45 x 3 -> ~3e-4, 0.86 x 3 -> ~6e-4); nanoseek gives exactly 0.
* KL importance weighting: TRL 1.16 defaults to ``use_bias_correction_kl=True`` (DeepSeek-V3.2);
  nanoseek defaults to the DeepSeekMath / R1 plain k3 and matches TRL with
  ``kl_importance_weight=True``.
* Masking: TRL multiplies by the mask, so its masked slots must be finite here; nanoseek uses
  ``where`` and is also given NaN there.
"""

import pytest
import torch

from nanoseek.rl import completion_mask, group_advantages, grpo_loss

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

B, P, T, V = 6, 3, 5, 16
ATOL = 1e-6


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(V - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    model = Qwen2ForCausalLM(cfg)
    planted = {"rewards": [0.0] * B}

    def planted_reward(completions, **kwargs):
        return list(planted["rewards"])

    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=B, num_generations=3,
        max_completion_length=T, beta=0.0, report_to=[], use_cpu=True, logging_strategy="no",
        save_strategy="no", disable_tqdm=True, bf16=False, fp16=False, temperature=1.0,
    )
    ds = datasets.Dataset.from_dict({"prompt": ["w1 w2 w3", "w4 w5 w6"]})
    tr = GRPOTrainer(model=model, reward_funcs=planted_reward, args=args, train_dataset=ds, processing_class=tokenizer)
    tr.planted = planted
    tr.current_gradient_accumulation_steps = 1
    return tr


def _planted(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    mask = completion_mask(lengths, T)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64).float() * 2 - 0.05
    old = logp + 0.3 * torch.randn(B, T, generator=g)  # big enough that both clip sides act
    ref = logp + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    return logp, old, ref, adv, mask


def _trl_loss(trainer, loss_type, logp, old, ref, adv, mask, *, beta, eps_low, eps_high, bias_kl, num_items=None):
    """Run TRL's real _compute_loss with planted per-token log-probs; return (loss, grad wrt logp)."""
    leaf = logp.clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (leaf, torch.zeros_like(leaf), None)
    trainer.loss_type, trainer.beta = loss_type, beta
    trainer.epsilon_low, trainer.epsilon_high = eps_low, eps_high
    trainer.args.use_bias_correction_kl = bias_kl
    trainer.model.train()
    inputs = {
        "prompt_ids": torch.full((B, P), 3), "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.full((B, T), 4), "completion_mask": mask.long(),
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(mask.sum() if num_items is None else num_items)),
    }
    loss = trainer._compute_loss(trainer.model, inputs)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def _ours(loss_type, logp, old, ref, adv, mask, *, poison=True, **kw):
    if poison:  # nanoseek must ignore whatever sits in masked slots
        logp, old, ref = (None if x is None else torch.where(mask, x, torch.nan) for x in (logp, old, ref))
    leaf = logp.clone().requires_grad_()
    loss, metrics = grpo_loss(leaf, old, adv, mask, ref, loss_type=loss_type, max_completion_length=T, **kw)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), torch.nan_to_num(grad), metrics


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize(("beta", "eps_high"), [(0.0, 0.2), (0.04, 0.2), (0.001, 0.28)])
def test_loss_and_grad_match_trl(trainer, loss_type, beta, eps_high):
    logp, old, ref, adv, mask = _planted()
    want, want_g = _trl_loss(trainer, loss_type, logp, old, ref, adv, mask, beta=beta, eps_low=0.2,
                             eps_high=eps_high, bias_kl=True)
    got, got_g, _ = _ours(loss_type, logp, old, ref, adv, mask, beta=beta, epsilon_low=0.2, epsilon_high=eps_high,
                          kl_importance_weight=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_g, want_g, atol=ATOL, rtol=0)
    if beta:  # the paper's plain k3 equals TRL with use_bias_correction_kl=False
        want, want_g = _trl_loss(trainer, loss_type, logp, old, ref, adv, mask, beta=beta, eps_low=0.2,
                                 eps_high=eps_high, bias_kl=False)
        got, got_g, _ = _ours(loss_type, logp, old, ref, adv, mask, beta=beta, epsilon_high=eps_high)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        torch.testing.assert_close(got_g, want_g, atol=ATOL, rtol=0)


def test_on_policy_and_metrics_match_trl(trainer):
    logp, _, ref, adv, mask = _planted(1)
    leaf = logp.clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (leaf, torch.zeros_like(leaf), None)
    trainer.loss_type, trainer.beta, trainer.epsilon_low, trainer.epsilon_high = "grpo", 0.0, 0.2, 0.2
    inputs = {
        "prompt_ids": torch.full((B, P), 3), "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.full((B, T), 4), "completion_mask": mask.long(), "advantages": adv,
        "num_items_in_batch": mask.sum().float(),
        # no old_per_token_logps: TRL uses per_token_logps.detach(), as nanoseek does for old_logp=None
    }
    want = trainer._compute_loss(trainer.model, inputs)
    (want_g,) = torch.autograd.grad(want, leaf)
    got, got_g, m = _ours("grpo", logp, None, ref, adv, mask)
    torch.testing.assert_close(got, want.detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(got_g, want_g, atol=ATOL, rtol=0)

    # clip metrics: same definitions as TRL's clip_ratio/{low,high,region}_mean
    logp, old, ref, adv, mask = _planted(2)
    trainer._metrics["train"].clear()
    _trl_loss(trainer, "dapo", logp, old, ref, adv, mask, beta=0.04, eps_low=0.2, eps_high=0.28, bias_kl=True)
    _, _, m = _ours("dapo", logp, old, ref, adv, mask, beta=0.04, epsilon_high=0.28, kl_importance_weight=True)
    tm = trainer._metrics["train"]
    for ours, theirs in [("low", "low_mean"), ("high", "high_mean"), ("region", "region_mean")]:
        assert float(m[f"clip_ratio/{ours}"]) == pytest.approx(tm[f"clip_ratio/{theirs}"][-1], abs=1e-7)
    assert float(m["clip_ratio/region"]) > 0
    assert float(m["kl"]) == pytest.approx(tm["kl"][-1], abs=1e-6)


def test_dapo_global_num_items_matches_trl(trainer):
    """DAPO normalises by the generation batch's token count, not this micro-batch's."""
    logp, old, ref, adv, mask = _planted(3)
    want, want_g = _trl_loss(trainer, "dapo", logp, old, ref, adv, mask, beta=0.0, eps_low=0.2, eps_high=0.28,
                             bias_kl=True, num_items=40)
    got, got_g, _ = _ours("dapo", logp, old, ref, adv, mask, epsilon_high=0.28, num_items=40)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_g, want_g, atol=ATOL, rtol=0)


def test_grpo_empty_row_deliberate_difference(trainer):
    """A fully masked completion: TRL averages over all B rows, nanoseek over non-empty rows."""
    logp, old, ref, adv, mask = _planted(4)
    mask = completion_mask(torch.tensor([5, 3, 1, 4, 5, 2]), T, drop=torch.tensor([0, 1, 0, 0, 0, 0]).bool())
    want, want_g = _trl_loss(trainer, "grpo", logp, old, ref, adv, mask, beta=0.0, eps_low=0.2, eps_high=0.2,
                             bias_kl=True)
    got, got_g, _ = _ours("grpo", logp, old, ref, adv, mask)
    torch.testing.assert_close(got, want * B / (B - 1), atol=ATOL, rtol=0)
    torch.testing.assert_close(got_g, want_g * B / (B - 1), atol=ATOL, rtol=0)
    # The token-level losses agree even with the empty row.
    for lt in ("bnpo", "dr_grpo", "dapo"):
        want, want_g = _trl_loss(trainer, lt, logp, old, ref, adv, mask, beta=0.0, eps_low=0.2, eps_high=0.2,
                                 bias_kl=True)
        got, got_g, _ = _ours(lt, logp, old, ref, adv, mask)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        torch.testing.assert_close(got_g, want_g, atol=ATOL, rtol=0)


def _trl_advantages(trainer, rewards, scale):
    trainer.planted["rewards"] = rewards
    trainer.scale_rewards = scale
    trainer.beta = 0.0
    trainer.model.train()
    rows = [{"prompt": "w1 w2 w3"}] * 3 + [{"prompt": "w4 w5 w6"}] * 3
    with torch.no_grad():
        out = trainer._generate_and_score_completions(rows)
    return out["advantages"].float()


@pytest.mark.parametrize("scale", ["group", "none", "batch"])
def test_advantages_match_trl(trainer, scale):
    ours_scale = {"group": "std", "none": "none", "batch": "batch"}[scale]
    for rewards in ([1.0, 0.0, 0.5, 2.0, -1.0, 0.25], [1.0, None, 0.0, 0.3, 0.9, None]):
        want = _trl_advantages(trainer, rewards, scale)
        r = torch.tensor([float("nan") if x is None else x for x in rewards])
        got = group_advantages(r, 3, scale=ours_scale, eps=1e-4)  # unbiased std, as TRL's nanstd
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_equal_reward_group_deliberate_difference(trainer):
    """TRL's float32 z-score turns 0.45 x 3 into a fake advantage (~3e-4); nanoseek gives exactly 0.

    (0.35 x 8 does the same at G = 8; this fixture has G = 3.)
    """
    rewards = [0.45, 0.45, 0.45, 0.86, 0.86, 0.86]
    want = _trl_advantages(trainer, rewards, "group")
    got = group_advantages(torch.tensor(rewards), 3)
    assert (got == 0).all()
    assert (want != 0).all() and want.abs().max() < 1e-3
