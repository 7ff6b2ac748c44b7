"""Batched KV-cache generation: equals no-cache greedy, batch-independent, stops correctly."""

import pytest
import torch

from nanoseek.policy.generate import Completion, SamplingParams, generate, stream_generate
from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig

V = 61


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=V, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                           num_hidden_layers=2, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
                           qk_nope_head_dim=16, v_head_dim=16, initializer_range=0.1)
    m = DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(20)  # clear logit margins: greedy paths are not decided by float noise
    return m


PROMPTS = [[3, 7, 11, 2], [5], [9, 9, 1, 4, 4, 8, 2]]


def greedy_no_cache(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_cache_equals_no_cache(model):
    params = SamplingParams(max_new_tokens=8, temperature=0)
    outs = generate(model, PROMPTS, params, pad_token_id=0)
    for p, c in zip(PROMPTS, outs):
        assert c.token_ids == greedy_no_cache(model, p, 8)
        assert c.finish_reason == "length" and len(c.logprobs) == 8


def test_batched_equals_one_by_one_greedy_and_sampled(model):
    for params in (SamplingParams(max_new_tokens=10, temperature=0),
                   SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=20)):
        seeds = [11, 22, 33]
        batched = generate(model, PROMPTS, params, pad_token_id=0, seeds=seeds)
        for p, s, c in zip(PROMPTS, seeds, batched):
            single = generate(model, [p], params, pad_token_id=0, seeds=[s])[0]
            assert single.token_ids == c.token_ids
            assert single.logprobs == pytest.approx(c.logprobs, abs=1e-4)
        # a row's sample does not depend on what else is in the batch (order, neighbours)
        swapped = generate(model, [PROMPTS[2], [1, 2, 3, 4, 5, 6, 7, 8, 9], PROMPTS[0]], params, 0, seeds=[33, 5, 11])
        assert swapped[0].token_ids == batched[2].token_ids and swapped[2].token_ids == batched[0].token_ids


def test_seed_reproducible_and_varies(model):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=123)
    a = generate(model, PROMPTS, params, 0)
    b = generate(model, PROMPTS, params, 0)
    c = generate(model, PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, seed=124), 0)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_stop_tokens_and_logprobs(model):
    base = generate(model, PROMPTS, SamplingParams(max_new_tokens=8, temperature=0), 0)
    stop = base[0].token_ids[2]
    outs = generate(model, PROMPTS, SamplingParams(max_new_tokens=8, temperature=0, stop_token_ids=[stop]), 0)
    first = outs[0]
    assert first.finish_reason == "stop" and first.token_ids == base[0].token_ids[: base[0].token_ids.index(stop) + 1]
    for b, o in zip(base, outs):  # rows stop at their first stop token, others run to the length limit
        if stop in b.token_ids:
            assert o.token_ids == b.token_ids[: b.token_ids.index(stop) + 1] and o.finish_reason == "stop"
        else:
            assert o.token_ids == b.token_ids and o.finish_reason == "length"
    # logprobs are log softmax of the raw (temperature 1) logits at each sampled token
    p = PROMPTS[0]
    with torch.no_grad():
        lp = model(torch.tensor([p + base[0].token_ids])).logits[0].log_softmax(-1)
    want = [float(lp[len(p) - 1 + i, t]) for i, t in enumerate(base[0].token_ids)]
    assert base[0].logprobs == pytest.approx(want, abs=1e-4)


def test_stops_early_when_all_done(model):
    base = generate(model, [PROMPTS[0]], SamplingParams(max_new_tokens=3, temperature=0), 0)[0]
    steps = list(stream_generate(model, [PROMPTS[0]], SamplingParams(max_new_tokens=50, temperature=0,
                                                                         stop_token_ids=[base.token_ids[0]]), 0))
    assert len(steps) == 1 and steps[0][0].finish_reason == "stop"


def test_streaming_and_callback(model):
    params = SamplingParams(max_new_tokens=5, temperature=0.7, seed=1)
    seen = []
    outs = generate(model, PROMPTS, params, 0, on_token=seen.append)
    streamed = {i: [] for i in range(3)}
    for events in stream_generate(model, PROMPTS, params, 0):
        for ev in events:
            streamed[ev.row].append(ev.token_id)
    assert [streamed[i] for i in range(3)] == [c.token_ids for c in outs]
    assert len(seen) == sum(len(c.token_ids) for c in outs)
    assert generate(model, PROMPTS, SamplingParams(max_new_tokens=0), 0) == [Completion([], "length", [])] * 3


def set_impl(model, impl):
    for layer in model.model.layers:
        layer.self_attn.attn_impl = impl


def test_absorbed_and_naive_decoding_agree(model):
    params = SamplingParams(max_new_tokens=12, temperature=0)
    try:
        set_impl(model, "naive")
        naive = generate(model, PROMPTS, params, 0)
        set_impl(model, "absorb")
        absorbed = generate(model, PROMPTS, params, 0)
    finally:
        set_impl(model, "auto")
    for a, b in zip(naive, absorbed):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_num_threads_is_scoped(model):
    params = SamplingParams(max_new_tokens=6, temperature=0.8, seed=3)
    before = torch.get_num_threads()
    a = generate(model, PROMPTS, params, 0)
    b = generate(model, PROMPTS, params, 0, num_threads=1)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert torch.get_num_threads() == before
    it = stream_generate(model, PROMPTS, params, 0, num_threads=1)
    next(it)
    assert torch.get_num_threads() == before  # restored while the generator is suspended
