"""Auxiliary-loss-free balancing (V3 §2.1.2), the sequence-wise balance loss, and MTP."""

import torch

from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig, mtp_loss
from nanoseek.model.moe import MoE, sequence_balance_loss


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=53, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
                n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, kv_lora_rank=16, q_lora_rank=24,
                qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, bias_update_speed=0.01)
    base.update(kw)
    return ModelConfig.tiny(**base)


def unbalanced_moe(c: ModelConfig) -> MoE:
    torch.manual_seed(0)
    moe = MoE(c)
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.02)
        moe.gate.weight[0] += 0.5  # expert 0 and 1 attract every token whose features are positive
        moe.gate.weight[1] += 0.4
    return moe


def imbalance(load: torch.Tensor) -> float:
    return float(load.max() / load.mean())


def test_bias_update_evens_out_load():
    c = cfg()
    moe = unbalanced_moe(c)
    gen = torch.Generator().manual_seed(1)
    loads = []
    for step in range(300):
        x = torch.randn(1, 256, c.hidden_size, generator=gen).abs()
        with torch.no_grad():
            _, load, _ = moe(x)
        loads.append(load)
        moe.update_bias(load, c.bias_update_speed)
    first, last = imbalance(torch.stack(loads[:5]).sum(0)), imbalance(torch.stack(loads[-20:]).sum(0))
    assert first > 3.0  # experts 0/1 take most tokens at the start
    assert last < 1.3, (first, last)
    assert moe.gate.e_score_correction_bias[0] < 0 < moe.gate.e_score_correction_bias[2]


def test_bias_changes_selection_not_gate_weights():
    c = cfg()
    moe = unbalanced_moe(c)
    x = torch.randn(64, c.hidden_size)
    scores, idx0, w0 = moe.gate(x)
    with torch.no_grad():
        moe.gate.e_score_correction_bias[5] = 10.0  # force expert 5 into every selection
    scores2, idx, w = moe.gate(x)
    assert torch.equal(scores, scores2)  # affinities s do not see b
    assert (idx == 5).any(1).all() and not torch.equal(idx, idx0)
    raw = scores.gather(1, idx)
    torch.testing.assert_close(w, raw / raw.sum(1, keepdim=True) * c.routed_scaling_factor)


def test_model_update_expert_bias_from_forward():
    c = cfg(num_nextn_predict_layers=1)
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(c)
    out = m(torch.randint(0, 53, (4, 16)))
    assert out.expert_load.shape == (2, 8) and out.expert_load[1].sum() == 0  # MTP block not run
    before = [moe.gate.e_score_correction_bias.clone() for moe in m.moe_layers()]
    m.update_expert_bias(out.expert_load)
    after = [moe.gate.e_score_correction_bias for moe in m.moe_layers()]
    load = out.expert_load[0]
    torch.testing.assert_close(after[0] - before[0], 0.01 * torch.sign(load.mean() - load))
    assert torch.equal(after[1], before[1])  # no tokens -> no update
    m.config.bias_update_speed = 0.0
    m.update_expert_bias(out.expert_load)
    assert torch.equal(m.moe_layers()[0].gate.e_score_correction_bias, after[0])


def test_sequence_balance_loss_values_and_training():
    E, K = 4, 2
    # perfectly balanced: uniform affinities, every expert picked equally -> loss 1
    scores = torch.full((1, 4, E), 0.5)
    idx = torch.tensor([[[0, 1], [2, 3], [0, 1], [2, 3]]])
    assert abs(float(sequence_balance_loss(scores, idx)) - 1.0) < 1e-6
    # collapsed routing scores higher
    scores = torch.tensor([[[0.9, 0.9, 0.1, 0.1]] * 4])
    idx = torch.tensor([[[0, 1]] * 4])
    assert float(sequence_balance_loss(scores, idx)) > 1.5
    # padded tokens do not count
    mask = torch.tensor([[True, True, False, False]])
    assert torch.isclose(sequence_balance_loss(scores, idx, mask), sequence_balance_loss(scores[:, :2], idx[:, :2]))
    # minimising α·L_Bal with the router evens the load
    c = cfg()
    moe = unbalanced_moe(c)
    opt = torch.optim.SGD([moe.gate.weight], lr=5.0)
    x = torch.randn(2, 128, c.hidden_size).abs()
    losses = []
    for _ in range(30):
        _, _, aux = moe(x, want_aux=True)
        losses.append(float(aux.detach()))
        opt.zero_grad()
        aux.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0]


def test_mtp_loss_and_causality():
    c = cfg(num_nextn_predict_layers=1)
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(c).eval()
    ids = torch.randint(0, 53, (2, 10))
    with torch.no_grad():
        out = m(ids, return_mtp=True)
        # depth-1 row i sees tokens <= i+1 only: changing token 7 leaves rows 0..5 unchanged
        ids2 = ids.clone()
        ids2[:, 7] = (ids2[:, 7] + 1) % 53
        out2 = m(ids2, return_mtp=True)
    torch.testing.assert_close(out.mtp_logits[0][:, :6], out2.mtp_logits[0][:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(out.mtp_logits[0][:, 6], out2.mtp_logits[0][:, 6])
    logits = out.mtp_logits[0]
    manual = torch.nn.functional.cross_entropy(logits[:, :8].reshape(-1, 53), ids[:, 2:].reshape(-1))
    assert torch.isclose(mtp_loss(out.mtp_logits, ids, weight=0.3), 0.3 * manual)


def test_mtp_trains_on_one_batch():
    c = cfg(num_nextn_predict_layers=1, initializer_range=0.05)
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(c)
    ids = torch.randint(0, 53, (4, 12))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        out = m(ids, return_mtp=True)
        loss = mtp_loss(out.mtp_logits, ids, weight=1.0)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
