"""Core model tests on tiny in-code configs: shapes, padding, cache, absorbed attention, config I/O."""

import json

import pytest
import torch

from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig, mtp_loss
from nanoseek.model.moe import MoE


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, n_group=4,
                topk_group=2, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                first_k_dense_replace=1, initializer_range=0.1, num_nextn_predict_layers=1)
    base.update(kw)
    return ModelConfig.tiny(**base)


def build(**kw) -> DeepseekV3ForCausalLM:
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(tiny(**kw)).eval()


def test_config_validation_and_roundtrip(tmp_path):
    c = tiny(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                           "mscale": 1.0, "mscale_all_dim": 1.0})
    path = c.save(tmp_path)
    d = json.load(open(path))
    assert d["model_type"] == "deepseek_v3" and d["architectures"] == ["DeepseekV3ForCausalLM"]
    c2 = ModelConfig.from_json_file(tmp_path)
    assert c2.to_dict() == ModelConfig.from_dict(c.to_hf_dict()).to_dict()
    assert c2.rope_scaling["factor"] == 4.0
    with pytest.raises(ValueError, match="n_group"):
        tiny(n_group=3)
    with pytest.raises(ValueError, match="hidden_size"):
        tiny(hidden_size=0)
    with pytest.raises(ValueError, match="frobnicate"):
        ModelConfig.from_dict({**c.to_dict(), "frobnicate": 1})
    assert ModelConfig.from_dict({**c.to_dict(), "frobnicate": 1}, strict=False).hidden_size == 64
    assert ModelConfig.from_dict({"q_lora_rank": 0, "transformers_version": "x", "torch_dtype": "bf16"}).q_lora_rank is None


def test_config_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    c = tiny(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256})
    c.save(tmp_path)
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(hf).__name__ == "DeepseekV3Config"
    assert hf.kv_lora_rank == 32 and hf.rope_parameters["rope_type"] == "yarn"
    # and a transformers-written config.json loads back into ModelConfig
    hf.save_pretrained(tmp_path / "hf")
    c2 = ModelConfig.from_json_file(tmp_path / "hf")
    assert c2.rope_scaling["factor"] == 4.0 and c2.rope_theta == c.rope_theta


def test_forward_shapes():
    m = build()
    x = torch.randint(0, 97, (2, 9))
    m.train()
    out = m(x, return_mtp=True)
    assert out.logits.shape == (2, 9, 97) and out.logits.dtype == torch.float32
    assert len(out.mtp_logits) == 1 and out.mtp_logits[0].shape == (2, 8, 97)
    n_moe = len(m.moe_layers())
    assert n_moe == 3  # layers 1, 2 and the MTP block
    assert out.expert_load.shape == (n_moe, 8)
    assert out.expert_load[:2].sum(1).tolist() == [2 * 9 * 2] * 2  # B*T*top_k per main layer
    assert out.aux_loss is not None and out.aux_loss.requires_grad
    loss = out.logits.logsumexp(-1).mean() + mtp_loss(out.mtp_logits, x) + out.aux_loss
    loss.backward()
    assert m.model.layers[3].eh_proj.weight.grad is not None
    m.eval()
    out = m(x)
    assert out.mtp_logits is None and out.aux_loss is None and out.expert_load[2].sum() == 0


def test_num_parameters():
    m = build()
    assert m.num_parameters() == sum(p.numel() for p in m.parameters())
    assert m.num_parameters(include_mtp=False) < m.num_parameters()
    assert m.num_parameters(exclude_embeddings=True) == m.num_parameters() - 2 * 97 * 64


@pytest.mark.parametrize("impl", ["naive", "absorb"])
def test_padded_batch_matches_single_rows(impl):
    m = build(attn_impl=impl)
    rows = [torch.randint(0, 97, (n,)) for n in (7, 4, 1)]
    T = 7
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = r
        mask[i, T - len(r):] = 1
    with torch.no_grad():
        batched = m(ids, attention_mask=mask, return_mtp=True)
        for i, r in enumerate(rows):
            single = m(r[None], return_mtp=True)
            torch.testing.assert_close(batched.logits[i, T - len(r):], single.logits[0], atol=1e-5, rtol=0)
            if len(r) > 1:
                torch.testing.assert_close(batched.mtp_logits[0][i, T - len(r):], single.mtp_logits[0][0],
                                           atol=1e-5, rtol=0)
    # the load counts only real tokens
    assert batched.expert_load[0].sum() == 12 * 2


@pytest.mark.parametrize("impl", ["naive", "absorb", "auto"])
def test_cache_matches_full_forward(impl):
    m = build(attn_impl=impl)
    ids = torch.randint(0, 97, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding in row 1
    with torch.no_grad():
        full = m(ids, attention_mask=mask).logits
        out = m(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        parts = [out.logits]
        cache = out.past_key_values
        for t in range(6, 10):  # one token at a time, mask given for the new token only
            out = m(ids[:, t:t + 1], attention_mask=mask[:, t:t + 1], past_key_values=cache, use_cache=True)
            parts.append(out.logits)
    inc = torch.cat(parts, dim=1)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=1e-5, rtol=0)


def test_chunked_prefill_with_full_mask():
    m = build()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        full = m(ids).logits
        a = m(ids[:, :4], use_cache=True)
        b = m(ids[:, 4:], attention_mask=torch.ones(2, 9), past_key_values=a.past_key_values)
    torch.testing.assert_close(torch.cat([a.logits, b.logits], 1), full, atol=1e-5, rtol=0)
    assert a.past_key_values.length == 9


def test_absorbed_equals_naive_attention():
    m = build()
    ids = torch.randint(0, 97, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :5] = 0
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.attn_impl = "naive"
        a = m(ids, attention_mask=mask).logits
        for layer in m.model.layers:
            layer.self_attn.attn_impl = "absorb"
        b = m(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0)


def test_cache_stores_only_latent_and_rope_key():
    m = build()
    cache = m(torch.randint(0, 97, (2, 5)), use_cache=True).past_key_values
    c = m.config
    assert cache.bytes_per_token() == c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    assert len(cache.latent) == c.num_hidden_layers and cache.latent[0].shape[-1] == c.kv_lora_rank


def test_sorted_dispatch_equals_reference():
    torch.manual_seed(0)
    moe = MoE(tiny())
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(50, 64)
    _, idx, w = moe.gate(x)
    torch.testing.assert_close(moe.routed(x, idx, w), moe.routed_reference(x, idx, w), atol=1e-6, rtol=0)


def test_q_lora_none_and_tied_embeddings():
    m = build(q_lora_rank=None, tie_word_embeddings=True, first_k_dense_replace=0, n_shared_experts=2)
    assert hasattr(m.model.layers[0].self_attn, "q_proj")
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert m(torch.randint(0, 97, (1, 4))).logits.shape == (1, 4, 97)
