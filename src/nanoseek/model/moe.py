"""DeepSeekMoE with auxiliary-loss-free load balancing (DeepSeek-V3 §2.1.2, eqs. 12-20).

    h' = u + Σ_shared FFN_s(u) + Σ_{i ∈ TopK} g_i FFN_i(u)
    s_i = sigmoid(u · e_i)                           affinities, float32
    selection: top-K of s_i + b_i inside the topk_group best groups, a group scored by the sum of
               its two highest biased scores (V3 inference code / transformers "noaux_tc")
    g_i = s_i / Σ_{j ∈ TopK} s_j · routed_scaling_factor   (the bias b never enters g)

Parameter names are the released checkpoint's: ``gate.weight``, ``gate.e_score_correction_bias``
(b, a float32 buffer, updated by ``update_bias`` outside the optimizer), ``experts.{j}.{gate,up,
down}_proj``, ``shared_experts.{gate,up,down}_proj`` (the N_s shared experts as one MLP of width
N_s · moe_intermediate_size, as the V3 code does).

Dispatch: token→expert assignments are sorted by expert once, then each expert that got tokens runs
once on its contiguous slice (one ``grouped_mm`` for all of them at inference on the CPU, else a
loop); the outputs are put back in [token, slot] order with one ``index_select`` and summed over
the k slots with their gate weights in one ``bmm`` (no per-expert masks over all tokens, so 64
experts cost about what 8 do at the same top-k; on CPU this un-permute is 1.5-2.5x faster than
``index_copy`` + multiply + sum or ``index_add``; with gradient the latter is kept, its backward
being cheaper).
The routed experts are stacked in memory (``RoutedExperts``) but keep per-expert checkpoint names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.model import cpu_kernels
from nanoseek.model.config import ModelConfig

_HAS_GROUPED_MM = hasattr(F, "grouped_mm")  # torch >= 2.9

_ACT = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class MLP(nn.Module):
    """SwiGLU FFN ``down_proj(act(gate_proj(x)) * up_proj(x))``: [..., D] -> [..., D] (V3 §2.1.2)."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu") -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act = _ACT[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class TopkRouter(nn.Module):
    """The V3 gate: sigmoid affinities, bias-corrected group-limited top-k selection.

    ``forward(x [N, D]) -> (scores [N, E] float32, topk_idx [N, K], topk_weight [N, K] float32)``.
    ``scores`` are the raw sigmoid affinities s (used by the sequence-wise balance loss).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob, self.scale = config.norm_topk_prob, config.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(self.n_experts, config.hidden_size))
        # b_i of aux-loss-free balancing (V3 eq. 16); a buffer: changed by the update rule, not by SGD
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # gating in float32 (V3 §3.3) also under autocast, which would run this product in bfloat16:
        # bfloat16 affinities (8 bits) turn near-ties between experts into rounding-decided choices
        with torch.autocast(x.device.type, enabled=False):
            scores = F.linear(x.float(), self.weight.float()).sigmoid()  # s_{i,t}, eq. 15
        topk_idx, weight = self.select(scores)
        return scores, topk_idx, weight

    def select(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias-corrected, group-limited top-k on the affinities ``scores [N, E]`` float32 (eqs. 13, 16).

        Returns ``(topk_idx [N, K], topk_weight [N, K] float32)``; the weights come from the
        un-biased ``scores`` (normalised when ``norm_topk_prob``, times ``routed_scaling_factor``).
        """
        biased = scores + self.e_score_correction_bias.float()  # only for choosing (eq. 16)
        if self.n_group > 1 and self.topk_group < self.n_group:
            N = scores.shape[0]
            grouped = biased.view(N, self.n_group, -1)
            group_score = grouped.topk(2, dim=-1).values.sum(-1)  # [N, n_group]
            keep = group_score.topk(self.topk_group, dim=-1).indices
            group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
            biased = grouped.masked_fill(~group_mask[:, :, None], float("-inf")).view(N, -1)
        topk_idx = biased.topk(self.top_k, dim=-1).indices  # [N, K]
        weight = scores.gather(1, topk_idx)  # g from the un-biased s (eq. 13)
        if self.norm_topk_prob:
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
        return topk_idx, weight * self.scale


class RoutedExperts(nn.Module):
    """The N_r routed SwiGLU experts, stacked in memory for speed, per-expert in ``state_dict``.

    Parameters (in memory): ``w_gate_up [E, D, 2I]`` (gate then up, stored input-major so a token
    slice is multiplied as ``x @ w``, ~30% faster than ``F.linear`` for the 1-5 token slices of
    decoding on CPU) and ``w_down [E, I, D]``. ``state_dict()`` / ``load_state_dict()`` use the
    released names ``{j}.gate_proj.weight [I, D]``, ``{j}.up_proj.weight [I, D]``,
    ``{j}.down_proj.weight [D, I]`` (views of the stacked tensors; see ``_save_to_state_dict``).
    """

    def __init__(self, n_experts: int, hidden_size: int, intermediate_size: int, hidden_act: str = "silu") -> None:
        super().__init__()
        self.n_experts, self.inter = n_experts, intermediate_size
        self.w_gate_up = nn.Parameter(torch.empty(n_experts, hidden_size, 2 * intermediate_size))
        self.w_down = nn.Parameter(torch.empty(n_experts, intermediate_size, hidden_size))
        self.act = _ACT[hidden_act]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default init per expert: U(±1/sqrt(fan_in)) (the model re-inits with N(0, σ))."""
        nn.init.uniform_(self.w_gate_up, -self.w_gate_up.shape[1] ** -0.5, self.w_gate_up.shape[1] ** -0.5)
        nn.init.uniform_(self.w_down, -self.inter ** -0.5, self.inter ** -0.5)

    def __len__(self) -> int:
        return self.n_experts

    def expert(self, e: int, x: torch.Tensor, weights: tuple | None = None) -> torch.Tensor:
        """FFN_e(x) for ``x [n, D]`` -> [n, D]. ``weights``: ``self.per_expert()``, if already split."""
        w_gate_up, w_down = weights if weights is not None else (self.w_gate_up, self.w_down)
        h = x @ w_gate_up[e]
        return (self.act(h[:, : self.inter]) * h[:, self.inter:]) @ w_down[e]

    def grouped(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """All experts at once on expert-sorted rows: ``xs [M, D]`` whose first ``counts[0]`` rows go
        to expert 0, the next ``counts[1]`` to expert 1, ... (``counts [E]``) -> ``[M, D]``.

        Two ``torch.nn.functional.grouped_mm`` calls (gate/up, then down) instead of 2·E matmuls
        issued from Python; exactly the per-expert products (tested). Inference only: its CPU
        backward is not usable (see ``grouped_mm_ok``).
        """
        offs = counts.cumsum(0).to(torch.int32)
        h = F.grouped_mm(xs, self.w_gate_up, offs=offs)
        return F.grouped_mm(self.act(h[:, : self.inter]) * h[:, self.inter:], self.w_down, offs=offs)

    def grouped_mm_ok(self, x: torch.Tensor) -> bool:
        """Whether ``grouped`` may run on ``x``: torch has ``grouped_mm``, no gradient is needed,
        the tensors are on the CPU (where it is an exact loop of matmuls in C++; on CUDA it is
        limited to bfloat16 on recent GPUs, so the Python loop is used there), in a dtype it takes,
        and ``hidden_size`` and the expert width are multiples of 16 bytes (its row-stride rule)."""
        item = x.element_size()
        return (_HAS_GROUPED_MM and x.device.type == "cpu" and self.w_gate_up.dtype == x.dtype
                and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and (x.shape[-1] * item) % 16 == 0 and (self.inter * item) % 16 == 0  # its row-stride rule
                and not (torch.is_grad_enabled() and (x.requires_grad or self.w_gate_up.requires_grad)))

    def per_expert(self) -> tuple:
        """Per-expert weight views. Under autograd they come from one ``unbind`` (its backward is one
        stack); indexing ``w[e]`` per expert would allocate a full [E, ...] gradient per expert."""
        if torch.is_grad_enabled() and self.w_gate_up.requires_grad:
            return self.w_gate_up.unbind(0), self.w_down.unbind(0)
        return self.w_gate_up, self.w_down

    def _names(self, prefix: str, e: int) -> tuple[str, str, str]:
        return (f"{prefix}{e}.gate_proj.weight", f"{prefix}{e}.up_proj.weight", f"{prefix}{e}.down_proj.weight")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        gu = self.w_gate_up if keep_vars else self.w_gate_up.detach()
        down = self.w_down if keep_vars else self.w_down.detach()
        for e in range(self.n_experts):
            g, u, d = self._names(prefix, e)
            destination[g] = gu[e, :, : self.inter].t()
            destination[u] = gu[e, :, self.inter:].t()
            destination[d] = down[e].t()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        D, I = self.w_gate_up.shape[1], self.inter
        want = {"gate": (I, D), "up": (I, D), "down": (D, I)}
        with torch.no_grad():
            for e in range(self.n_experts):
                for key, kind in zip(self._names(prefix, e), ("gate", "up", "down")):
                    if key not in state_dict:
                        missing_keys.append(key)
                        continue
                    t = state_dict[key]
                    if tuple(t.shape) != want[kind]:
                        error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(t.shape)}, "
                                          f"the shape in current model is {want[kind]}.")
                        continue
                    if kind == "gate":
                        self.w_gate_up[e, :, :I].copy_(t.t())
                    elif kind == "up":
                        self.w_gate_up[e, :, I:].copy_(t.t())
                    else:
                        self.w_down[e].copy_(t.t())
        if strict:
            ours = {k for e in range(self.n_experts) for k in self._names(prefix, e)}
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in ours)


class MoE(nn.Module):
    """DeepSeekMoE layer: shared experts + routed experts (V3 eq. 12).

    ``forward(x [B, T, D], token_mask [B, T] bool | None, want_aux: bool)`` returns
    ``(y [B, T, D], load [E] float32, aux)`` where ``load`` counts the real tokens routed to each
    expert (detached) and ``aux`` is the un-weighted sequence-wise balance loss Σ_i f_i P_i
    (V3 eqs. 17-20) averaged over sequences, or None unless ``want_aux``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.gate = TopkRouter(config)
        self.experts = RoutedExperts(self.n_experts, config.hidden_size, config.moe_intermediate_size,
                                     config.hidden_act)
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts, config.hidden_act)
            if config.n_shared_experts > 0 else None)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None,
                want_aux: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        B, T, D = x.shape
        flat = x.reshape(-1, D)
        scores, topk_idx, topk_w = self.gate(flat)
        y = self.routed(flat, topk_idx, topk_w).view(B, T, D)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)

        with torch.no_grad():
            idx = topk_idx if token_mask is None else topk_idx[token_mask.reshape(-1)]
            load = torch.bincount(idx.reshape(-1), minlength=self.n_experts).float()
        aux = None
        if want_aux:
            aux = sequence_balance_loss(scores.view(B, T, -1), topk_idx.view(B, T, -1), token_mask)
        return y, load, aux

    def routed(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor) -> torch.Tensor:
        """Σ_k g_k FFN_{idx_k}(x): ``x [N, D]``, ``topk_idx/topk_w [N, K]`` -> [N, D].

        Sorted dispatch: assignments are ordered by expert, each expert runs once on its slice; at
        inference on the CPU all experts run in one ``grouped_mm`` call (``RoutedExperts.grouped``),
        and a few tokens (a decode step) in one C kernel call (``cpu_kernels.routed_experts``).
        """
        N, K = topk_idx.shape
        if N == 0:
            return torch.zeros_like(x)
        ex = self.experts
        if cpu_kernels.routed_experts_ok(x, topk_idx, ex.w_gate_up, ex.w_down, ex.act):
            return cpu_kernels.routed_experts(x, topk_idx, topk_w, ex.w_gate_up, ex.w_down)
        flat_idx = topk_idx.reshape(-1)
        order = flat_idx.argsort(stable=True)  # [N*K] assignment ids grouped by expert
        counts = torch.bincount(flat_idx, minlength=self.n_experts)
        xs = x.index_select(0, order // K)  # rows sorted by expert
        if self.experts.grouped_mm_ok(x):
            ys = self.experts.grouped(xs, counts)
        else:
            sizes = counts.tolist()
            w = self.experts.per_expert()
            ys = torch.cat([self.experts.expert(e, xe, w) for e, xe in enumerate(xs.split(sizes)) if sizes[e]])
        if not torch.is_grad_enabled():  # back to [token, slot] order, then Σ_k g_k FFN_k(x)
            ys = ys.index_select(0, order.argsort()).view(N, K, -1)
            return torch.bmm(topk_w[:, None, :].to(x.dtype), ys)[:, 0]
        # training: the same with a cheaper backward (~5% per pretraining step of the zero recipe)
        ys = ys.new_empty(ys.shape).index_copy(0, order, ys).view(N, K, -1)
        return (ys * topk_w[..., None].to(x.dtype)).sum(1)

    def routed_reference(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor) -> torch.Tensor:
        """The plain version of ``routed`` (per expert: mask, gather, add), for tests."""
        out = torch.zeros_like(x)
        for e in range(self.n_experts):
            tok, slot = (topk_idx == e).nonzero(as_tuple=True)
            if tok.numel():  # index_add_: a token that picks e twice gets both terms
                out.index_add_(0, tok, self.experts.expert(e, x[tok]) * topk_w[tok, slot, None].to(x.dtype))
        return out

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor, speed: float) -> None:
        """Aux-loss-free balancing step (V3 §2.1.2): b_i += γ · sign(mean(load) − load_i).

        Overloaded experts (load above the mean) get a lower bias, underloaded ones a higher bias.
        ``load [E]`` = tokens routed to each expert over the step's batch.
        """
        if speed == 0 or float(load.sum()) == 0:
            return
        load = load.to(self.gate.e_score_correction_bias.device).float()
        self.gate.e_score_correction_bias += speed * torch.sign(load.mean() - load)


def sequence_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor,
                          token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Complementary sequence-wise balance loss Σ_i f_i P_i (V3 eqs. 17-20), mean over sequences.

    ``scores [B, T, E]`` raw sigmoid affinities, ``topk_idx [B, T, K]``, ``token_mask [B, T]``.
    f_i = E / (K·T) · #{t: i ∈ TopK(t)},  P_i = 1/T Σ_t s_{i,t} / Σ_j s_{j,t},  T = real tokens.
    Multiply by α (``aux_loss_alpha``) to get L_Bal. A perfectly balanced router gives 1.
    """
    B, T, E = scores.shape
    K = topk_idx.shape[-1]
    m = torch.ones(B, T, device=scores.device) if token_mask is None else token_mask.float()
    n_tok = m.sum(1).clamp_min(1)  # [B]
    with torch.no_grad():
        hits = torch.zeros_like(scores).scatter_(2, topk_idx, 1.0)  # [B, T, E]
        f = (hits * m[..., None]).sum(1) * E / (K * n_tok[:, None])  # [B, E]
    p = ((scores / scores.sum(-1, keepdim=True)) * m[..., None]).sum(1) / n_tok[:, None]  # [B, E]
    return (f * p).sum(-1).mean()
