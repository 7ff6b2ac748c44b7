"""Multi-head Latent Attention (MLA) with decoupled RoPE, YaRN, and the latent KV cache.

Follows DeepSeek-V3 §2.1.1 (eqs. 1-11) and the released checkpoint layout (Hugging Face names):

    c^Q   = q_a_layernorm(q_a_proj(h))                   [B, T, q_lora_rank]      (or no compression)
    q     = q_b_proj(c^Q) -> [q^C ; q^R]                 [B, T, H, d_nope + d_rope]
    [c^KV ; k^R] = kv_a_proj_with_mqa(h)                 [B, T, kv_lora_rank + d_rope]
    c^KV  = kv_a_layernorm(c^KV);  k^R = RoPE(k^R)       k^R is ONE key shared by all heads
    [k^C ; v] = kv_b_proj(c^KV)                          [B, S, H, d_nope + d_v]
    o     = o_proj(softmax([q^C;q^R]·[k^C;k^R] * scale) v)

Only ``c^KV`` and the rotated ``k^R`` are cached (kv_lora_rank + qk_rope_head_dim numbers per token
and layer). Two ways to attend over that cache, tested to agree (STYLE lesson 6):

* ``naive``: expand the cached latent with ``kv_b_proj`` into per-head K and V, then SDPA.
* ``absorb``: fold ``W^{UK}`` into the query and ``W^{UV}`` into the output (V3 inference code), so
  scores are ``(q^C W^{UK}) · c^KV + q^R · k^R`` and nothing per-head is ever materialised for the keys.

RoPE numerics match ``transformers``' DeepseekV3 (interleaved pairs when ``rope_interleave``; the
rotated output is written de-interleaved, which leaves q·k unchanged). YaRN (V3 §4.3) follows
``transformers``' ``_compute_yarn_parameters`` plus the V3 softmax-scale correction ``mscale²``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.model.config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in float32: ``weight * x / sqrt(mean(x²) + eps)`` (as transformers' V3)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


# ------------------------------------------------------------------------------------------ RoPE
def _yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature sqrt(1/t) = 0.1·mscale·ln(s) + 1 (V3 §4.3: sqrt(t) = 0.1 ln s + 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_parameters(config: ModelConfig) -> tuple[torch.Tensor, float, float]:
    """Inverse frequencies of the decoupled RoPE and its two YaRN scale factors.

    Returns ``(inv_freq [d_rope/2] float32, cos_sin_factor, softmax_mscale)``: ``cos_sin_factor``
    multiplies cos/sin (transformers' ``attention_factor``), ``softmax_mscale`` multiplies the
    softmax scale (``mscale(factor, mscale_all_dim)²``, V3 inference code / transformers).
    Without ``rope_scaling`` both are 1.
    """
    dim, base = config.qk_rope_head_dim, float(config.rope_theta)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    rs = config.rope_scaling or {}
    if rs.get("rope_type", rs.get("type", "default")) != "yarn":
        return 1.0 / pos_freqs, 1.0, 1.0
    orig = rs.get("original_max_position_embeddings") or config.max_position_embeddings
    factor = rs.get("factor") or config.max_position_embeddings / orig
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    attention_factor = rs.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = _yarn_get_mscale(factor, mscale) / _yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_get_mscale(factor)
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dim whose wavelength makes `rotations` turns
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (high-frequency dims keep their frequency), 0: interpolate (/factor)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    softmax_mscale = _yarn_get_mscale(factor, mscale_all_dim) ** 2 if mscale_all_dim else 1.0
    return inv_freq, float(attention_factor), float(softmax_mscale)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions: ``forward(position_ids [B,T]) -> (cos, sin)`` each [B, T, d_rope/2]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inv_freq, self.cos_sin_factor, self.softmax_mscale = rope_parameters(config)
        self._inv_freq = inv_freq  # plain attribute: stays float32 whatever dtype the model is cast to

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self._inv_freq.to(position_ids.device)
        freqs = position_ids.float()[..., None] * inv  # [B, T, d_rope/2]
        return freqs.cos() * self.cos_sin_factor, freqs.sin() * self.cos_sin_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate ``x [B, T, H, d_rope]`` by ``cos, sin [B, T, d_rope/2]``.

    ``interleave=True`` pairs dims (0,1), (2,3), ... (DeepSeek's layout); False pairs i with i+d/2.
    The result is written as [rotated firsts ; rotated seconds] in both cases (transformers does the
    same), which is a fixed permutation applied to q and k alike, so q·k is unchanged.
    """
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, :, None, :].to(x.dtype), sin[:, :, None, :].to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


# ------------------------------------------------------------------------------------ KV cache
class MLACache:
    """The MLA decode cache: per layer only ``c^KV [B, S, kv_lora_rank]`` and ``k^R [B, S, d_rope]``.

    Both live in one buffer per layer, ``kv[layer] [B, capacity, kv_lora_rank + d_rope]`` (c^KV
    first), so that absorbed attention reads keys and values as one tensor; ``latent`` and
    ``k_rope`` are the two views. Also keeps the key padding mask ``mask [B, S]`` (True = real
    token) and ``n_real [B]`` (real tokens seen per row, the next RoPE position). Buffers are
    preallocated to ``capacity`` and grow by doubling. ``select(rows)`` keeps a subset of rows
    (generation drops finished rows); ``trim_left`` and ``merge`` serve continuous batching.
    Bytes per token: ``num_layers * (kv_lora_rank + d_rope) * itemsize`` (V3: 576 values per layer).
    """

    def __init__(self, num_layers: int, batch: int, kv_lora_rank: int, rope_dim: int, capacity: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        capacity = max(1, capacity)
        self.kv_lora_rank = kv_lora_rank
        self.kv = [torch.zeros(batch, capacity, kv_lora_rank + rope_dim, dtype=dtype, device=device)
                   for _ in range(num_layers)]
        self.mask = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0

    @classmethod
    def for_config(cls, config: ModelConfig, batch: int, capacity: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> "MLACache":
        """A cache for the main layers of ``config``."""
        return cls(config.num_hidden_layers, batch, config.kv_lora_rank, config.qk_rope_head_dim, capacity, dtype, device)

    @property
    def latent(self) -> list[torch.Tensor]:
        """Per layer, the c^KV view ``[B, capacity, kv_lora_rank]``."""
        return [t[..., : self.kv_lora_rank] for t in self.kv]

    @property
    def k_rope(self) -> list[torch.Tensor]:
        """Per layer, the rotated shared key view ``[B, capacity, d_rope]``."""
        return [t[..., self.kv_lora_rank:] for t in self.kv]

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def get_seq_length(self) -> int:
        """Number of cached positions (transformers' Cache API name)."""
        return self.length

    def bytes_per_token(self) -> int:
        """Cache bytes per token (all layers)."""
        return sum(t.shape[-1] * t.element_size() for t in self.kv)

    def reserve(self, new_tokens: int) -> None:
        """Make room for ``new_tokens`` more positions (doubling growth)."""
        need = self.length + new_tokens
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity)

        def grow(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros((t.shape[0], cap) + tuple(t.shape[2:]))
            out[:, : self.length] = t[:, : self.length]
            return out

        self.kv = [grow(t) for t in self.kv]
        self.mask = grow(self.mask)

    def write(self, layer: int, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``latent [B,T,c]`` / ``k_rope [B,T,d_rope]`` at positions ``length..length+T`` of
        ``layer`` and return views of everything cached for it (``[B, length+T, .]``). The position
        counter moves in ``advance`` once all layers have written."""
        end, c = self.length + latent.shape[1], self.kv_lora_rank
        buf = self.kv[layer]
        buf[:, self.length:end, :c] = latent
        buf[:, self.length:end, c:] = k_rope
        return buf[:, :end, :c], buf[:, :end, c:]

    def advance(self, new_mask: torch.Tensor) -> None:
        """Record ``new_mask [B, T]`` (True = real) for the tokens just written and move on by T."""
        end = self.length + new_mask.shape[1]
        self.mask[:, self.length:end] = new_mask
        self.n_real += new_mask.sum(1)
        self.length = end

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (LongTensor), in that order (repeats allowed)."""
        self.kv = [t.index_select(0, rows) for t in self.kv]
        self.mask = self.mask.index_select(0, rows)
        self.n_real = self.n_real.index_select(0, rows)

    def trim_left(self, k: int) -> None:
        """Drop the first ``k`` cached positions (which no row may still need, e.g. all padding)."""
        self.kv = [t[:, k:] for t in self.kv]
        self.mask = self.mask[:, k:]
        self.length -= k

    @classmethod
    def merge(cls, a: "MLACache", b: "MLACache", headroom: int = 0) -> "MLACache":
        """The rows of ``a`` then those of ``b`` in a new cache of ``max(length) + headroom``
        positions; the shorter one is left-padded with masked positions, so every row's cached
        tokens end at the same column (``length``) as left-padded prompts do."""
        S = max(a.length, b.length)
        t0 = a.kv[0]
        c, r = a.kv_lora_rank, t0.shape[-1] - a.kv_lora_rank
        new = cls(len(a.kv), a.batch_size + b.batch_size, c, r, S + headroom, t0.dtype, t0.device)
        for t_new, t_a, t_b in zip(new.kv, a.kv, b.kv):
            t_new[: a.batch_size, S - a.length:S] = t_a[:, : a.length]
            t_new[a.batch_size:, S - b.length:S] = t_b[:, : b.length]
        new.mask[: a.batch_size, S - a.length:S] = a.mask[:, : a.length]
        new.mask[a.batch_size:, S - b.length:S] = b.mask[:, : b.length]
        new.n_real = torch.cat([a.n_real, b.n_real])
        new.length = S
        return new


# ----------------------------------------------------------------------------------- attention
def _causal_mask(T: int, S: int, device) -> torch.Tensor:
    """bool [T, S]: query t (absolute position S-T+t) sees keys 0..S-T+t."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


class MultiHeadLatentAttention(nn.Module):
    """MLA (V3 §2.1.1) with HF parameter names.

    ``forward(x [B,T,D], cos, sin [B,T,d_rope/2], mask, cache, layer_idx) -> [B,T,D]`` where ``mask``
    is a bool [B, 1, T, S] (True = may attend) or None = causal, the T new tokens being the last of
    the S attended positions (no padding). ``impl`` overrides ``config.attn_impl`` for this call.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.d_nope, self.d_rope, self.d_v = (
            c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim)
        self.kv_lora_rank, self.q_lora_rank = c.kv_lora_rank, c.q_lora_rank
        self.interleave, self.attn_impl = c.rope_interleave, c.attn_impl
        qk = c.qk_head_dim
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden_size, self.n_heads * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=c.attention_bias)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank)  # eps 1e-6 as transformers (not rms_norm_eps)
            self.q_b_proj = nn.Linear(c.q_lora_rank, self.n_heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, bias=c.attention_bias)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, self.n_heads * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(self.n_heads * c.v_head_dim, c.hidden_size, bias=c.attention_bias)
        # 1/sqrt(d_h + d^R_h) (V3 §2.1.1), times the YaRN mscale² correction (V3 inference code)
        self.scale = qk ** -0.5 * rope_parameters(c)[2]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None,
                cache: MLACache | None = None, layer_idx: int = 0, impl: str | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        if self.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(B, T, self.n_heads, self.d_nope + self.d_rope)
        q_nope, q_rope = q.split([self.d_nope, self.d_rope], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin, self.interleave)  # [B, T, H, d_rope]

        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.d_rope], dim=-1)
        latent = self.kv_a_layernorm(latent)  # c^KV [B, T, c]
        k_rope = apply_rope(k_rope[:, :, None, :], cos, sin, self.interleave)[:, :, 0]  # k^R [B, T, d_rope]
        if cache is not None:
            latent, k_rope = cache.write(layer_idx, latent, k_rope)  # [B, S, .]

        impl = impl or self.attn_impl
        if impl == "auto":
            impl = "absorb" if T == 1 else "naive"
        if impl == "absorb":
            out = self._absorbed(q_nope, q_rope, latent, k_rope, mask)
        else:
            out = self._naive(q_nope, q_rope, latent, k_rope, mask)
        return self.o_proj(out.reshape(B, T, self.n_heads * self.d_v))

    def _naive(self, q_nope, q_rope, latent, k_rope, mask) -> torch.Tensor:
        """Expand c^KV into per-head keys/values (eqs. 2-5) and run SDPA. Returns [B, T, H, d_v]."""
        B, S, _ = latent.shape
        T = q_nope.shape[1]
        if mask is None and 1 < T < S:
            mask = _causal_mask(T, S, latent.device)
        kv = self.kv_b_proj(latent).view(B, S, self.n_heads, self.d_nope + self.d_v)
        k_nope, v = kv.split([self.d_nope, self.d_v], dim=-1)
        k = torch.cat([k_nope, k_rope[:, :, None, :].expand(B, S, self.n_heads, self.d_rope)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        d_qk = q.shape[-1]
        if self.d_v < d_qk:  # equal head dims let SDPA use its fused CPU kernel (~2x faster here)
            v = F.pad(v, (0, d_qk - self.d_v))
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=mask, is_causal=mask is None and T > 1, scale=self.scale)  # [B, H, T, d_v (+pad)]
        return out.transpose(1, 2)[..., : self.d_v]

    def _absorbed(self, q_nope, q_rope, latent, k_rope, mask) -> torch.Tensor:
        """Attention in the latent space (W^{UK} into q, W^{UV} after the weighted sum).

        ``kv_b_proj.weight`` [H·(d_nope+d_v), c] viewed as [H, d_nope+d_v, c] = [W^{UK}; W^{UV}] per head.
        Returns [B, T, H, d_v]. ``mask=None`` means causal with the T new tokens last.
        """
        T, S = q_nope.shape[1], latent.shape[1]
        if mask is None and T > 1:
            mask = _causal_mask(T, S, latent.device)
        w = self.kv_b_proj.weight.view(self.n_heads, self.d_nope + self.d_v, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.d_nope], w[:, self.d_nope:]
        q_lat = torch.einsum("bthd,hdc->bhtc", q_nope, w_uk)  # [B, H, T, c]
        scores = torch.einsum("bhtc,bsc->bhts", q_lat, latent)
        scores = scores + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)
        scores = scores.float() * self.scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(-1).to(latent.dtype)
        o_lat = torch.einsum("bhts,bsc->bthc", probs, latent)  # [B, T, H, c]
        return torch.einsum("bthc,hvc->bthv", o_lat, w_uv)
