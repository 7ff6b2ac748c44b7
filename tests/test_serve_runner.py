"""Continuous batching is exact: rows that join a running batch (left-padded merge), leave it
(select + left trim) or share a prefill (n choices) get the same logits as when run alone — for
nanoseek's latent MLACache and for a transformers DynamicCache."""

import pytest
import torch

from nanoseek.policy.generate import SamplingParams, generate
from nanoseek.serve.runner import ModelRunner

torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models decode fastest on one thread (and the shared 2-core CI box thrashes with two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def nanoseek_model():
    from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig

    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(ModelConfig.tiny(vocab_size=50, hidden_size=64, num_hidden_layers=2,
                                                  num_nextn_predict_layers=0)).eval()


def llama_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    from nanoseek.model.hf import TransformersLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return TransformersLM(LlamaForCausalLM(cfg)).eval()


def solo_greedy(runner, prompt, steps):
    state, logits = runner.prefill([prompt])
    out = []
    for _ in range(steps):
        t = int(logits[0].argmax())
        out.append(t)
        logits = runner.decode(state, torch.tensor([t]))
    return out


@pytest.mark.parametrize("make", [nanoseek_model, llama_model], ids=["mla", "dynamic"])
def test_join_leave_and_share_match_solo(make):
    runner = ModelRunner(make(), pad_id=0)
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15], [20]]
    steps = 6
    solo = [solo_greedy(runner, p, steps) for p in prompts]

    # row 0 starts alone; row 1 joins after 2 steps, rows 2+2 (n=2 of one prompt) after 3; row 3 after 4
    joins = {0: [0], 2: [1], 3: [2, 2], 4: [3]}
    state, rows, outs, tok = None, [], {}, []
    for t in range(steps + 4):
        if t in joins:
            group = joins[t]
            uniq = sorted(set(group))
            st, lg = runner.prefill([prompts[i] for i in uniq])
            expand = [uniq.index(i) for i in group]
            st = runner.select(st, expand)
            lg = lg[expand]
            new_tok = [int(x) for x in lg.argmax(-1)]
            keys = [(i, k) for k, i in enumerate(group)]
            for key, x in zip(keys, new_tok):
                outs[key] = [x]
            state = st if state is None else runner.merge(state, st)
            rows += keys
            tok += new_tok
        # drop rows that are done (exercises select + left trim)
        keep = [j for j, key in enumerate(rows) if len(outs[key]) < steps]
        if len(keep) < len(rows):
            rows, tok = [rows[j] for j in keep], [tok[j] for j in keep]
            state = runner.select(state, keep) if keep else None
        if not rows:
            continue
        logits = runner.decode(state, torch.tensor(tok))
        tok = [int(x) for x in logits.argmax(-1)]
        for key, x in zip(rows, tok):
            outs[key].append(x)
    for (i, _), out in outs.items():
        assert out[:steps] == solo[i], (i, out, solo[i])


def test_matches_reference_generation():
    """The serving runner and ``nanoseek.policy.generate`` produce the same greedy tokens."""
    model = nanoseek_model()
    runner = ModelRunner(model, pad_id=0)
    prompts = [[3, 4, 5, 6, 7], [8, 9]]
    ref = generate(model, prompts, SamplingParams(max_new_tokens=5, temperature=0.0), pad_token_id=0)
    for p, c in zip(prompts, ref):
        assert solo_greedy(runner, p, 5) == c.token_ids[:5]


def test_trim_keeps_cache_short():
    runner = ModelRunner(nanoseek_model(), pad_id=0)
    a, _ = runner.prefill([[1] * 30])
    b, _ = runner.prefill([[2, 3]])
    s = runner.merge(a, b)
    assert s.mask.shape[1] == 30 and s.cache.length == 30
    s = runner.select(s, [1])  # the long row leaves: 28 padding columns go
    assert s.mask.shape[1] == 2 and s.cache.length == 2
    runner.decode(s, torch.tensor([4]))
    assert s.cache.length == 3
