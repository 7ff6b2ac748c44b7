"""Multi-Token Prediction (DeepSeek-V3 §2.2, eqs. 21-25).

Module k (k = 1..D) keeps the full causal chain: for position i it combines the previous depth's
hidden state h^{k-1}_i with the embedding of token t_{i+k},

    h'^k_i = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)])        (eq. 21)
    h^k    = TRM_k(h'^k)                                              (eq. 22, one decoder block)
    P^k    = OutHead(shared_head.norm(h^k))                           (eq. 23, head shared with the model)

and P^k_i predicts token t_{i+k+1}. ``Emb`` and ``OutHead`` are the main model's (shared, §2.2).

Deviation from eq. 21 as printed ([RMSNorm(h); RMSNorm(Emb)]): the concatenation order is
[embedding ; hidden], the order the released checkpoint's ``eh_proj`` was trained with (vLLM's and
SGLang's DeepSeek MTP layers). h^0 is the main model's final hidden state after ``model.norm`` (as
those engines feed it).

Checkpoint names (``model.layers.{L+k-1}.``): ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm``,
the block's ``input_layernorm``/``self_attn``/``post_attention_layernorm``/``mlp``, and in the
released files also copies of the shared ``embed_tokens`` and ``shared_head.head``
(``SHARED_COPIES``); those two are written by ``DeepseekV3ForCausalLM.save_pretrained`` and ignored
on load (they are the shared tensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.model.attention import RMSNorm
from nanoseek.model.config import ModelConfig
from nanoseek.model.block import DecoderLayer

# Tensor names (after ``model.layers.{L+k-1}.``) that the release stores in every MTP module as
# copies of the main model's embedding and output head: written on save, skipped on load (V3 §2.2).
SHARED_COPIES = ("embed_tokens.weight", "shared_head.head.weight")


class SharedHead(nn.Module):
    """``shared_head``: only its norm is an own parameter; the head is the model's ``lm_head``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPLayer(DecoderLayer):
    """One MTP module: ``forward(h_prev [B,n,D], emb_next [B,n,D], rope, mask, token_mask, want_aux)
    -> (h^k [B,n,D], load | None, aux | None)``; the caller applies ``shared_head.norm`` + ``lm_head``."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.enorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hnorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.shared_head = SharedHead(config)

    def forward(self, h_prev: torch.Tensor, emb_next: torch.Tensor, rope, mask, token_mask=None,
                want_aux: bool = False):
        x = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))
        return super().forward(x, rope, mask, None, token_mask, want_aux)


def mtp_loss(mtp_logits: list[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             weight: float = 0.3, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_MTP = λ/D Σ_k L^k_MTP with L^k the mean cross-entropy of depth k (V3 eqs. 24-25).

    ``mtp_logits[k-1]`` is [B, T-k, V] (row i predicts ``input_ids[:, i+k+1]``), ``input_ids [B, T]``.
    ``attention_mask`` [B, T] drops padded targets; ``loss_mask`` [B, T] (1 = train on this target
    token, e.g. completion tokens only) is applied to the target positions. ``weight`` is λ
    (``config.mtp_loss_weight``; 0.3 then 0.1 in V3 §4.2). Depths with no target are skipped.
    """
    losses = []
    T = input_ids.shape[1]
    for k, logits in enumerate(mtp_logits, start=1):
        n = T - k - 1  # positions i = 0..T-k-2 have a target t_{i+k+1}
        if n <= 0:
            continue
        target = input_ids[:, k + 1:]
        valid = torch.ones_like(target, dtype=torch.bool)
        if attention_mask is not None:
            valid = valid & attention_mask[:, k + 1:].bool() & attention_mask[:, :n].bool()
        if loss_mask is not None:
            valid = valid & loss_mask[:, k + 1:].bool()
        ce = F.cross_entropy(logits[:, :n].reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none")
        losses.append((ce * valid.reshape(-1)).sum() / valid.sum().clamp_min(1))
    if not losses:
        return torch.zeros((), device=input_ids.device)
    return weight * torch.stack(losses).mean()
