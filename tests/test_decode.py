"""The fast one-token decode path (model/decode.py) is exact: ``decode_step`` equals the model's
forward (the reference path) across the config space, is really used (and only when asked for:
forward never switches to it), follows weight changes, steps aside for hooks/adapters, survives
copies, packs the output head, decodes merged caches, and its grouped MoE equals the reference."""

import copy
import io

import pytest
import torch
from torch import nn

from nanoseek.policy.generate import SamplingParams, generate
from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
from nanoseek.model import cpu_kernels
from nanoseek.model import decode as decode_mod
from nanoseek.model.attention import MLACache, MultiHeadLatentAttention, RMSNorm, apply_rope
from nanoseek.model.decode import FastDecoder, decode_step, fast_decoder, rope_matrix
from nanoseek.model.moe import MoE

V = 67
ATOL = 1e-5
YARN = {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
        "mscale": 1.0, "mscale_all_dim": 1.0}


def config(**kw) -> ModelConfig:
    base = dict(vocab_size=V, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
                qk_nope_head_dim=16, v_head_dim=20, initializer_range=0.1)
    base.update(kw)
    return ModelConfig.tiny(**base)


def build(seed: int = 0, **kw) -> DeepseekV3ForCausalLM:
    """A tiny model whose norms, biases and balancing biases are not at their trivial init values."""
    torch.manual_seed(seed)
    m = DeepseekV3ForCausalLM(config(**kw)).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, RMSNorm):
                mod.weight.add_(0.2 * torch.randn_like(mod.weight))
            elif isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0.0, 0.1)
            elif isinstance(mod, MoE):
                mod.gate.e_score_correction_bias.normal_(0.0, 0.05)
    return m


def left_pad(prompts):
    """``ids, mask [B, max len]`` for token lists, left-padded with id 0 (mask 0)."""
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    return ids, mask


def padded_batch(lengths=(7, 4, 1), seed: int = 1):
    """Random prompts of these lengths, left-padded (a different pad length per row)."""
    g = torch.Generator().manual_seed(seed)
    return left_pad([torch.randint(1, V, (n,), generator=g).tolist() for n in lengths])


def decode_tokens(B: int, steps: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(1, V, (steps, B), generator=torch.Generator().manual_seed(seed))


def run(model, fast: bool, ids, mask, tokens, new_masks=None, expect_decoder=None):
    """Prefill (forward), then feed ``tokens[t]`` one step at a time: through ``decode_step`` with
    ``fast``, else through ``forward`` (the reference path). With ``fast``, checks after each step
    that a FastDecoder is in use exactly when ``expect_decoder`` (default True; "any": not checked).
    Returns ``[(logits [B, V], expert_load), ...]`` per decode step."""
    expect_decoder = fast if expect_decoder is None else expect_decoder
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        cache, full, steps = out.past_key_values, mask, []
        for t in range(tokens.shape[0]):
            nm = torch.ones(ids.shape[0], dtype=torch.long) if new_masks is None else new_masks[t]
            full = torch.cat([full, nm[:, None]], dim=1)
            if fast:
                out = decode_step(model, tokens[t][:, None], attention_mask=full, past_key_values=cache)
            else:
                out = model(tokens[t][:, None], attention_mask=full, past_key_values=cache, use_cache=True)
            assert out.logits.shape == (ids.shape[0], 1, V) and out.hidden_states.shape[1] == 1
            if fast and expect_decoder != "any":
                if expect_decoder:
                    assert isinstance(model.decode_snapshot, FastDecoder)
                else:
                    assert model.decode_snapshot is None
            steps.append((out.logits[:, 0], out.expert_load))
    return steps


def assert_same_steps(fast, slow):
    assert len(fast) == len(slow)
    for (lf, ef), (ls, es) in zip(fast, slow):
        torch.testing.assert_close(lf, ls, atol=ATOL, rtol=0)
        if es is None:
            assert ef is None
        else:
            assert ef is not None and ef.dtype == torch.float32 and torch.equal(ef, es)


def logits_of(steps) -> torch.Tensor:
    return torch.stack([s[0] for s in steps])


CONFIGS = {
    "v3_default": {},
    "q_proj_no_lora": dict(q_lora_rank=None),
    "groups_2_keep_1": dict(n_group=2, topk_group=1),
    "one_group": dict(n_group=1, topk_group=1),
    "all_moe": dict(first_k_dense_replace=0),
    "two_dense_of_three": dict(first_k_dense_replace=2, num_hidden_layers=3),
    "only_mtp_is_moe": dict(first_k_dense_replace=2),
    "all_dense_no_mtp": dict(first_k_dense_replace=4, num_nextn_predict_layers=0),
    "unnormed_scale_1": dict(norm_topk_prob=False, routed_scaling_factor=1.0),
    "unnormed_scale_1.7": dict(norm_topk_prob=False, routed_scaling_factor=1.7),
    "scale_0.6": dict(routed_scaling_factor=0.6),
    "no_shared": dict(n_shared_experts=0),
    "two_shared": dict(n_shared_experts=2),
    "attention_bias": dict(attention_bias=True),
    "rope_not_interleaved": dict(rope_interleave=False),
    "yarn": dict(rope_scaling=YARN, max_position_embeddings=256),
    "no_mtp": dict(num_nextn_predict_layers=0),
    "top4_of_16": dict(n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2),
    "gelu_tied": dict(hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True),
    "attn_absorb": dict(attn_impl="absorb"),
    "everything_off_default": dict(q_lora_rank=None, n_group=2, topk_group=1, first_k_dense_replace=0,
                                   norm_topk_prob=False, routed_scaling_factor=1.5, n_shared_experts=2,
                                   attention_bias=True, rope_interleave=False, rope_scaling=YARN,
                                   max_position_embeddings=256),
}


@pytest.mark.parametrize("overrides", list(CONFIGS.values()), ids=list(CONFIGS))
def test_fast_equals_module_path(overrides):
    """Over a left-padded batch, fast decode steps give the module path's logits (1e-5) and expert_load."""
    m = build(**overrides)
    ids, mask = padded_batch()
    tokens = decode_tokens(ids.shape[0], 4)
    fast = run(m, True, ids, mask, tokens)
    slow = run(m, False, ids, mask, tokens)
    assert_same_steps(fast, slow)
    n_main_moe = sum(layer.is_moe for layer in m.main_layers)
    n_moe = len(m.moe_layers())
    K = m.config.num_experts_per_tok
    for _, load in fast:
        if n_moe == 0:
            assert load is None
            continue
        assert load.shape == (n_moe, m.config.n_routed_experts)
        assert load[:n_main_moe].sum(1).tolist() == [ids.shape[0] * K] * n_main_moe  # every row's token, K each
        assert not load[n_main_moe:].any()  # MTP blocks do not run while decoding
    # and the steps are not trivially equal: different tokens give different logits
    assert (logits_of(fast)[1] - logits_of(fast)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("overrides", [{}, dict(q_lora_rank=None, attention_bias=True)], ids=["v3_default", "variant"])
def test_bfloat16_fast_as_accurate_as_module(overrides):
    """In bfloat16 the fast path is as close as the module path to float32 math on the same weights."""
    m = build(**overrides).to(torch.bfloat16)
    exact = copy.deepcopy(m).float()
    ids, mask = padded_batch()
    tokens = decode_tokens(3, 3)
    fast, slow, ref = (run(m, True, ids, mask, tokens), run(m, False, ids, mask, tokens),
                       run(exact, False, ids, mask, tokens))
    for (lf, ef), (ls, es), (lr, er) in zip(fast, slow, ref):
        assert lf.dtype == torch.float32 and torch.equal(ef, er) and torch.equal(es, er)  # same routing
        scale = float(lr.abs().max())
        err_fast, err_module = float((lf - lr).abs().max()), float((ls - lr).abs().max())
        assert err_fast < 0.05 * scale and err_fast <= 2 * max(err_module, 0.01 * scale)


@pytest.mark.parametrize("prefill_padded", [True, False], ids=["padded_prefill", "full_prefill"])
@pytest.mark.parametrize("overrides", [{}, dict(q_lora_rank=None, rope_interleave=False, rope_scaling=YARN,
                                                max_position_embeddings=256, attention_bias=True)],
                         ids=["v3_default", "variant"])
def test_pad_decode_token(prefill_padded, overrides):
    """A decode token that is padding (mask 0 in its new column) gives the module path's result too."""
    m = build(**overrides)
    ids, mask = padded_batch() if prefill_padded else padded_batch((5, 5, 5))
    tokens = decode_tokens(3, 5, seed=4)
    new_masks = torch.ones(5, 3, dtype=torch.long)
    new_masks[1, 1] = 0  # row 1 gets a pad at step 1
    new_masks[2, 0] = new_masks[2, 2] = 0  # two rows at step 2
    new_masks[3, 1] = 0  # row 1 again, later
    fast = run(m, True, ids, mask, tokens, new_masks)
    slow = run(m, False, ids, mask, tokens, new_masks)
    assert_same_steps(fast, slow)
    K = m.config.num_experts_per_tok
    for t, (_, load) in enumerate(fast):  # only real tokens are counted
        assert load[0].sum().item() == new_masks[t].sum().item() * K


@pytest.fixture
def attn_calls(monkeypatch):
    """Counts calls of the module-path attention (``MultiHeadLatentAttention.forward``)."""
    calls = []
    orig = MultiHeadLatentAttention.forward

    def spy(self, *args, **kwargs):
        calls.append(1)
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(MultiHeadLatentAttention, "forward", spy)
    return calls


def one_step(m, cache_len: int = 5, token: int = 3, fast: bool = True):
    """Prefill [2, cache_len] tokens, then one decode step (``decode_step`` with ``fast``, else the
    model's forward); returns the step's output."""
    ids = torch.arange(1, 2 * cache_len + 1).view(2, cache_len) % V
    cache = m(ids, use_cache=True).past_key_values
    if fast:
        return decode_step(m, torch.full((2, 1), token), past_key_values=cache)
    return m(torch.full((2, 1), token), past_key_values=cache, use_cache=True)


def test_fast_path_is_used(attn_calls):
    """decode_step runs FastDecoder (no module attention), reuses it, and only where it applies;
    forward never switches to it."""
    m = build()
    L = m.config.num_hidden_layers
    with torch.no_grad():
        one_step(m)
        assert len(attn_calls) == L  # the prefill only
        dec = m.decode_snapshot
        assert isinstance(dec, FastDecoder)
        one_step(m)
        assert m.decode_snapshot is dec and fast_decoder(m) is dec  # one snapshot, not one per step
        assert len(attn_calls) == 2 * L
        attn_calls.clear()
        one_step(m, fast=False)  # forward is the plain reference path, also for a one-token cached step
        assert len(attn_calls) == 2 * L and m.decode_snapshot is dec
        m.use_fast_decode = False
        attn_calls.clear()
        one_step(m)
        assert m.decode_snapshot is None and fast_decoder(m) is None and len(attn_calls) == 2 * L
        m.use_fast_decode = True
        attn_calls.clear()
        with torch.inference_mode():
            one_step(m)
        assert len(attn_calls) == L and isinstance(m.decode_snapshot, FastDecoder)
        attn_calls.clear()
        h = m.register_forward_hook(lambda mod, i, o: None)  # a hook on the model itself must fire
        one_step(m)
        assert len(attn_calls) == 2 * L and fast_decoder(m) is None
        h.remove()
    attn_calls.clear()
    one_step(m)  # with gradient: module path, and the logits carry a graph
    assert len(attn_calls) == 2 * L
    # attn_impl="naive" (config) keeps the module path, also when switched after a snapshot was made
    with torch.no_grad():
        assert isinstance(fast_decoder(m), FastDecoder)
        m.config.attn_impl = "naive"
        assert fast_decoder(m) is None and m.decode_snapshot is None
        m.config.attn_impl = "auto"
        assert isinstance(fast_decoder(m), FastDecoder)
        naive = build(attn_impl="naive")
        assert fast_decoder(naive) is None
        attn_calls.clear()
        one_step(naive)
        assert len(attn_calls) == 2 * L and naive.decode_snapshot is None


def test_grad_step_output_is_differentiable():
    """With gradient enabled a one-token cached step (module path) still backpropagates."""
    m = build()
    out = one_step(m)
    assert out.logits.requires_grad
    out.logits.sum().backward()
    assert m.model.layers[0].self_attn.o_proj.weight.grad is not None


def test_snapshot_rebuilt_after_weight_change():
    """In-place edits, a checkpoint load and an optimizer step rebuild the snapshot; fast == module after."""
    m = build()
    ids, mask = padded_batch()
    tokens = decode_tokens(3, 3)
    before = run(m, True, ids, mask, tokens)
    dec = m.decode_snapshot

    def check_rebuilt(prev_dec, prev_steps):
        fast = run(m, True, ids, mask, tokens)
        new_dec = m.decode_snapshot
        assert isinstance(new_dec, FastDecoder) and new_dec is not prev_dec
        assert_same_steps(fast, run(m, False, ids, mask, tokens))
        assert (logits_of(fast) - logits_of(prev_steps)).abs().max() > 1e-3  # the change mattered
        return m.decode_snapshot, fast

    with torch.no_grad():
        m.model.layers[0].self_attn.o_proj.weight.mul_(2)
    dec, before = check_rebuilt(dec, before)

    with torch.no_grad():  # the router weight is copied too (gate_t)
        m.model.layers[1].mlp.gate.weight.mul_(-1)
    dec, before = check_rebuilt(dec, before)

    sd = m.state_dict()  # a checkpoint load copies into the parameters
    m.load_state_dict({k: v * 1.5 if k in ("lm_head.weight", "model.layers.1.mlp.shared_experts.down_proj.weight")
                       else v for k, v in sd.items()})
    dec, before = check_rebuilt(dec, before)

    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m.train()
    m(torch.randint(0, V, (2, 6))).logits.logsumexp(-1).mean().backward()
    opt.step()
    m.eval()
    dec, before = check_rebuilt(dec, before)

    # the load-balancing bias is read live: no rebuild, and the routing follows it
    m.config.bias_update_speed = 0.5
    load = before[0][1]
    m.update_expert_bias(load)
    fast = run(m, True, ids, mask, tokens)
    assert m.decode_snapshot is dec
    assert_same_steps(fast, run(m, False, ids, mask, tokens))
    assert not torch.equal(fast[0][1], load)  # the new bias moved tokens to other experts


class Scaled(nn.Module):
    """A wrapper around a projection (as an adapter would be): ``2 * inner(x)``."""

    def __init__(self, inner: nn.Linear) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


class MyLinear(nn.Linear):
    """An ``nn.Linear`` subclass (e.g. a quantised layer); same math."""


def test_hooks_and_adapters_disable_fast_path():
    """A hooked, wrapped or subclassed projection (or a global hook) gives the module path; undoing re-enables."""
    m = build()
    ids, mask = padded_batch()
    tokens = decode_tokens(3, 2)
    base = run(m, True, ids, mask, tokens)
    attn = m.model.layers[0].self_attn

    def check_disabled(changed: bool = True):
        assert fast_decoder(m) is None
        fast = run(m, True, ids, mask, tokens, expect_decoder=False)
        assert_same_steps(fast, run(m, False, ids, mask, tokens))
        diff = (logits_of(fast) - logits_of(base)).abs().max()
        assert diff > 1e-3 if changed else diff < ATOL

    def check_enabled():  # also leaves a live snapshot, so the next change must be noticed by is_current
        assert isinstance(fast_decoder(m), FastDecoder)
        assert_same_steps(run(m, True, ids, mask, tokens), base)

    h = attn.q_a_proj.register_forward_hook(lambda mod, i, o: o + 0.5)
    check_disabled()
    h.remove()
    check_enabled()

    h = m.model.layers[1].mlp.shared_experts.up_proj.register_forward_pre_hook(lambda mod, args: (args[0] * 3,))
    check_disabled()
    h.remove()
    check_enabled()

    o_proj = attn.o_proj
    attn.o_proj = Scaled(o_proj)  # an adapter-style wrapper module
    check_disabled()
    attn.o_proj = o_proj
    check_enabled()

    kv_b = attn.kv_b_proj
    sub = MyLinear(kv_b.in_features, kv_b.out_features, bias=False)
    sub.load_state_dict(kv_b.state_dict())
    attn.kv_b_proj = sub
    check_disabled(changed=False)  # same weights: the module path's logits equal the fast ones from before
    attn.kv_b_proj = kv_b
    check_enabled()

    h = torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: None)
    try:
        check_disabled(changed=False)
    finally:
        h.remove()
    check_enabled()

    m.use_fast_decode = False  # drop the snapshot first (see test_lm_head_hook_after_snapshot)
    assert fast_decoder(m) is None
    m.use_fast_decode = True
    h = m.lm_head.register_forward_hook(lambda mod, i, o: o + 1.0)
    check_disabled()
    h.remove()
    check_enabled()


def test_copies_do_not_carry_snapshot():
    """deepcopy and torch.save/load drop ``decode_snapshot``; the copies decode identically, independently."""
    m = build()
    ids, mask = padded_batch()
    tokens = decode_tokens(3, 3)
    ref = run(m, True, ids, mask, tokens)
    dec = m.decode_snapshot
    assert isinstance(dec, FastDecoder)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for c in (copy.deepcopy(m), loaded):
        assert c.decode_snapshot is None and c.use_fast_decode
        assert m.decode_snapshot is dec  # the original keeps its own
        got = run(c, True, ids, mask, tokens)
        assert isinstance(c.decode_snapshot, FastDecoder) and c.decode_snapshot is not dec
        assert_same_steps(got, ref)
        with torch.no_grad():  # the copy's snapshot follows the copy's weights, the original's stays
            c.model.layers[0].self_attn.o_proj.weight.mul_(2)
        assert (logits_of(run(c, True, ids, mask, tokens)) - logits_of(ref)).abs().max() > 1e-3
    assert_same_steps(run(m, True, ids, mask, tokens), ref)
    assert m.decode_snapshot is dec


@pytest.mark.parametrize("interleave", [True, False])
def test_rope_matrix_equals_apply_rope(interleave):
    """``x @ rope_matrix(cos, sin)`` equals ``apply_rope(x, cos, sin)``, for any cos/sin values."""
    g = torch.Generator().manual_seed(0)
    B, H, d = 5, 3, 16
    cos, sin = torch.randn(B, d // 2, generator=g), torch.randn(B, d // 2, generator=g)
    x = torch.randn(B, H, d, generator=g)
    R = rope_matrix(cos, sin, interleave)
    assert R.shape == (B, d, d)
    want = apply_rope(x[:, None], cos[:, None], sin[:, None], interleave)[:, 0]
    torch.testing.assert_close(x @ R, want, atol=1e-6, rtol=0)
    # real angles: a rotation (orthogonal), and the hand-computed 2-d case
    theta = torch.randn(B, d // 2, generator=g)
    R = rope_matrix(theta.cos(), theta.sin(), interleave)
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(d).expand(B, d, d), atol=1e-6, rtol=0)
    c, s = torch.tensor([[0.6]]), torch.tensor([[0.8]])
    out = torch.tensor([[2.0, 1.0]]) @ rope_matrix(c, s, interleave)[0]
    torch.testing.assert_close(out, torch.tensor([[2 * 0.6 - 0.8, 1 * 0.6 + 2 * 0.8]]), atol=1e-6, rtol=0)


@pytest.mark.skipif(not decode_mod._HAS_MKL_LINEAR, reason="torch built without MKL (no packed output head)")
def test_mkl_packed_head():
    """The head is packed once a batch size lasts; packed and re-packed logits still equal the module path."""
    m = build()
    ref = copy.deepcopy(m)  # decoded through forward, the reference path
    n = decode_mod._REPACK_AFTER
    ids, mask = padded_batch()
    toks = decode_tokens(3, 2 * n + 3, seed=7)
    with torch.no_grad():
        cf = m(ids, attention_mask=mask, use_cache=True).past_key_values
        cr = ref(ids, attention_mask=mask, use_cache=True).past_key_values
        t = 0

        def step():
            nonlocal t
            tok = toks[t, : cf.batch_size, None]
            t += 1
            a = decode_step(m, tok, past_key_values=cf).logits
            b = ref(tok, past_key_values=cr, use_cache=True).logits
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
            return m.decode_snapshot

        for i in range(n + 1):
            dec = step()
            assert (dec._packed is None) if i < n - 1 else (dec._packed[0] == 3)
        packed_head = dec._packed[1]
        rows = torch.tensor([2, 0])
        cf.select(rows)
        cr.select(rows)
        for i in range(n + 1):
            assert step() is dec
            if i < n - 1:  # the old packing is kept (and not used) until the new size has lasted
                assert dec._packed[0] == 3 and dec._packed[1] is packed_head
            else:
                assert dec._packed[0] == 2
        h = torch.randn(2, 1, m.config.hidden_size)
        torch.testing.assert_close(dec.logits(h), m.lm_head(h), atol=ATOL, rtol=0)


A_PROMPTS = [[4, 8, 15, 16, 23, 42], [3, 1, 4]]
B_PROMPTS = [[2, 7], [1, 8, 2, 8]]


def test_cache_merge_trim_and_decode():
    """merge right-aligns rows and masks the padding; trim_left drops columns; decoding the merged cache is exact."""
    m = build()
    c = m.config

    def prefill(prompts):
        with torch.no_grad():
            return m(*left_pad(prompts), use_cache=True).past_key_values

    def step(cache, tokens):
        mask = torch.cat([cache.mask[:, : cache.length], torch.ones(cache.batch_size, 1, dtype=torch.bool)], 1)
        with torch.no_grad():  # as the server runner does: explicit positions from n_real
            out = decode_step(m, torch.tensor(tokens)[:, None], attention_mask=mask.long(),
                              position_ids=cache.n_real[:, None], past_key_values=cache)
        return out.logits[:, 0]

    def scenario(fast):
        """a decodes 2 steps, b joins (merge), 1 step, a's first row leaves (select + trim), 2 steps."""
        m.use_fast_decode = fast
        a = prefill(A_PROMPTS)
        step(a, [5, 6])
        step(a, [7, 8])  # a: 8 columns, b: 4
        b = prefill(B_PROMPTS)
        merged = MLACache.merge(a, b, headroom=3)
        out = [step(merged, [9, 10, 11, 12])]
        merged.select(torch.tensor([1, 2, 3]))
        used = merged.mask[:, : merged.length].any(0)
        merged.trim_left(int(used.long().argmax()))
        out += [step(merged, [13, 14, 15]), step(merged, [16, 17, 18])]
        m.use_fast_decode = True
        return a, b, merged, out

    a, b, merged, fast = scenario(True)
    assert merged.length == 8  # 8 merged + 1 step - 3 trimmed + 2 steps
    new = MLACache.merge(a, b, headroom=3)  # what the scenario merged (a, b are not changed by it)
    assert new.length == 8 and new.capacity == 11 and new.batch_size == 4
    assert torch.equal(new.n_real, torch.cat([a.n_real, b.n_real])) and new.n_real.tolist() == [8, 5, 2, 4]
    assert torch.equal(new.mask[:2, :8], a.mask[:, :8])
    assert not new.mask[2:, :4].any() and torch.equal(new.mask[2:, 4:8], b.mask[:, :4])
    assert not new.mask[:, 8:].any()
    for layer in range(c.num_hidden_layers):
        kv = new.kv[layer]
        assert kv.shape == (4, 11, c.kv_lora_rank + c.qk_rope_head_dim)
        assert torch.equal(kv[:2, :8], a.kv[layer][:, :8])
        assert torch.equal(kv[2:, 4:8], b.kv[layer][:, :4]) and not kv[2:, :4].any()
        assert b.kv[layer][:, :4].abs().sum() > 0
        assert torch.equal(new.latent[layer], kv[..., : c.kv_lora_rank])
        assert torch.equal(new.k_rope[layer], kv[..., c.kv_lora_rank:])
    # without a's full row, the first 3 columns are unused by everyone: trim_left drops exactly them
    new.select(torch.tensor([1, 2, 3]))
    k = int(new.mask[:, : new.length].any(0).long().argmax())
    assert k == 3
    kv_before, mask_before, real_before = [t.clone() for t in new.kv], new.mask.clone(), new.n_real.clone()
    new.trim_left(k)
    assert new.length == 5 and new.capacity == 8
    assert torch.equal(new.mask, mask_before[:, k:]) and torch.equal(new.n_real, real_before)
    for t_new, t_old in zip(new.kv, kv_before):
        assert torch.equal(t_new, t_old[:, k:])
    # decoding a merged (then trimmed) cache: fast path == module path
    slow = scenario(False)[3]
    for lf, ls in zip(fast, slow):
        torch.testing.assert_close(lf, ls, atol=ATOL, rtol=0)
    # and a row that joined decodes as it does alone (b's first row: index 2, then 1 after the select)
    alone = prefill(B_PROMPTS[:1])
    for t, (tok, j) in enumerate([(11, 2), (14, 1), (17, 1)]):
        torch.testing.assert_close(step(alone, [tok])[0], fast[t][j], atol=ATOL, rtol=0)


def moe_and_routing(seed=0):
    torch.manual_seed(seed)
    moe = MoE(config(n_routed_experts=8, num_experts_per_tok=2))
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0.0, 0.1)
    g = torch.Generator().manual_seed(seed)
    N, K, used = 37, 2, torch.tensor([0, 2, 3, 6])  # experts 1, 4, 5 and 7 (the last) get no tokens
    idx = torch.stack([used[torch.randperm(4, generator=g)[:K]] for _ in range(N)])
    w = torch.rand(N, K, generator=g)
    x = torch.randn(N, 64, generator=g)
    return moe, x, idx, w


def test_moe_grouped_mm_equals_reference(monkeypatch):
    """MoE.routed (grouped_mm under no_grad, the loop with grad) equals the per-expert reference, grads too.
    The C kernel, which would take these float32 calls first, is off here (tests/test_cpu_kernels.py)."""
    monkeypatch.setattr(cpu_kernels, "routed_experts_ok", lambda *a: False)
    moe, x, idx, w = moe_and_routing()
    assert torch.bincount(idx.reshape(-1), minlength=8)[[1, 4, 5, 7]].tolist() == [0, 0, 0, 0]
    calls = []
    grouped = moe.experts.grouped
    monkeypatch.setattr(moe.experts, "grouped", lambda *a: calls.append(1) or grouped(*a))
    with torch.no_grad():
        assert moe.experts.grouped_mm_ok(x)
        ref = moe.routed_reference(x, idx, w)
        torch.testing.assert_close(moe.routed(x, idx, w), ref, atol=1e-6, rtol=0)
        one = torch.full_like(idx, 3)[:, :1]  # every token to one expert, top-1
        torch.testing.assert_close(moe.routed(x, one, w[:, :1]), moe.routed_reference(x, one, w[:, :1]),
                                   atol=1e-6, rtol=0)
        assert moe.routed(x[:0], idx[:0], w[:0]).shape == (0, 64)
    assert len(calls) == 2
    assert ref.abs().max() > 1e-2
    # with gradient: grouped_mm is not allowed (weights need grad); the loop gives the same values and grads
    xg = x.clone().requires_grad_()
    assert not moe.experts.grouped_mm_ok(xg) and not moe.experts.grouped_mm_ok(x)
    out = moe.routed(xg, idx, w)
    assert len(calls) == 2
    torch.testing.assert_close(out.detach(), ref, atol=1e-6, rtol=0)
    gx, gw = torch.autograd.grad(out.square().sum(), [xg, moe.experts.w_gate_up])
    xr = x.clone().requires_grad_()
    gx_ref, gw_ref = torch.autograd.grad(moe.routed_reference(xr, idx, w).square().sum(), [xr, moe.experts.w_gate_up])
    torch.testing.assert_close(gx, gx_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(gw, gw_ref, atol=1e-6, rtol=0)
    assert not gw[[1, 4, 5, 7]].any()
    # gradient mode on but nothing requires grad: grouped_mm is fine
    moe.requires_grad_(False)
    assert moe.experts.grouped_mm_ok(x)


def test_greedy_generation_fast_equals_module():
    """Greedy generate gives the same tokens with and without the fast path (``use_fast_decode``);
    batched equals one by one."""
    m = build()
    with torch.no_grad():
        m.lm_head.weight.mul_(50)  # clear margins: greedy choices are not decided by float noise
    prompts = [[3, 7, 11, 2], [5], [9, 9, 1, 4, 4, 8, 2], [12, 13]]
    params = SamplingParams(max_new_tokens=10, temperature=0)
    fast = generate(m, prompts, params, pad_token_id=0)
    dec = m.decode_snapshot
    assert isinstance(dec, FastDecoder)
    m.use_fast_decode = False
    slow = generate(m, prompts, params, pad_token_id=0)
    m.use_fast_decode = True
    for f, s in zip(fast, slow):
        assert f.token_ids == s.token_ids and len(f.token_ids) == 10
        assert f.logprobs == pytest.approx(s.logprobs, abs=1e-4)
    assert len({tuple(c.token_ids) for c in fast}) > 1
    for p, c in zip(prompts, fast):
        assert generate(m, [p], params, pad_token_id=0)[0].token_ids == c.token_ids
    # rows finishing early (the batch and cache shrink mid-generation)
    stop = fast[0].token_ids[2]
    sp = SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=[stop])
    f_stop = generate(m, prompts, sp, pad_token_id=0)
    m.use_fast_decode = False
    s_stop = generate(m, prompts, sp, pad_token_id=0)
    m.use_fast_decode = True
    assert [c.token_ids for c in f_stop] == [c.token_ids for c in s_stop]
    first = fast[0].token_ids
    assert f_stop[0].finish_reason == "stop" and f_stop[0].token_ids == first[: first.index(stop) + 1]


# ------------------------------------------------------------------------------------------------
# The snapshot's validity checks (FastDecoder.supports / is_current) against changes that leave
# version counters alone, hooks and replaced modules anywhere in the tree.

def snapshot(m):
    """Decode once with the fast path, so that a FastDecoder snapshot is held."""
    run(m, True, *padded_batch(), decode_tokens(3, 1))
    assert isinstance(m.decode_snapshot, FastDecoder)


def fast_vs_module(m):
    ids, mask = padded_batch()
    tokens = decode_tokens(3, 2)
    fast = run(m, True, ids, mask, tokens, expect_decoder="any")
    assert_same_steps(fast, run(m, False, ids, mask, tokens))


def _fused_adamw(m):
    m.train()
    m(torch.randint(0, V, (2, 6))).logits.logsumexp(-1).mean().backward()
    try:
        torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True).step()
    except RuntimeError as e:  # a torch without a fused CPU AdamW
        pytest.skip(f"fused AdamW unavailable: {e}")
    m.eval()


@torch.no_grad()
def _data_inplace(m):
    m.model.layers[0].self_attn.o_proj.weight.data.mul_(2)


@torch.no_grad()
def _parameter_replaced(m):
    m.model.layers[0].self_attn.o_proj.weight = nn.Parameter(m.model.layers[0].self_attn.o_proj.weight.detach() * 2)


@torch.no_grad()
def _load_assign(m):
    m.load_state_dict({k: v * 1.5 for k, v in m.state_dict().items()}, assign=True)


@pytest.mark.parametrize("change", [_fused_adamw, _parameter_replaced, _load_assign],
                         ids=["fused_adamw_step", "parameter_replaced", "load_state_dict_assign"])
def test_param_change_without_version_bump_rebuilds(change):
    """Weight changes that bypass the version counter (a fused optimizer step) or swap the Parameter rebuild the snapshot."""
    m = build()
    snapshot(m)
    change(m)
    fast_vs_module(m)


def test_data_edit_needs_reset():
    """A ``.data`` edit leaves no trace (a documented limit); ``reset_fast_decoder()`` makes the next step see it."""
    m = build()
    snapshot(m)
    _data_inplace(m)
    with pytest.raises(AssertionError):
        fast_vs_module(m)
    m.reset_fast_decoder()
    fast_vs_module(m)


def test_lm_head_hook_after_snapshot():
    """A hook put on lm_head after the snapshot was built should switch to the module path."""
    m = build()
    snapshot(m)
    m.lm_head.register_forward_hook(lambda mod, i, o: o + 1.0)
    fast_vs_module(m)


@pytest.mark.parametrize("where", ["decoder_layer", "self_attn", "moe", "final_norm"])
def test_hooks_on_other_modules(where):
    """A forward hook on a decoder layer, attention, MoE or norm module should be honoured (module path)."""
    m = build()
    mod = {"decoder_layer": m.model.layers[0], "self_attn": m.model.layers[0].self_attn,
           "moe": m.model.layers[1].mlp, "final_norm": m.model.norm}[where]

    def double(module, inputs, out):
        return (out[0] * 2,) + tuple(out[1:]) if isinstance(out, tuple) else out * 2

    mod.register_forward_hook(double)
    fast_vs_module(m)


@pytest.mark.parametrize("what", ["self_attn", "mlp", "decoder_layer", "input_layernorm", "embed_tokens"])
def test_replaced_submodule(what):
    """Replacing a whole non-Linear submodule after the snapshot was built should rebuild it."""
    m = build()
    snapshot(m)
    layer = m.model.layers[1]
    if what == "embed_tokens":
        new = copy.deepcopy(m.model.embed_tokens)
    elif what == "decoder_layer":
        new = copy.deepcopy(layer)
    else:
        new = copy.deepcopy(getattr(layer, what))
    with torch.no_grad():
        for p in new.parameters():
            p.mul_(1.5)
    if what == "embed_tokens":
        m.model.embed_tokens = new
    elif what == "decoder_layer":
        m.model.layers[1] = new
    else:
        setattr(layer, what, new)
    fast_vs_module(m)


def test_float64_moe_inference():
    """A float64 MoE runs at inference (no_grad) as it does with gradient."""
    moe, x, idx, w = moe_and_routing()
    moe.double()
    with torch.no_grad():
        torch.testing.assert_close(moe.routed(x.double(), idx, w), moe.routed_reference(x.double(), idx, w))


@pytest.mark.parametrize("kw", [dict(moe_intermediate_size=30), dict(moe_intermediate_size=7)],
                         ids=["expert_width_30", "expert_width_7"])
def test_sizes_grouped_mm_cannot_take_fall_back_to_the_loop(kw, monkeypatch):
    """Expert widths that break grouped_mm's 16-byte row-stride rule decode (fast = module) through the per-expert loop."""
    m = build(**kw)
    moe = m.moe_layers()[0]
    with torch.no_grad():
        assert not moe.experts.grouped_mm_ok(torch.zeros(2, m.config.hidden_size))
    calls = []
    monkeypatch.setattr(type(moe.experts), "grouped", lambda self, *a: calls.append(1))
    fast_vs_module(m)
    assert calls == []
