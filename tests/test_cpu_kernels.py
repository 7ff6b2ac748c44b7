"""The C routed-experts kernel (nanoseek.model.cpu_kernels): equal to the per-expert reference over
shapes, used by MoE.routed only where it applies, built once into the cache, and off cleanly."""

import pytest
import torch

from nanoseek.model import ModelConfig, cpu_kernels
from nanoseek.model.moe import MoE

pytestmark = pytest.mark.skipif(cpu_kernels.library() is None, reason="no C compiler: the kernel is off")


def make_moe(E=8, D=64, inter=32, K=2, seed=0, act="silu"):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=50, hidden_size=D, intermediate_size=4 * D, moe_intermediate_size=inter,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=None,
                      kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=E,
                      num_experts_per_tok=K, n_shared_experts=0, n_group=1, topk_group=1, hidden_act=act)
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0.0, 0.1)
    return moe


def routing(moe, N, seed=0, skip=()):
    """Random top-K routing of N tokens over the experts not in ``skip`` (distinct experts per token)."""
    g = torch.Generator().manual_seed(seed)
    E, K = moe.n_experts, moe.top_k
    allowed = torch.tensor([e for e in range(E) if e not in skip])
    idx = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:K]] for _ in range(N)])
    return idx, torch.rand(N, K, generator=g), torch.randn(N, moe.experts.w_gate_up.shape[1], generator=g)


@pytest.mark.parametrize("E,D,inter,K,N", [
    (8, 64, 32, 2, 1),        # one token
    (8, 64, 32, 2, 37),       # several tokens per expert
    (64, 512, 128, 6, 16),    # the benchmark's layer at a decode step
    (16, 272, 160, 4, 9),     # D and 2I not multiples of the 256-column chunk
    (4, 16, 16, 4, 60),       # every expert on every token, many rows
    (4, 16, 16, 4, 300),      # past ROWS_PER_EXPERT
    (32, 48, 48, 8, 5),
])
def test_kernel_equals_reference(E, D, inter, K, N):
    moe = make_moe(E, D, inter, K)
    idx, w, x = routing(moe, N, skip=(1,) if E > K + 1 else ())
    ex = moe.experts
    with torch.no_grad():
        # MoE.routed leaves many rows per expert to grouped_mm; the kernel itself takes any number
        assert cpu_kernels.routed_experts_ok(x, idx, ex.w_gate_up, ex.w_down, ex.act) == (
            N * K <= cpu_kernels.ROWS_PER_EXPERT * E)
        ref = moe.routed_reference(x, idx, w)
        got = cpu_kernels.routed_experts(x, idx, w, ex.w_gate_up, ex.w_down)
    scale = ref.abs().max()
    assert scale > 1e-2
    torch.testing.assert_close(got, ref, atol=1e-6 * scale, rtol=0)  # float32 rounding of the sums


def test_kernel_same_result_on_one_thread():
    moe = make_moe(64, 512, 128, 6)
    idx, w, x = routing(moe, 16)
    ex = moe.experts
    before = torch.get_num_threads()
    with torch.no_grad():
        two = cpu_kernels.routed_experts(x, idx, w, ex.w_gate_up, ex.w_down)
        torch.set_num_threads(1)
        try:
            one = cpu_kernels.routed_experts(x, idx, w, ex.w_gate_up, ex.w_down)
        finally:
            torch.set_num_threads(before)
    assert torch.equal(one, two)  # each output is computed by one thread in a fixed order


def test_moe_routed_uses_the_kernel_only_at_inference_in_float32(monkeypatch):
    moe = make_moe()
    idx, w, x = routing(moe, 12)
    calls = []
    real = cpu_kernels.routed_experts
    monkeypatch.setattr(cpu_kernels, "routed_experts", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        ref = moe.routed_reference(x, idx, w)
        torch.testing.assert_close(moe.routed(x, idx, w), ref, atol=2e-6, rtol=1e-5)
        assert calls == [1]
        moe.double()  # float64: the torch path
        torch.testing.assert_close(moe.routed(x.double(), idx, w), ref.double(), atol=2e-6, rtol=1e-5)
        assert calls == [1]
        moe.float()
    out = moe.routed(x, idx, w)  # gradient wanted: the torch path, whose backward is tested elsewhere
    assert calls == [1] and out.requires_grad
    torch.testing.assert_close(out.detach(), ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(inter=24), dict(D=40), dict(act="gelu")], ids=["width_24", "hidden_40", "gelu"])
def test_shapes_and_activations_it_does_not_take(kw):
    moe = make_moe(**kw)
    idx, w, x = routing(moe, 4)
    ex = moe.experts
    with torch.no_grad():
        assert not cpu_kernels.routed_experts_ok(x, idx, ex.w_gate_up, ex.w_down, ex.act)
        torch.testing.assert_close(moe.routed(x, idx, w), moe.routed_reference(x, idx, w), atol=2e-6, rtol=1e-5)


def test_bad_expert_index_raises():
    moe = make_moe()
    idx, w, x = routing(moe, 3)
    idx[1, 0] = moe.n_experts
    with torch.no_grad(), pytest.raises(ValueError, match=r"outside \[0, 8\)"):
        cpu_kernels.routed_experts(x, idx, w, moe.experts.w_gate_up, moe.experts.w_down)


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """``cpu_kernels.library`` with an empty cache in tmp_path; the cached result is restored after."""
    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path))
    cpu_kernels.library.cache_clear()
    yield tmp_path
    cpu_kernels.library.cache_clear()


def test_built_once_into_the_cache(fresh_library):
    lib = cpu_kernels.library()
    assert lib is not None
    built = list((fresh_library / "kernels").glob("*/decode_kernels.so"))
    assert len(built) == 1 and not list((fresh_library / "kernels").glob("*/.build-*"))
    stamp = built[0].stat().st_mtime_ns
    cpu_kernels.library.cache_clear()
    assert cpu_kernels.library() is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_off_by_environment(fresh_library, monkeypatch):
    monkeypatch.setenv("NANOSEEK_CPU_KERNELS", "0")
    assert cpu_kernels.library() is None
    moe = make_moe()
    idx, w, x = routing(moe, 4)
    with torch.no_grad():
        assert not cpu_kernels.routed_experts_ok(x, idx, moe.experts.w_gate_up, moe.experts.w_down, moe.experts.act)


def test_failed_build_warns_and_turns_the_kernel_off(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.warns(UserWarning, match="CPU decode kernels are off"):
        assert cpu_kernels.library() is None
    assert not list((fresh_library / "kernels").glob("*/*"))  # no half-written library left


# ----------------------------------------------------------------------------- MLA attention kernel
from test_decode import assert_same_steps, build, decode_tokens, padded_batch, run  # noqa: E402

from nanoseek.model.attention import RMSNorm  # noqa: E402
from nanoseek.model.decode import FastDecoder, decode_step, rope_matrix  # noqa: E402
from nanoseek.model.moe import TopkRouter  # noqa: E402

KERNEL_ATTENTION = {  # head counts and widths the kernel takes (16k heads; c, d_rope, d_v multiples of 16)
    "16_heads": dict(num_attention_heads=16, num_key_value_heads=16, qk_rope_head_dim=16, v_head_dim=16,
                     qk_nope_head_dim=8),
    "32_heads_variant": dict(num_attention_heads=32, num_key_value_heads=32, qk_rope_head_dim=16, v_head_dim=32,
                             qk_nope_head_dim=12, kv_lora_rank=48, q_lora_rank=None, attention_bias=True,
                             rope_interleave=False, max_position_embeddings=256,
                             rope_scaling={"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 64,
                                           "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}),
}


@pytest.fixture
def attention_calls(monkeypatch):
    calls = []
    real = cpu_kernels.mla_attention
    monkeypatch.setattr(cpu_kernels, "mla_attention", lambda *a: calls.append(a[5]) or real(*a))
    return calls


@pytest.mark.parametrize("overrides", list(KERNEL_ATTENTION.values()), ids=list(KERNEL_ATTENTION))
def test_attention_kernel_equals_module_path(overrides, attention_calls):
    """Fast decode steps through the C attention give the module path's logits (1e-5) over a left-padded
    batch with pad decode tokens (-inf keys) and a cache that grows past its first capacity."""
    m = build(**overrides)
    ids, mask = padded_batch()
    steps = 40
    tokens = decode_tokens(3, steps)
    new_masks = torch.ones(steps, 3, dtype=torch.long)
    new_masks[1, 1] = new_masks[2, 0] = new_masks[2, 2] = new_masks[30, 1] = 0
    fast = run(m, True, ids, mask, tokens, new_masks)
    n_layers = m.config.num_hidden_layers
    assert attention_calls[:n_layers] == [ids.shape[1] + 1] * n_layers  # keys read: the prompt + the new token
    assert len(attention_calls) == steps * n_layers
    slow = run(m, False, ids, mask, tokens, new_masks)
    assert_same_steps(fast, slow)


def test_attention_kernel_equals_torch_attention_long_cache(attention_calls):
    """The kernel against FastDecoder's own torch attention on the same step, at 300 cached keys."""
    m = build(**KERNEL_ATTENTION["16_heads"])
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 60, (4, 300), generator=g)
    mask = torch.ones(4, 300, dtype=torch.long)
    mask[1, :17] = 0  # a left-padded row
    with torch.no_grad():
        out = m(ids, attention_mask=mask, use_cache=True)
        dec = FastDecoder(m)
        cache = out.past_key_values
        cache.reserve(1)
        L = dec.layers[0]
        assert L.c_kernel
        x = torch.randn(4, m.config.hidden_size, generator=g)
        cos, sin = dec.rotary(torch.full((4, 1), 300))
        rot = rope_matrix(cos[:, 0], sin[:, 0], m.config.rope_interleave)
        bias = torch.zeros(4, 1, 301)
        bias[:, 0, :300].masked_fill_(~cache.mask[:, :300], float("-inf"))
        got = dec._attention(L, x, rot, bias, cache)
        L.c_kernel = False
        ref = dec._attention(L, x, rot, bias, cache)
    assert attention_calls == [301]
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_attention_kernel_not_used_where_it_does_not_apply(attention_calls):
    """4 heads (the default tiny config) and float64: the torch attention."""
    m = build()
    assert not any(L.c_kernel for L in FastDecoder(m).layers)
    m16 = build(**KERNEL_ATTENTION["16_heads"]).double()
    assert not any(L.c_kernel for L in FastDecoder(m16).layers)
    ids, mask = padded_batch()
    run(m, True, ids, mask, decode_tokens(3, 2))
    assert attention_calls == []


def test_rms_norm_kernel_equals_module():
    """cpu_kernels.rms_norm equals RMSNorm.forward, on contiguous and on strided rows."""
    g = torch.Generator().manual_seed(5)
    norm = RMSNorm(144, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(144, generator=g))
        x = 3 * torch.randn(7, 400, generator=g)
        for rows in (x[:, :144].contiguous(), x[:, 100:244]):  # the second: rows 400 floats apart
            torch.testing.assert_close(cpu_kernels.rms_norm(rows, norm.weight, norm.eps), norm(rows),
                                       atol=1e-6, rtol=1e-6)
        with pytest.raises(ValueError, match="rms_norm: x"):
            cpu_kernels.rms_norm(x, norm.weight, norm.eps)  # 400 columns, 144 weights


def test_routed_experts_rejects_mismatched_shapes():
    moe = make_moe()
    idx, w, x = routing(moe, 6)
    ex = moe.experts
    with torch.no_grad():
        for bad_x, bad_w in ((x[:2], w), (x[:, :32], w), (x, w[:, :1])):
            with pytest.raises(ValueError, match="shapes do not match"):
                cpu_kernels.routed_experts(bad_x, idx, bad_w, ex.w_gate_up, ex.w_down)


def test_reference_adds_an_expert_picked_twice():
    """routed_reference (and routed) give both terms to a token that picks one expert twice."""
    moe = make_moe()
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    idx, w = torch.tensor([[3, 3], [1, 3]]), torch.tensor([[0.5, 0.25], [0.6, 0.4]])
    with torch.no_grad():
        f = lambda e, row: moe.experts.expert(e, x[row: row + 1])[0]  # noqa: E731
        want = torch.stack([0.75 * f(3, 0), 0.6 * f(1, 1) + 0.4 * f(3, 1)])
        torch.testing.assert_close(moe.routed_reference(x, idx, w), want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(moe.routed(x, idx, w), want, atol=1e-6, rtol=1e-5)


def test_attention_kernel_takes_a_trimmed_cache(attention_calls):
    """After MLACache.trim_left (the server's continuous batching) the cache rows are a strided view;
    the kernel still runs on it and equals the module path."""
    m = build(**KERNEL_ATTENTION["16_heads"])
    ids, mask = padded_batch((6, 4, 3))
    ids = torch.cat([torch.zeros(3, 3, dtype=torch.long), ids], 1)  # 3 more pad columns for every row
    mask = torch.cat([torch.zeros(3, 3, dtype=torch.long), mask], 1)
    tokens = decode_tokens(3, 4)
    results = []
    for fast in (True, False):
        with torch.no_grad():
            cache = m(ids, attention_mask=mask, use_cache=True).past_key_values
            cache.trim_left(3)
            assert not cache.kv[0].is_contiguous()
            full, steps = mask[:, 3:], []
            for t in range(4):
                full = torch.cat([full, torch.ones(3, 1, dtype=torch.long)], 1)
                if fast:
                    out = decode_step(m, tokens[t][:, None], attention_mask=full, past_key_values=cache)
                else:
                    out = m(tokens[t][:, None], attention_mask=full, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                steps.append(out.logits[:, 0])
        results.append(torch.stack(steps))
    assert len(attention_calls) == 4 * m.config.num_hidden_layers
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)


def test_autocast_bfloat16_keeps_the_torch_attention(attention_calls):
    """Under CPU autocast decode_step runs forward: autocast picks each op's precision, and the fast
    path's fused, reordered products would round differently, which in an MoE decides near-ties
    between experts differently (the logits of a token then jump; issue 19 item 7). So autocast
    decoding gives forward's logits exactly, and the C attention kernel never sees the bfloat16 query."""
    m = build(**KERNEL_ATTENTION["16_heads"])
    ids, mask = padded_batch()
    tokens = decode_tokens(3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = run(m, True, ids, mask, tokens, expect_decoder=False)
        slow = run(m, False, ids, mask, tokens)
    assert attention_calls == []
    for (lf, ef), (ls, es) in zip(fast, slow):
        assert torch.isfinite(lf).all()
        assert torch.equal(lf, ls) and torch.equal(ef, es)
    # outside autocast the same model decodes through the fast path and the C attention again
    run(m, True, ids, mask, tokens)
    assert len(attention_calls) == 3 * m.config.num_hidden_layers
    # the fast step itself, called under autocast, still keeps the bfloat16 query away from the kernel
    attention_calls.clear()
    with torch.no_grad():
        cache = m(ids, attention_mask=mask, use_cache=True).past_key_values
        dec = FastDecoder(m)
        full = torch.cat([mask.bool(), torch.ones(3, 1, dtype=torch.bool)], 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            new_mask, pos = m.token_inputs(tokens[0][:, None], full, None, cache)
            h, _ = dec.forward(tokens[0][:, None], new_mask, pos, cache)
    assert attention_calls == [] and torch.isfinite(dec.logits(h)).all()


def test_router_gates_in_float32_under_autocast():
    """The router's affinities stay float32 under bfloat16 autocast (V3 §3.3: gating in high
    precision; TopkRouter's contract), equal to the float32 computation without autocast."""
    m = build(**KERNEL_ATTENTION["16_heads"])
    gate = m.moe_layers()[0].gate
    assert isinstance(gate, TopkRouter)
    x = torch.randn(12, m.config.hidden_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want, want_idx, want_w = gate(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, idx, w = gate(x)
    assert got.dtype == torch.float32 and w.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(idx, want_idx) and torch.equal(w, want_w)


@pytest.mark.parametrize("value", ["false", "OFF", "no"])
def test_off_by_environment_words(fresh_library, monkeypatch, value):
    monkeypatch.setenv("NANOSEEK_CPU_KERNELS", value)
    assert cpu_kernels.library() is None


def test_compiler_with_arguments_and_damaged_library(fresh_library, monkeypatch):
    """``$CC`` may carry arguments; a damaged cached library is rebuilt; the library is readable by all."""
    import os
    import shutil
    import stat

    cc = shutil.which("cc") or shutil.which("gcc")
    monkeypatch.setenv("CC", f"{cc} -g0")
    path = cpu_kernels.library_path([cc, "-g0"])
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a library")  # e.g. a copy cut short (never overwrite a loaded one: SIGBUS)
    assert cpu_kernels.library() is not None
    assert list((fresh_library / "kernels").glob("*/decode_kernels.so")) == [path] and path.stat().st_size > 1000
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755 & ~umask
