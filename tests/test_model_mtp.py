"""The MTP input order is pinned (issue 19 item 20): one MTP module's logits computed by hand from
its weights, in the order the released DeepSeek-V3 weights were trained with, equal the model's.

The order is that of vLLM's DeepSeek MTP layer (``vllm/model_executor/models/deepseek_mtp.py``,
``DeepSeekMultiTokenPredictorLayer.forward``) and SGLang's, which serve the released checkpoint:

    inputs_embeds = enorm(inputs_embeds); previous_hidden_states = hnorm(previous_hidden_states)
    hidden_states = eh_proj(cat([inputs_embeds, previous_hidden_states], dim=-1))

so the first ``hidden_size`` columns of ``eh_proj.weight`` read the normed embedding of the token
k ahead, the last ``hidden_size`` columns the normed hidden state of the previous depth (V3 §2.2,
eq. 21 prints the two the other way round; ``nanoseek.model.mtp`` explains the deviation).
"""

import torch

from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
from nanoseek.model.block import DecoderLayer

V, D = 61, 32


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm by hand: ``weight * x / sqrt(mean(x²) + eps)``."""
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def model(depth: int = 2) -> DeepseekV3ForCausalLM:
    cfg = ModelConfig.tiny(vocab_size=V, hidden_size=D, intermediate_size=48, moe_intermediate_size=16,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16,
                           q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                           num_nextn_predict_layers=depth, initializer_range=0.2)
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():  # distinct, non-trivial norms: a swapped order cannot give the same numbers
        for mtp in m.mtp_layers:
            mtp.enorm.weight.uniform_(0.2, 0.8)
            mtp.hnorm.weight.uniform_(1.5, 2.5)
            mtp.shared_head.norm.weight.uniform_(0.5, 1.5)
    return m


def test_mtp_logits_by_hand_in_the_release_order():
    m = model(depth=2)
    c = m.config
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    T = ids.shape[1]
    with torch.no_grad():
        out = m(ids, return_mtp=True)
        h_prev = out.hidden_states  # h^0: the main model's final normed hidden states (as vLLM feeds them)
        for k, mtp in enumerate(m.mtp_layers, start=1):
            n = T - k
            emb = m.model.embed_tokens.weight[ids[:, k:]]  # Emb(t_{i+k}), i < T - k
            w = mtp.eh_proj.weight  # [D, 2D] = [reads the embedding | reads the hidden state]
            x = (rms(emb, mtp.enorm.weight, c.rms_norm_eps) @ w[:, :D].T
                 + rms(h_prev[:, :n], mtp.hnorm.weight, c.rms_norm_eps) @ w[:, D:].T)
            rope = m.model.rotary_emb(torch.arange(n).expand(2, n))
            h_prev, _, _ = DecoderLayer.forward(mtp, x, rope, None)  # TRM_k: the module's own block
            logits = rms(h_prev, mtp.shared_head.norm.weight, c.rms_norm_eps) @ m.lm_head.weight.T
            assert out.mtp_logits[k - 1].shape == (2, n, V)
            torch.testing.assert_close(out.mtp_logits[k - 1], logits, atol=1e-5, rtol=1e-5)
