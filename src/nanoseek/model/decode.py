"""The one-token decode step of ``DeepseekV3ForCausalLM``, written for speed over a weight snapshot.

``decode_step(model, input_ids [B, 1], attention_mask, position_ids, past_key_values)`` is what
generation (``nanoseek.policy.generate``) and the server (``nanoseek.serve.runner``) call for each
new token: it runs ``FastDecoder`` when it applies (a nanoseek model, a cache, no gradient, no
autocast, see ``fast_decoder``) and otherwise the model's own ``forward``, which stays the plain
reference path for everything (training, prefill, MTP, ``attn_impl="naive"``, transformers
models). The fast step's math is the module path's with absorbed attention (DeepSeek-V2 §2.1.3,
V3 §2.1.1; "absorb" in the V3 inference code):

    scores_h = (q^C_h W^{UK}_h) · c^KV_s + q^R_h · k^R_s        over the cached latent, per head
    o_h      = (Σ_s p_hs c^KV_s) W^{UV}_h

and the two are tested to agree within 1e-5 (``tests/test_decode.py``). What makes it faster, each
measured on the benchmark model (``bench/bench_generate.py``, 2-core CPU):

* **Input-major weight copies.** Every dense projection is multiplied as ``x @ W_t`` with
  ``W_t = W.T`` stored contiguous: for the few-row products of decoding, this CPU's ``F.linear``
  on the ``[out, in]`` layout is 1.5-4x slower (``[16, 512] x [512, 512]``: 137 vs 32 µs).
  On other devices the transposes are views, not copies.
* **Output head** ``[B, D] x [D, V]``: with MKL, the weight is also kept pre-packed for the batch
  size in use (``torch.ops.mkl._mkl_linear``, bit-identical to ``x @ W_t``; 4.9 vs 7.4 ms for
  ``[16, 512] x [512, 32000]``); it is re-packed once a new batch size has lasted a few steps.
* **Attention in one C call per layer** (``cpu_kernels.mla_attention``, CPU float32 with 16-128
  heads): the H heads are the vector lanes of one score loop over the cached ``[c^KV ; k^R]``
  buffer (``MLACache.kv``), so each cached key is read once per row, and the two per-head
  products (``W^UK``, ``W^UV``) run over all rows at once. Elsewhere, three torch kernels do the
  same for all heads: scores, softmax and the weighted sum (SDPA's CPU kernel was no faster).
* **RMSNorm in one C call** (``cpu_kernels.rms_norm``, float32 CPU) instead of torch's five
  kernels.
* **RoPE as a matmul.** The rotation of every position is one ``[d_rope, d_rope]`` matrix per row,
  built once per step and shared by all layers, queries and keys.
* **Routed experts** through ``MoE.routed``: one C kernel call per layer on the CPU in float32
  (``cpu_kernels.routed_experts``), else one ``grouped_mm`` per projection; the shared experts
  and dense FFNs with ``gate_proj``/``up_proj`` fused into one matrix.

The snapshot holds one extra copy of the non-expert weights (for the benchmark model about
110 MB, mostly the output head; plus the packed head); the routed experts, embeddings, norms and
balancing biases are the live tensors. It is used only while every projection it copies is the
plain ``nn.Linear`` it copied (no adapter such as peft LoRA swapped in, no hooks), and it is
rebuilt when a copied parameter changes (its version counter or storage), e.g. after an
optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from torch.optim.optimizer import register_optimizer_step_post_hook

from nanoseek.model import cpu_kernels
from nanoseek.model.attention import MultiHeadLatentAttention, RMSNorm, RotaryEmbedding
from nanoseek.model.block import DecoderLayer
from nanoseek.model.moe import MLP, MoE, RoutedExperts, TopkRouter
from nanoseek.model.mtp import MTPLayer, SharedHead
from nanoseek.model.transformer import CausalLMOutput, DeepseekV3ForCausalLM, DeepseekV3Model

_HAS_MKL_LINEAR = (hasattr(torch.ops, "mkl") and hasattr(torch.ops.mkl, "_mkl_linear")
                   and torch.backends.mkl.is_available())
_REPACK_AFTER = 4  # steps a new batch size must last before the head is re-packed for it


def _t(w: torch.Tensor) -> torch.Tensor:
    """``w.T`` contiguous on the CPU (see the module docstring), a view elsewhere."""
    w = w.detach()
    return w.t().contiguous() if w.device.type == "cpu" else w.t()


def fast_rms_norm(x: torch.Tensor, norm: nn.Module, kernel: bool = False) -> torch.Tensor:
    """The decode step's ``RMSNorm.forward`` (float32 statistics, then the weight) with fewer
    kernels: one C call (``cpu_kernels.rms_norm``) with ``kernel`` for a float32 ``[M, D]`` ``x``,
    else ``F.rms_norm``. ``norm`` is the ``RMSNorm`` module whose weight and eps are used."""
    w = norm.weight
    if x.dtype == torch.float32 and w.dtype == torch.float32:
        if kernel and x.dim() == 2 and w.is_contiguous():
            return cpu_kernels.rms_norm(x, w.detach(), norm.eps)
        return F.rms_norm(x, (x.shape[-1],), w, norm.eps)
    return w * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.eps).to(x.dtype)


class _Dense:
    """A decode-step projection ``x @ w.T (+ bias)`` for the weight ``w [out, in]``, kept input-major
    (``_t``)."""

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.w_t = _t(w)  # [in, out]
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, in]`` -> ``[M, out]``."""
        return x @ self.w_t if self.bias is None else torch.addmm(self.bias, x, self.w_t)


def rope_matrix(cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """``apply_rope`` as a matrix: ``x @ R == apply_rope(x)`` along the last dim.

    ``cos, sin [B, d_rope/2]`` -> ``R [B, d_rope, d_rope]``. With ``interleave`` the pairs are
    (0,1), (2,3), ...; else (i, i + d/2). The output is [rotated firsts ; rotated seconds] in both
    cases, as ``nanoseek.model.attention.apply_rope`` writes it.
    """
    B, half = cos.shape
    d = 2 * half
    j = torch.arange(half, device=cos.device)
    first, second = (2 * j, 2 * j + 1) if interleave else (j, j + half)
    R = cos.new_zeros(B, d, d)
    R[:, first, j] = cos
    R[:, second, j] = -sin
    R[:, second, j + half] = cos
    R[:, first, j + half] = sin
    return R


@dataclass
class _FFN:
    """A SwiGLU FFN as ``down(act(gate(x)) * up(x))`` with gate/up in one projection."""

    gate_up: _Dense  # [D] -> [2I]
    down_proj: _Dense  # [I] -> [D]
    inter: int
    act: object

    @classmethod
    def of(cls, mlp: MLP) -> "_FFN":
        gu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        return cls(_Dense(gu), _Dense(mlp.down_proj.weight), mlp.gate_proj.out_features, mlp.act)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.gate_up(x))

    def down(self, h: torch.Tensor) -> torch.Tensor:
        """The rest of the FFN from ``h = gate_up(x)`` [N, 2I]."""
        return self.down_proj(self.act(h[:, : self.inter]) * h[:, self.inter:])


@dataclass
class _Layer:
    """One decoder block's decode-ready weights."""

    index: int
    input_norm: nn.Module
    post_norm: nn.Module
    in_proj: _Dense  # [q_a_proj (or q_proj) ; kv_a_proj_with_mqa]: D -> nq + c + dr, one product
    nq: int  # q_lora_rank, or H*(dn+dr) without q compression
    q_a_norm: nn.Module | None
    q_b: _Dense | None  # q_lora_rank -> H*(dn+dr)
    kv_norm: nn.Module
    w_uk: torch.Tensor  # [H, dn, c]
    w_uv_t: torch.Tensor  # [H, c, dv]
    o_proj: _Dense  # H*dv -> D
    scale: float
    moe: MoE | None
    gate_t: torch.Tensor | None  # [D, E] router weight, float32
    gate_shared: _Dense | None  # router and shared gate/up in one product, D -> E + 2I_s (float32 models)
    shared: _FFN | None
    dense: _FFN | None
    c_kernel: bool  # attention through cpu_kernels.mla_attention


def _submodules(model) -> list[nn.Module]:
    """Every module below the ``DeepseekV3ForCausalLM`` (the model itself excluded: ``_blocked``
    checks its hooks)."""
    return [m for m in model.modules() if m is not model]


# the modules a snapshot knows how to copy; any other class in the tree keeps the module path
_KNOWN_MODULES = frozenset({DeepseekV3Model, nn.ModuleList, DecoderLayer, MTPLayer, SharedHead,
                            MultiHeadLatentAttention, RMSNorm, RotaryEmbedding, MoE, TopkRouter, RoutedExperts, MLP,
                            nn.Linear, nn.Embedding})
_OPTIMIZER_STEPS = [0]  # optimizer steps taken in this process (any optimizer), see FastDecoder.is_current


def _count_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


class FastDecoder:
    """Decode-step engine for a ``DeepseekV3ForCausalLM`` (see the module docstring).

    ``FastDecoder.supports(model)`` says whether it applies; ``FastDecoder(model)`` snapshots the
    weights; ``is_current(model)`` says whether the snapshot still matches the model; ``forward``
    runs one step and ``logits`` the output head. ``fast_decoder(model)`` does these checks and
    keeps the snapshot on the model (``model.decode_snapshot``).
    """

    def __init__(self, model) -> None:
        c = model.config
        self.config = c
        self.n_heads, self.d_nope, self.d_rope, self.d_v = (
            c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim)
        self.kv_lora_rank = c.kv_lora_rank
        self.kernels = model.lm_head.weight.device.type == "cpu" and cpu_kernels.library() is not None  # RMSNorm
        self.rotary = model.model.rotary_emb
        self.embed = model.model.embed_tokens
        self.final_norm = model.model.norm
        self.head = model.lm_head
        self.head_t = _t(model.lm_head.weight)  # [D, V]
        self._packed: tuple[int, torch.Tensor] | None = None  # (batch size, MKL-packed head)
        self._new_batch = (0, 0)  # (batch size, steps seen in a row) for re-packing
        self.layers = [self._layer(layer) for layer in model.main_layers]
        self.n_mtp_moe = sum(1 for m in model.mtp_layers if m.is_moe)
        self._watch(model)

    def _layer(self, layer) -> _Layer:
        a = layer.self_attn
        H, dn, dv, cr = self.n_heads, self.d_nope, self.d_v, self.kv_lora_rank
        w = a.kv_b_proj.weight.detach().view(H, dn + dv, cr)
        bias = lambda m: None if m.bias is None else m.bias.detach()  # noqa: E731
        lora = a.q_lora_rank is not None
        moe = layer.mlp if layer.is_moe else None
        q_in, kv_in = (a.q_a_proj if lora else a.q_proj), a.kv_a_proj_with_mqa
        in_bias = None
        if q_in.bias is not None or kv_in.bias is not None:
            zeros = lambda m: torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device)  # noqa: E731
            in_bias = torch.cat([bias(m) if m.bias is not None else zeros(m) for m in (q_in, kv_in)])
        gate_t = _t(moe.gate.weight.float()) if moe is not None else None
        shared = _FFN.of(moe.shared_experts) if moe is not None and moe.shared_experts is not None else None
        s = moe.shared_experts if shared is not None else None
        fuse = s is not None and s.gate_proj.weight.dtype == torch.float32  # the router runs in float32
        return _Layer(
            index=layer.layer_idx, input_norm=layer.input_layernorm, post_norm=layer.post_attention_layernorm,
            in_proj=_Dense(torch.cat([q_in.weight, kv_in.weight]), in_bias), nq=q_in.out_features,
            q_a_norm=a.q_a_layernorm if lora else None, q_b=_Dense(a.q_b_proj.weight) if lora else None,
            kv_norm=a.kv_a_layernorm,
            w_uk=w[:, :dn].contiguous(), w_uv_t=w[:, dn:].transpose(1, 2).contiguous(),
            o_proj=_Dense(a.o_proj.weight, bias(a.o_proj)), scale=a.scale,
            moe=moe, gate_t=gate_t, shared=shared,
            gate_shared=_Dense(torch.cat([moe.gate.weight.float(), s.gate_proj.weight, s.up_proj.weight]))
            if fuse else None,
            dense=None if moe is not None else _FFN.of(layer.mlp),
            c_kernel=cpu_kernels.mla_attention_ok(H, cr, self.d_rope, dv, w.dtype, w.device))

    # ----------------------------------------------------------------------------- validity
    @staticmethod
    def supports(model) -> bool:
        """True when the model is made only of nanoseek's own modules, with plain ``nn.Linear``
        projections (so peft adapters, quantised or wrapped layers keep the module path), no
        forward hooks on any submodule and no global module hooks (they would not fire), and
        attention may be absorbed (``attn_impl`` "auto" or "absorb", in the config and in every
        layer)."""
        if _blocked(model, [layer.self_attn for layer in model.main_layers]):
            return False
        for m in _submodules(model):
            if type(m) not in _KNOWN_MODULES or m._forward_hooks or m._forward_pre_hooks:
                return False
        return True

    def _watch(self, model) -> None:
        """Record what ``is_current`` compares: every submodule's place in the tree and every
        parameter's identity, storage and version, plus the global optimizer-step count."""
        self.tree = [(parent._modules, name, child) for parent in [model, *_submodules(model)]
                     for name, child in parent._modules.items()]
        self.attn = [layer.self_attn for layer in model.main_layers]
        self.scales = [a.scale for a in self.attn]
        self.params = [(m._parameters, name, p, p.data_ptr(), p._version) for m in _submodules(model)
                       for name, p in m._parameters.items() if p is not None]
        self.optimizer_steps = _OPTIMIZER_STEPS[0]

    def is_current(self, model) -> bool:
        """Whether the snapshot still describes ``model``: no submodule replaced or hooked, no
        parameter replaced or changed in place (its version counter), no optimizer step taken
        anywhere since the snapshot (fused optimizers do not bump version counters), no
        ``attn_impl`` switched to "naive", no softmax ``scale`` changed. A change made through
        ``.data`` is invisible to these checks: call ``DeepseekV3ForCausalLM.reset_fast_decoder()``
        after one."""
        if (self.optimizer_steps != _OPTIMIZER_STEPS[0] or _blocked(model, self.attn)
                or [a.scale for a in self.attn] != self.scales):
            return False
        for siblings, name, child in self.tree:
            if siblings.get(name) is not child or child._forward_hooks or child._forward_pre_hooks:
                return False
        for params, name, p, ptr, version in self.params:
            if params.get(name) is not p or p._version != version or p.data_ptr() != ptr:
                return False
        return True

    # ----------------------------------------------------------------------------- the step
    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, new_mask: torch.Tensor, position_ids: torch.Tensor, cache):
        """One token per row.

        ``input_ids [B, 1]``, ``new_mask [B, 1]`` bool (False: a pad token, which still attends to
        itself), ``position_ids [B, 1]``, ``cache`` an ``MLACache`` (written, then advanced).
        Returns ``(h [B, 1, D] after the final norm, expert_load [n_moe_layers, E] float32)``
        counting only real tokens, as ``DeepseekV3ForCausalLM.forward``.
        """
        B = input_ids.shape[0]
        past = cache.length
        cache.reserve(1)
        h = self.embed(input_ids[:, 0])  # [B, D]
        attn_bias = torch.zeros(B, 1, past + 1, dtype=h.dtype, device=h.device)  # additive key mask
        attn_bias[:, 0, :past].masked_fill_(~cache.mask[:, :past], float("-inf"))
        cos, sin = self.rotary(position_ids)  # [B, 1, dr/2] float32
        rot = rope_matrix(cos[:, 0], sin[:, 0], self.config.rope_interleave).to(h.dtype)  # [B, dr, dr]
        routed = []  # topk_idx [B, K] of each MoE layer
        for L in self.layers:
            h = h + self._attention(L, fast_rms_norm(h, L.input_norm, self.kernels), rot, attn_bias, cache)
            x = fast_rms_norm(h, L.post_norm, self.kernels)
            if L.dense is not None:
                h = h + L.dense(x)
                continue
            if L.gate_shared is not None:  # router and shared experts' gate/up in one product
                g = L.gate_shared(x)
                scores, y = g[:, : L.moe.n_experts].sigmoid(), L.shared.down(g[:, L.moe.n_experts:])
            else:
                scores = (x.float() @ L.gate_t).sigmoid()
                y = L.shared(x) if L.shared is not None else None
            topk_idx, topk_w = L.moe.gate.select(scores)
            r = L.moe.routed(x, topk_idx, topk_w)
            h = h + (r if y is None else r + y)
            routed.append(topk_idx)
        cache.advance(new_mask)
        return fast_rms_norm(h, self.final_norm, self.kernels)[:, None], self._expert_load(routed, new_mask[:, 0])

    def _expert_load(self, routed: list[torch.Tensor], real: torch.Tensor) -> torch.Tensor | None:
        """``[n_moe_layers, E]`` counts of real tokens per expert (MTP rows zero), in one scatter."""
        n = len(routed) + self.n_mtp_moe
        if n == 0:
            return None
        load = torch.zeros(n, self.config.n_routed_experts, device=real.device)
        if routed:
            idx = torch.stack(routed).flatten(1)  # [n_main, B*K]
            w = real.float().repeat_interleave(routed[0].shape[1]).expand(len(routed), -1)
            load[: len(routed)].scatter_add_(1, idx, w)
        return load

    def _attention(self, L: _Layer, x: torch.Tensor, rot: torch.Tensor, attn_bias: torch.Tensor, cache) -> torch.Tensor:
        B, H, dn, c = x.shape[0], self.n_heads, self.d_nope, self.kv_lora_rank
        qkv = L.in_proj(x)  # [B, nq + c + dr]
        q, kv = qkv[:, : L.nq], qkv[:, L.nq:]  # kv: [c^KV (not normed) ; k (not rotated)]
        if L.q_b is not None:
            q = L.q_b(fast_rms_norm(q, L.q_a_norm, self.kernels))
        q = q.reshape(B, H, dn + self.d_rope)
        k_rope = torch.bmm(kv[:, None, c:], rot)  # k^R = RoPE(k), [B, 1, dr]
        cache.write(L.index, fast_rms_norm(kv[:, :c], L.kv_norm, self.kernels)[:, None], k_rope)
        if L.c_kernel and cpu_kernels.mla_attention_takes(q, cache.kv[L.index], c):
            o = cpu_kernels.mla_attention(q, rot, L.w_uk, L.w_uv_t, cache.kv[L.index], cache.length + 1, attn_bias,
                                          L.scale)
            return L.o_proj(o)
        keys = cache.kv[L.index][:, : cache.length + 1]  # [B, S, c + dr]: [c^KV ; k^R]
        q_lat = torch.bmm(q[..., :dn].transpose(0, 1), L.w_uk).transpose(0, 1)  # q^C W^UK, [B, H, c]
        q = torch.cat([q_lat, torch.bmm(q[..., dn:], rot)], dim=-1)  # [B, H, c + dr]
        # every head attends to the same (single) latent key, so the H heads are H query rows of one
        # attention over the cached [c^KV ; k^R]; the values are its c^KV columns
        scores = torch.baddbmm(attn_bias, q, keys.transpose(1, 2), alpha=L.scale)  # [B, H, S]
        o_lat = torch.bmm(scores.float().softmax(-1).to(keys.dtype), keys[..., :c])  # [B, H, c]
        o = torch.bmm(o_lat.transpose(0, 1), L.w_uv_t).transpose(0, 1).reshape(B, H * self.d_v)
        return L.o_proj(o)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output head: ``h [B, 1, D]`` -> logits ``[B, 1, V]`` float32."""
        x = h[:, 0]
        B = x.shape[0]
        packed = self._packed_head(B) if x.dtype == torch.float32 and x.device.type == "cpu" else None
        if packed is not None:
            out = torch.ops.mkl._mkl_linear(x, packed, self.head.weight.detach(), None, B)
        else:
            out = x @ self.head_t
        return out.float()[:, None]

    def _packed_head(self, B: int) -> torch.Tensor | None:
        """The MKL-packed head for batch size ``B``, packed once ``B`` has lasted ``_REPACK_AFTER``
        steps (a shrinking batch would otherwise re-pack at every step); None until then."""
        if not _HAS_MKL_LINEAR:
            return None
        if self._packed is not None and self._packed[0] == B:
            return self._packed[1]
        n = self._new_batch[1] + 1 if self._new_batch[0] == B else 1
        self._new_batch = (B, n)
        if n < _REPACK_AFTER:
            return None
        self._packed = None
        self._packed = (B, torch.ops.mkl._mkl_reorder_linear_weight(self.head.weight.detach(), B))
        return self._packed[1]


def _blocked(model, attention: list[nn.Module]) -> bool:
    """What rules the fast path out whatever the snapshot: ``attn_impl="naive"`` in the config or
    on one of the ``attention`` modules, a forward hook on the model itself, or a global module
    hook (``decode_step`` does not call ``forward``, so they would not fire)."""
    return (model.config.attn_impl == "naive" or any(a.attn_impl == "naive" for a in attention)
            or bool(model._forward_hooks or model._forward_pre_hooks)
            or bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks))


def fast_decoder(model) -> FastDecoder | None:
    """The ``FastDecoder`` for ``model``'s one-token decode steps, kept in ``model.decode_snapshot``
    and rebuilt when ``FastDecoder.is_current`` says the model changed since it was made (a
    parameter, a submodule, an optimizer step); None (and the snapshot dropped) when ``model`` is
    not a nanoseek ``DeepseekV3ForCausalLM``, its ``use_fast_decode`` is False or
    ``FastDecoder.supports`` rules it out (adapters, hooks, ``attn_impl="naive"``)."""
    if not isinstance(model, DeepseekV3ForCausalLM):
        return None
    dec = model.decode_snapshot
    if not model.use_fast_decode:
        model.decode_snapshot = None
        return None
    if dec is not None and dec.is_current(model):
        return dec
    model.decode_snapshot = None  # free the old snapshot before building a new one
    if not FastDecoder.supports(model):
        return None
    dec = model.decode_snapshot = FastDecoder(model)
    return dec


def decode_step(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None):
    """Feed one new token per row to a model with a KV cache; what generation and the server call.

    ``input_ids [B, 1]``; ``attention_mask`` ``[B, past+1]`` (or ``[B, 1]``) over the cached and
    new positions; ``position_ids [B, 1]`` (default: continuing each row's count of real tokens);
    ``past_key_values`` the cache from the prefill (written, then advanced). Returns the output of
    ``model(..., use_cache=True)``: for a nanoseek model ``CausalLMOutput`` (logits ``[B, 1, V]``
    float32, the cache, ``expert_load``, ``hidden_states``).

    The fast path (``FastDecoder``) runs when ``fast_decoder(model)`` gives one and the step is
    a one-token step with a cache, without gradient and outside autocast; it equals ``forward``
    within float rounding (1e-5, ``tests/test_decode.py``). Otherwise this is ``model(...)``.
    Autocast keeps ``forward`` because autocast picks each op's precision and the fast path's
    fused, reordered products would round differently: in an MoE a near-tie between experts is
    then decided differently and the token's logits jump (issue 19 item 7).
    """
    dec = None
    if (input_ids.shape[1] == 1 and past_key_values is not None and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled(input_ids.device.type)):
        dec = fast_decoder(model)
    if dec is None:
        return model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     past_key_values=past_key_values, use_cache=True)
    new_mask, position_ids = model.token_inputs(input_ids, attention_mask, position_ids, past_key_values)
    h, expert_load = dec.forward(input_ids, new_mask, position_ids, past_key_values)
    return CausalLMOutput(dec.logits(h), past_key_values, None, None, expert_load, h)
