"""Tiny policies and a toy task shared by the trainer, resume, DDP and LoRA tests (no tests here).

* ``qwen_policy()``: a 2-layer hidden-32 ``transformers`` Qwen2 (the fast paths apply);
* ``native_policy()``: a 2-layer hidden-32 nanoseek DeepSeek-V3 (MLA + MoE);
* ``ToyTask``: prompts ``"pick <n>"``; reward ``even`` = share of even token ids in the completion,
  a signal every random policy has (about 0.5) and GRPO can raise quickly.
"""

from __future__ import annotations

import torch

from nanoseek.policy.policy import Policy
from nanoseek.tasks.base import Example, Task
from nanoseek.tokenizer import build_tokenizer

_TOK = None


def tokenizer():
    global _TOK
    if _TOK is None:
        _TOK = build_tokenizer()
    return _TOK


def qwen_model(seed: int = 0, layers: int = 2, hidden: int = 32):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from nanoseek.model.hf import TransformersLM

    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      tie_word_embeddings=True)
    return TransformersLM(Qwen2ForCausalLM(cfg)).eval()


def native_model(seed: int = 0):
    from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig

    tok = tokenizer()
    torch.manual_seed(seed)
    c = ModelConfig.tiny(vocab_size=len(tok), hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4,
                         num_experts_per_tok=2, n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=24,
                         qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, first_k_dense_replace=1,
                         num_nextn_predict_layers=0, initializer_range=0.1, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return DeepseekV3ForCausalLM(c).eval()


def qwen_policy(seed: int = 0) -> Policy:
    return Policy(qwen_model(seed), tokenizer())


def native_policy(seed: int = 0) -> Policy:
    return Policy(native_model(seed), tokenizer())


def even_reward(completions, completion_ids=None, **_):
    """Share of even token ids (0.0 for an empty completion)."""
    return [sum(t % 2 == 0 for t in ids) / len(ids) if ids else 0.0 for ids in completion_ids]


class ToyTask(Task):
    """``n`` train prompts of different lengths; the reward is ``even_reward``."""

    name = "toy"

    def __init__(self, n: int = 32, long_every: int = 0):
        self.n, self.long_every = n, long_every

    def examples(self, split: str) -> list[Example]:
        out = []
        for i in range(self.n if split == "train" else 4):
            pad = " ok" * (i % 5) + (" long" * 60 if self.long_every and i % self.long_every == 0 else "")
            out.append(Example(id=f"{split}{i}", prompt=f"pick {i}{pad}", answer="0"))
        return out

    def reward_funcs(self):
        return {"even": even_reward}


def toy_config(**kw):
    from nanoseek.rl.config import GRPOConfig

    base = dict(steps=10, prompts_per_step=4, group_size=4, max_new_tokens=8, lr=1e-2, reward_weights={"even": 1.0},
                log_samples=1)
    base.update(kw)
    return GRPOConfig(**base)


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
