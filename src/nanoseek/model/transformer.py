"""The DeepSeek-V3 causal LM: embeddings, L decoder blocks (MLA + dense FFN / DeepSeekMoE), final
norm, output head, and D multi-token-prediction modules (V3 §2).

Module and parameter names are exactly those of the released Hugging Face checkpoints
(``model.embed_tokens``, ``model.layers.{i}.self_attn.*``, ``model.layers.{i}.mlp.*``, ``model.norm``,
``lm_head``); the MTP modules live at ``model.layers.{L + k - 1}`` as in the release (V3 README_WEIGHTS),
so ``state_dict()`` loads and saves checkpoints without renaming.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nanoseek.model.attention import MLACache, RMSNorm, RotaryEmbedding
from nanoseek.model.block import DecoderLayer
from nanoseek.model.config import ModelConfig
from nanoseek.model.moe import MoE, RoutedExperts
from nanoseek.model.mtp import SHARED_COPIES, MTPLayer


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


class DeepseekV3Model(nn.Module):
    """``embed_tokens``, ``layers`` (L main blocks followed by D MTP modules) and ``norm``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
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
    use_cache, return_mtp, logits_to_keep) -> CausalLMOutput`` is the plain reference path, used
    for everything (training, prefill, MTP, one-token steps alike). The fast one-token decode step
    is a separate engine that generation and the server ask for explicitly
    (``nanoseek.model.decode.decode_step``); it keeps its weight snapshot in ``decode_snapshot``.
    ``save_pretrained(directory)`` writes a Hugging Face folder, as transformers models do.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # read by nanoseek.model.decode: whether decode_step may use the fast path (False: it runs
        # forward), and the FastDecoder weight snapshot it keeps for this model (None: none yet)
        self.use_fast_decode = True
        self.decode_snapshot = None
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

    def reset_fast_decoder(self) -> None:
        """Drop the decode snapshot, e.g. after changing weights through ``.data`` (which leaves no
        trace the snapshot could check); the next fast decode step takes a new one."""
        self.decode_snapshot = None

    def __getstate__(self):  # copies and pickles do not carry the decode snapshot
        state = self.__dict__.copy()
        state["decode_snapshot"] = None
        return state

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed), with
        the released checkpoint's tensor names, as transformers' ``save_pretrained`` does: the
        folder loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and
        ``nanoseek.load_model``.

        A tied ``lm_head`` is not written; each MTP module also gets copies of the shared
        ``embed_tokens`` and ``shared_head.head`` (``mtp.SHARED_COPIES``), as in the released V3
        checkpoint. Tokenizer files are not written here (``nanoseek.save_model`` does both).
        """
        from safetensors.torch import save_file  # only saving needs safetensors; the core is torch only

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        c = self.config
        # clone: state_dict entries of the stacked experts are views, safetensors wants separate storage
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        if c.tie_word_embeddings:
            state.pop("lm_head.weight")
        embed, head = SHARED_COPIES
        for k in range(c.num_nextn_predict_layers):
            pre = f"model.layers.{c.num_hidden_layers + k}."
            state[pre + embed] = self.model.embed_tokens.weight.detach().cpu().clone()
            state[pre + head] = self.lm_head.weight.detach().cpu().clone()
        c.save(directory)
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})

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
    def token_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None, cache: MLACache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The new tokens' padding mask and RoPE positions, as ``forward`` and the fast decode step read them.

        ``input_ids [B, T]``; ``attention_mask`` None (all real), ``[B, T]`` or ``[B, past+T]`` over
        the cached and new positions; ``position_ids`` None (default: each row's count of real
        tokens so far, ``cumsum(mask) − 1`` continuing ``cache.n_real``) or ``[B, T]``. Returns
        ``(new_mask [B, T] bool, position_ids [B, T])``; ``ValueError`` when the mask has another
        number of columns.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            new_mask = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
        elif attention_mask.shape[1] == past + T:
            new_mask = attention_mask[:, past:].bool()
        elif attention_mask.shape[1] == T:
            new_mask = attention_mask.bool()
        else:
            raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns; expected {T} or {past + T}")
        if position_ids is None:
            start = cache.n_real[:, None] if cache is not None else 0
            position_ids = (start + new_mask.long().cumsum(1) - 1).clamp_min(0)
        return new_mask, position_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: MLACache | None = None,
                use_cache: bool = False, return_mtp: bool = False, logits_to_keep: int = 0) -> CausalLMOutput:
        B, T = input_ids.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = self.new_cache(B, T)
        new_mask, position_ids = self.token_inputs(input_ids, attention_mask, position_ids, cache)
        key_mask = torch.cat([cache.mask[:, :cache.length], new_mask], dim=1) if cache is not None else new_mask
        mask = _padded_causal_mask(key_mask, T)
        padded = mask is not None

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
            loads += [torch.zeros(self.config.n_routed_experts, device=input_ids.device)
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


def _padded_causal_mask(key_mask: torch.Tensor, T: int) -> torch.Tensor | None:
    """The attention mask of ``T`` new queries over ``key_mask [B, S]`` (True = real key, the new
    tokens last): None when nothing is padded (plain causal, see ``MultiHeadLatentAttention``), else
    bool ``[B, 1, T, S]``, causal and padding-masked."""
    if bool(key_mask.all()):
        return None
    S, device = key_mask.shape[1], key_mask.device
    past = S - T
    causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(past)
    # a query that sees no real key (a left-pad row) attends to itself: keeps its softmax finite
    diag = torch.arange(S, device=device)[None, :] == torch.arange(past, S, device=device)[:, None]
    return (key_mask[:, None, None, :] & causal) | diag
