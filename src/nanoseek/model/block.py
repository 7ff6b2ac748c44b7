"""One DeepSeek-V3 decoder block: pre-norm MLA then a dense FFN or DeepSeekMoE (V3 §2, §4.2).

Its own module because two owners build on it: the main model's L blocks
(``nanoseek.model.transformer``) and the D multi-token-prediction modules, which are a block with
an input projection in front (``nanoseek.model.mtp.MTPLayer``).
"""

from __future__ import annotations

import torch
from torch import nn

from nanoseek.model.attention import MLACache, MultiHeadLatentAttention, RMSNorm
from nanoseek.model.config import ModelConfig
from nanoseek.model.moe import MLP, MoE


class DecoderLayer(nn.Module):
    """Pre-norm block: ``h + MLA(norm(h))`` then ``+ FFN(norm(.))``; FFN is MoE from
    ``first_k_dense_replace`` on (V3 §4.2).

    ``forward(h [B, T, D], rope (cos, sin) [B, T, d_rope/2] each, mask [B, 1, T, S] bool or None
    (causal), cache, token_mask [B, T] bool or None, want_aux) -> (h [B, T, D], load [E] | None,
    aux | None)``; ``load`` and ``aux`` are those of ``MoE.forward`` (None for a dense block).
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MultiHeadLatentAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = MoE(config) if self.is_moe else MLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: MLACache | None = None, token_mask: torch.Tensor | None = None, want_aux: bool = False):
        h = h + self.self_attn(self.input_layernorm(h), *rope, mask=mask, cache=cache, layer_idx=self.layer_idx)
        x = self.post_attention_layernorm(h)
        if self.is_moe:
            y, load, aux = self.mlp(x, token_mask, want_aux)
            return h + y, load, aux
        return h + self.mlp(x), None, None
