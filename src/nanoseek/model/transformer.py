"""The DeepSeek-V3 causal LM: embeddings, L decoder blocks (MLA + dense FFN / DeepSeekMoE), final
norm, output head, and D multi-token-prediction modules (V3 §2).

Module and parameter names are exactly those of the released Hugging Face checkpoints
(``model.embed_tokens``, ``model.layers.{i}.self_attn.*``, ``model.layers.{i}.mlp.*``, ``model.norm``,
``lm_head``); the MTP modules live at ``model.layers.{L + k - 1}`` as in the release (V3 README_WEIGHTS),
so ``state_dict()`` loads and saves checkpoints without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nanoseek.model.attention import MLACache, MultiHeadLatentAttention, RMSNorm, RotaryEmbedding
from nanoseek.model.config import ModelConfig
from nanoseek.model.moe import MLP, MoE, RoutedExperts


@dataclass
class CausalLMOutput:
    """What ``DeepseekV3ForCausalLM.forward`` returns.

    logits: [B, T, V] float32 (only the last ``logits_to_keep`` positions when that is > 0).
    past_key_values: the ``MLACache`` (when ``use_cache`` or one was passed), else None.
    mtp_logits: with ``return_mtp``, one [B, T-k, V] float32 tensor per MTP depth k = 1..D; row i
        predicts token i+k+1 (V3 §2.2). None otherwise.
    aux_loss: α · Σ_layers mean_seq Σ_i f_i P_i (V3 eq. 17) when training with ``aux_loss_alpha > 0``.
    expert_load: [n_moe_layers, n_routed_experts] float32 counts of real tokens routed to each expert
        in this forward (main MoE layers first, then the MTP blocks' — zero rows when MTP did not run).
    hidden_states: [B, T, D] final (normed) hidden states of the main model.
    """

    logits: torch.Tensor
    past_key_values: MLACache | None = None
    mtp_logits: list[torch.Tensor] | None = None
    aux_loss: torch.Tensor | None = None
    expert_load: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None


class DecoderLayer(nn.Module):
    """Pre-norm block: ``h + MLA(norm(h))`` then ``+ FFN(norm(.))``; FFN is MoE from
    ``first_k_dense_replace`` on (V3 §4.2). ``forward -> (h, load | None, aux | None)``."""

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


class DeepseekV3Model(nn.Module):
    """``embed_tokens``, ``layers`` (L main blocks followed by D MTP modules) and ``norm``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from nanoseek.model.mtp import MTPLayer  # mtp.py builds on DecoderLayer (defined here)

        L = config.num_hidden_layers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config, i) for i in range(L)])
        self.layers.extend(MTPLayer(config, L + k) for k in range(config.num_nextn_predict_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)


class DeepseekV3ForCausalLM(nn.Module):
    """DeepSeek-V3 language model (MLA + DeepSeekMoE + MTP), HF checkpoint compatible.

    ``forward(input_ids [B, T], attention_mask [B, T] or [B, past+T] (1 = real, left padding),
    position_ids [B, T] (default: cumsum(mask) − 1 continuing the cache), past_key_values,
    use_cache, return_mtp, logits_to_keep) -> CausalLMOutput``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.use_fast_decode = True  # one-token steps without gradient use model/decode.py
        self.model = DeepseekV3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    # ------------------------------------------------------------------------------- helpers
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, initializer_range) for every matrix and the embedding (V3 §4.2 used std 0.006), ones
        for norms, zeros for biases and the balancing bias b."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, RoutedExperts):
                nn.init.normal_(m.w_gate_up, 0.0, std)
                nn.init.normal_(m.w_down, 0.0, std)
            elif isinstance(m, MoE):
                nn.init.normal_(m.gate.weight, 0.0, std)
                m.gate.e_score_correction_bias.zero_()

    @property
    def main_layers(self) -> list[DecoderLayer]:
        return list(self.model.layers[: self.config.num_hidden_layers])

    @property
    def mtp_layers(self) -> list[nn.Module]:
        return list(self.model.layers[self.config.num_hidden_layers:])

    def moe_layers(self) -> list[MoE]:
        """All MoE FFNs, main layers first then MTP blocks (the rows of ``expert_load``)."""
        return [layer.mlp for layer in self.model.layers if layer.is_moe]

    def num_parameters(self, exclude_embeddings: bool = False, include_mtp: bool = True) -> int:
        """Number of (unique) parameters; optionally without embedding/head or MTP modules."""
        skip: set[int] = set()
        if exclude_embeddings:
            skip |= {id(self.model.embed_tokens.weight), id(self.lm_head.weight)}
        if not include_mtp:
            skip |= {id(p) for m in self.mtp_layers for p in m.parameters()}
        seen: dict[int, int] = {}
        for p in self.parameters():
            if id(p) not in skip:
                seen[id(p)] = p.numel()
        return sum(seen.values())

    def new_cache(self, batch: int, capacity: int) -> MLACache:
        """An empty latent KV cache for ``batch`` rows and ``capacity`` positions."""
        w = self.model.embed_tokens.weight
        return MLACache.for_config(self.config, batch, capacity, dtype=w.dtype, device=w.device)

    def fast_decoder(self):
        """The ``FastDecoder`` (``nanoseek.model.decode``) for one-token decode steps, rebuilt when
        ``FastDecoder.is_current`` says the model changed since it was made (a parameter, a
        submodule, an optimizer step); None when ``use_fast_decode`` is False or
        ``FastDecoder.supports`` rules it out (adapters, hooks, ``attn_impl="naive"``)."""
        from nanoseek.model.decode import FastDecoder

        dec = getattr(self, "_fast_decoder", None)
        if not self.use_fast_decode:
            self._fast_decoder = None
            return None
        if dec is not None and dec.is_current(self):
            return dec
        self._fast_decoder = None  # free the old snapshot before building a new one
        if not FastDecoder.supports(self):
            return None
        dec = self._fast_decoder = FastDecoder(self)
        return dec

    def reset_fast_decoder(self) -> None:
        """Drop the decode snapshot, e.g. after changing weights through ``.data`` (which leaves no
        trace the snapshot could check); the next decode step takes a new one."""
        self._fast_decoder = None

    def __getstate__(self):  # copies and pickles do not carry the decode snapshot
        state = self.__dict__.copy()
        state.pop("_fast_decoder", None)
        return state

    @torch.no_grad()
    def update_expert_bias(self, expert_load: torch.Tensor) -> None:
        """Aux-loss-free balancing (V3 §2.1.2): per MoE layer b += γ·sign(mean(load) − load).

        Call once per optimizer step with the step's summed ``expert_load`` [n_moe_layers, E]
        (``CausalLMOutput.expert_load``). No-op when ``bias_update_speed`` γ = 0; rows with no
        tokens (e.g. MTP blocks not run) are skipped.
        """
        gamma = self.config.bias_update_speed
        if gamma == 0:
            return
        layers = self.moe_layers()
        if expert_load.shape[0] != len(layers):
            raise ValueError(f"expert_load has {expert_load.shape[0]} rows, the model has {len(layers)} MoE layers")
        for moe, load in zip(layers, expert_load):
            moe.update_bias(load, gamma)

    # ------------------------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: MLACache | None = None,
                use_cache: bool = False, return_mtp: bool = False, logits_to_keep: int = 0) -> CausalLMOutput:
        B, T = input_ids.shape
        device = input_ids.device
        cache = past_key_values
        if cache is None and use_cache:
            cache = self.new_cache(B, T)
        past = cache.length if cache is not None else 0

        # key padding mask over all S = past + T positions; new_mask for the T new tokens
        if attention_mask is None:
            new_mask = torch.ones(B, T, dtype=torch.bool, device=device)
        elif attention_mask.shape[1] == past + T:
            new_mask = attention_mask[:, past:].bool()
        elif attention_mask.shape[1] == T:
            new_mask = attention_mask.bool()
        else:
            raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns; expected {T} or {past + T}")
        if position_ids is None:
            start = cache.n_real[:, None] if cache is not None else 0
            position_ids = (start + new_mask.long().cumsum(1) - 1).clamp_min(0)
        if T == 1 and cache is not None and not return_mtp and not torch.is_grad_enabled():
            decoder = self.fast_decoder()
            if decoder is not None:  # the decode step of generation and serving (model/decode.py)
                h, expert_load = decoder.forward(input_ids, new_mask, position_ids, cache)
                return CausalLMOutput(decoder.logits(h), cache, None, None, expert_load, h)
        if cache is not None:
            key_mask = torch.cat([cache.mask[:, :past], new_mask], dim=1)
        else:
            key_mask = new_mask

        padded = not bool(key_mask.all())
        mask = None  # None = plain causal (see MultiHeadLatentAttention)
        if padded:
            S = past + T
            causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(past)
            mask = key_mask[:, None, None, :] & causal  # [B, 1, T, S]
            # a query that sees no real key (a left-pad row) attends to itself: keeps softmax finite
            diag = torch.arange(S, device=device)[None, :] == torch.arange(past, S, device=device)[:, None]
            mask = mask | diag

        if cache is not None:
            cache.reserve(T)
        want_aux = self.training and self.config.aux_loss_alpha > 0
        rope = self.model.rotary_emb(position_ids)
        h = self.model.embed_tokens(input_ids)
        token_mask = new_mask if padded else None
        loads, auxes = [], []
        for layer in self.main_layers:
            h, load, aux = layer(h, rope, mask, cache, token_mask, want_aux)
            if load is not None:
                loads.append(load)
            if aux is not None:
                auxes.append(aux)
        if cache is not None:
            cache.advance(new_mask)
        h = self.model.norm(h)

        mtp_logits = None
        if return_mtp and self.config.num_nextn_predict_layers > 0:
            mtp_logits, mtp_loads, mtp_aux = self._mtp_forward(h, input_ids, position_ids, new_mask, padded, want_aux)
            loads += mtp_loads
            auxes += mtp_aux
        else:
            loads += [torch.zeros(self.config.n_routed_experts, device=device)
                      for m in self.mtp_layers if m.is_moe]

        hk = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        logits = self.lm_head(hk).float()
        expert_load = torch.stack(loads) if loads else None
        aux_loss = self.config.aux_loss_alpha * torch.stack(auxes).sum() if auxes else None
        return CausalLMOutput(logits, cache, mtp_logits, aux_loss, expert_load, h)

    def _mtp_forward(self, h, input_ids, position_ids, new_mask, padded, want_aux):
        """Run the D MTP modules (V3 §2.2); see ``nanoseek.model.mtp``."""
        logits, loads, auxes = [], [], []
        T = input_ids.shape[1]
        for k, mtp in enumerate(self.mtp_layers, start=1):
            n = T - k
            if n <= 0:
                if mtp.is_moe:
                    loads.append(torch.zeros(self.config.n_routed_experts, device=h.device))
                continue
            emb = self.model.embed_tokens(input_ids[:, k:])  # Emb(t_{i+k}) for i < T-k
            tok_mask = new_mask[:, :n] & new_mask[:, k:]
            mask = None
            if padded:
                causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
                mask = (tok_mask[:, None, None, :] & causal) | torch.eye(n, dtype=torch.bool, device=h.device)
            rope = self.model.rotary_emb(position_ids[:, :n])
            h, load, aux = mtp(h[:, :n], emb, rope, mask, tok_mask if padded else None, want_aux)
            logits.append(self.lm_head(mtp.shared_head.norm(h)).float())
            if load is not None:
                loads.append(load)
            if aux is not None:
                auxes.append(aux)
        return logits, loads, auxes
