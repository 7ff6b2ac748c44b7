"""The forward pass of a Llama-family ``transformers`` model written over its own modules, for
shared-prompt scoring (GRPO) and static-cache decoding (``nanoseek.policy.generate_static``).

Why: GRPO scores ``G`` completions of the same prompt, so a plain forward over ``[prompt;
completion]`` rows computes every prompt ``G`` times (forward, backward and the reference model).
Here each distinct prompt is run once and its keys/values are shared by its ``G`` completions:

    prompts  (U, P)  left-padded  -> per layer K_p, V_p          (U, Hkv, P, d)
    completions (B, C) right-padded, row b of prompt g[b]:
        K = [K_p[g[b]] ; K_c[b]],  V likewise                    (B, Hkv, P + C, d)
        query t of row b attends to real prompt keys and completion keys <= t

Gradients flow through the shared prompt states (``index_select`` backward sums the ``G`` rows),
so loss and gradients equal the plain per-row forward's (tested to 1e-5 in
``tests/test_trainer_fast.py``); with ``P`` prompt and ``C`` completion tokens the work falls from
``B (P + C)`` to ``U P + B C`` token-passes.

Per layer (the HF Llama / Qwen2 / Qwen3 / Mistral decoder layer, sliding windows excluded)::

    x = input_layernorm(h); q, k, v = q_proj(x), k_proj(x), v_proj(x)   (B, T, H|Hkv, d)
    [q_norm / k_norm per head (Qwen3)]; RoPE with the model's rotary_emb at positions
    h = h + o_proj(sdpa(q, [K_past; k], [V_past; v], mask))
    h = h + mlp(post_attention_layernorm(h))

Positions follow nanoseek's left-padding convention (``cumsum(mask) - 1``), the one
``TransformersLM.forward`` uses. Modules are called as they are, so peft LoRA layers (and
``disable_adapter()``) act exactly as in the HF forward. Only torch is imported.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def base_lm(model):
    """The plain ``*ForCausalLM`` behind a ``TransformersLM`` and/or a peft wrapper."""
    hf = getattr(model, "hf", model)
    for _ in range(3):  # PeftModel -> LoraModel -> *ForCausalLM
        get = getattr(hf, "get_base_model", None)
        if not callable(get):
            break
        hf = get()
    return hf


def supports(model) -> bool:
    """True when ``model`` (``TransformersLM``, peft model or ``transformers`` LM) can use these paths."""
    hf = base_lm(model)
    cfg = getattr(hf, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return False
    if getattr(cfg, "use_sliding_window", False) or (cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None)):
        return False
    if getattr(getattr(hf, "model", None), "layers", None) is None:
        return False
    inner = hf.model
    return all(hasattr(inner, a) for a in ("embed_tokens", "norm", "rotary_emb")) and hasattr(hf, "lm_head")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


KVFn = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class FastLM:
    """Runs the decoder layers of a supported model (see :func:`supports`).

    ``heads`` H, ``kv_heads`` Hkv and ``head_dim`` d come from the config.
    """

    def __init__(self, model):
        self.hf = base_lm(model)
        self.inner = self.hf.model
        cfg = self.hf.config
        self.H = cfg.num_attention_heads
        self.Hkv = getattr(cfg, "num_key_value_heads", None) or self.H
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.n_layers = len(self.inner.layers)

    def layers(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, kv: KVFn) -> torch.Tensor:
        """Embed ``ids [B, T]`` and run every layer; return the final-normed hidden ``[B, T, D]``.

        ``positions [B, T]``: RoPE positions. ``mask [B, 1, T, S]`` bool: keys each query may see.
        ``kv(layer, k, v)`` receives the new keys/values ``(B, Hkv, T, d)`` (after RoPE) and returns
        the full ``(B, Hkv, S, d)`` keys/values to attend over (the past joined to the new ones).
        """
        B, T = ids.shape
        h = self.inner.embed_tokens(ids)                                   # (B, T, D)
        cos, sin = self.inner.rotary_emb(h, positions)                     # (B, T, d)
        cos, sin = cos[:, None], sin[:, None]                              # (B, 1, T, d)
        gqa = self.H != self.Hkv
        for i, layer in enumerate(self.inner.layers):
            att = layer.self_attn
            x = layer.input_layernorm(h)
            q = att.q_proj(x).view(B, T, self.H, self.d)
            k = att.k_proj(x).view(B, T, self.Hkv, self.d)
            v = att.v_proj(x).view(B, T, self.Hkv, self.d).transpose(1, 2)
            if hasattr(att, "q_norm"):  # Qwen3: RMSNorm over each head before RoPE
                q, k = att.q_norm(q), att.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)                    # (B, H|Hkv, T, d)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            K, V = kv(i, k, v)
            o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=att.scaling, enable_gqa=gqa)
            h = h + att.o_proj(o.transpose(1, 2).reshape(B, T, self.H * self.d))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.inner.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``lm_head`` as float32: ``[..., D] -> [..., V]``."""
        return self.hf.lm_head(hidden).float()

    # -- shared-prompt scoring ----------------------------------------------------------------
    def prompt_states(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """Run the ``U`` distinct prompts once.

        Args: ``prompt_ids``/``prompt_mask`` ``[U, P]`` left-padded (mask 1 on real tokens).
        Returns ``(kv, last_hidden)``: per layer ``(K, V)`` ``(U, Hkv, P, d)`` and the final hidden
        state of each prompt's last token ``[U, D]`` (it predicts the first completion token).
        """
        U, P = prompt_ids.shape
        real = prompt_mask.bool()
        pos = (real.long().cumsum(1) - 1).clamp_min(0)
        causal = torch.ones(P, P, dtype=torch.bool, device=real.device).tril()
        # a pad query attends to itself so its softmax stays finite (its output is never used)
        mask = (real[:, None, None, :] & causal) | torch.eye(P, dtype=torch.bool, device=real.device)
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []

        def keep(i, k, v):
            kv.append((k, v))
            return k, v

        h = self.layers(prompt_ids, pos, mask, keep)
        return kv, h[:, -1]

    def completion_hidden(self, kv, last_hidden, prompt_mask: torch.Tensor, group: torch.Tensor,
                          completion_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states predicting each completion token, with the prompts' states shared.

        Args:
            kv, last_hidden: from :meth:`prompt_states` (``U`` prompts).
            prompt_mask: ``[U, P]``. group: ``[B]`` long, the prompt of each completion.
            completion_ids: ``[B, C]`` right-padded (pad values are fed but never predicted from).
        Returns ``[B, C, D]``: row ``t`` predicts ``completion_ids[:, t]`` (the prompt's last state
        for ``t = 0``, then the completion's own states).
        """
        B, C = completion_ids.shape
        real = prompt_mask.bool()
        P = real.shape[1]
        n_prompt = real.sum(1)[group]                                      # (B,)
        pos = n_prompt[:, None] + torch.arange(C, device=real.device)[None, :]
        causal = torch.ones(C, C, dtype=torch.bool, device=real.device).tril()
        mask = torch.cat([real[group][:, None, None, :].expand(B, 1, C, P), causal.expand(B, 1, C, C)], dim=-1)

        def join(i, k, v):
            kp, vp = kv[i]
            return torch.cat([kp.index_select(0, group), k], dim=2), torch.cat([vp.index_select(0, group), v], dim=2)

        h = self.layers(completion_ids[:, :-1], pos[:, :-1], mask[:, :, :-1, :-1], join) if C > 1 else None
        first = last_hidden.index_select(0, group)[:, None]                # (B, 1, D)
        return first if h is None else torch.cat([first, h], dim=1)

    def completion_logits(self, prompt_ids, prompt_mask, group, completion_ids) -> torch.Tensor:
        """``[B, C, V]`` float32 logits predicting each completion token (see :meth:`completion_hidden`)."""
        kv, last = self.prompt_states(prompt_ids, prompt_mask)
        return self.logits(self.completion_hidden(kv, last, prompt_mask, group, completion_ids))
