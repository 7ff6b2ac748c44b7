"""The fast paths for Llama-family transformers policies against the plain ones:
shared-prompt scoring (``nanoseek.model.hf_fast``) and static-cache sampling
(``nanoseek.policy.generate_static``)."""

import pytest
import torch

from nanoseek.policy.generate import SamplingParams, generate
from nanoseek.policy.generate_static import generate_static
from nanoseek.model.hf import TransformersLM
from nanoseek.model.hf_fast import FastLM, supports
from nanoseek.policy.policy import build_batch
from nanoseek.rl import token_logprobs
from test_trainer_helpers import native_model, qwen_model

torch.set_num_threads(1)


def _llama(kind: str):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1)
    if kind == "qwen3":
        cfg, cls = transformers.Qwen3Config(head_dim=8, **common), transformers.Qwen3ForCausalLM
    else:
        cfg, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    return TransformersLM(cls(cfg)).eval()


MODELS = {"qwen2": lambda: qwen_model(layers=2), "qwen3": lambda: _llama("qwen3"), "llama": lambda: _llama("llama")}
PROMPTS = [[5, 9, 33, 40, 41], [7, 8], [5, 9, 33, 40, 41], [20, 21, 22]]
COMPS = [[50, 51, 52], [60, 61, 62, 63, 64, 65], [0, 70], [80]]


def test_supports():
    assert all(supports(make()) for make in MODELS.values())
    assert not supports(native_model())


@pytest.mark.parametrize("name", list(MODELS))
def test_shared_prompt_logprobs_and_grads_equal_the_plain_forward(name):
    model = MODELS[name]()
    batch = build_batch(PROMPTS, COMPS, 0)
    plain = token_logprobs(model(batch.input_ids, attention_mask=batch.attention_mask).logits[:, batch.prompt_len - 1:-1],
                           batch.completion_ids)
    uniq = [PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    P = max(map(len, uniq))
    pids = torch.tensor([[0] * (P - len(p)) + p for p in uniq])
    pmask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in uniq])
    group = torch.tensor([0, 1, 0, 2])
    fast = token_logprobs(FastLM(model).completion_logits(pids, pmask, group, batch.completion_ids), batch.completion_ids)
    mask = batch.completion_mask
    torch.testing.assert_close(fast[mask], plain[mask], atol=1e-5, rtol=0)
    w = torch.randn(mask.shape)
    g_plain = torch.autograd.grad((plain * w * mask).sum(), list(model.parameters()))
    g_fast = torch.autograd.grad((fast * w * mask).sum(), list(model.parameters()))
    for a, b in zip(g_plain, g_fast):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_static_greedy_equals_plain_generate(name):
    model = MODELS[name]()
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=[1])
    a = generate_static(model, PROMPTS, params, 0)
    b = generate(model, PROMPTS, params, 0)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5, rtol=0)


def test_static_sampling_rows_do_not_depend_on_the_batch():
    model = _llama("llama")
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, stop_token_ids=[1, 2, 3])
    seeds = [11, 12, 13, 14]
    together = generate_static(model, PROMPTS, params, 0, seeds=seeds)
    assert len({len(c.token_ids) for c in together}) > 1  # some rows stop early (exercises compaction)
    for i in range(len(PROMPTS)):
        alone = generate_static(model, [PROMPTS[i]], params, 0, seeds=[seeds[i]])[0]
        assert alone.token_ids == together[i].token_ids and alone.finish_reason == together[i].finish_reason
    again = generate_static(model, PROMPTS, params, 0, seeds=seeds)
    assert [c.token_ids for c in again] == [c.token_ids for c in together]


def test_static_suppress_and_stop_check():
    model = _llama("llama")
    params = SamplingParams(max_new_tokens=10, temperature=1.0, stop_token_ids=list(range(0, 97, 2)))
    out = generate_static(model, PROMPTS, params, 0, seeds=[1, 2, 3, 4], suppress_token_ids=list(range(0, 97, 2)))
    assert all(len(c.token_ids) == 10 and c.finish_reason == "length" for c in out)
    assert all(t % 2 for c in out for t in c.token_ids)
    cut = generate_static(model, PROMPTS, SamplingParams(max_new_tokens=10), 0, seeds=[1, 2, 3, 4],
                          stop_check=lambda row, ids: len(ids) == row + 1)
    assert [len(c.token_ids) for c in cut] == [1, 2, 3, 4] and all(c.finish_reason == "stop" for c in cut)
