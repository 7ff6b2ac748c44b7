"""SFT data and loss: exact completion-only labels (multi-turn, pad = EOS), packing, overfitting one batch."""

import json

import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.train.sft_data import (SFTSchedule, assistant_text, chat_segments, encode_chat, encode_chats,
                               end_of_turn_id, load_chat_jsonl, pack_rows, packed_batch, pad_batch)
from nanoseek.tokenizer import build_tokenizer

CHATML = ("{% for m in messages %}<|begin|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|begin|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _chat(q="What is 1+2 mod 10?", r="1+2=3", a="<answer>3</answer>"):
    return [{"role": "user", "content": q}, {"role": "assistant", "reasoning_content": r, "content": a}]


def _masked_text(tok, ex, want):
    return tok.decode([t for t, c in zip(ex.ids, ex.completion) if c == want], skip_special_tokens=False)


def test_single_turn_completion_is_reasoning_answer_and_end(tok):
    (ex,) = encode_chat(_chat(), tok)
    assert _masked_text(tok, ex, 1) == "1+2=3</think><answer>3</answer><|end|>"
    prompt = tok.apply_chat_template(_chat()[:1], tokenize=False, add_generation_prompt=True)
    assert _masked_text(tok, ex, 0) == prompt  # the prompt is exactly what inference sees
    assert prompt.endswith("<think>")


def test_pad_equals_eos_keeps_exactly_one_eos_label_per_example(tok):
    tok = build_tokenizer()
    tok.pad_token = tok.eos_token  # the common HF case: pad id == EOS id
    eos = tok.eos_token_id
    assert tok.pad_token_id == eos
    chats = [_chat(r="1+2=3"), _chat(q="What is 9-9 mod 10?", r="9-9=0 0+0=0 0+0=0", a="<answer>0</answer>"), _chat(r="")]
    examples, _ = encode_chats(chats, tok)
    batch = pad_batch(examples, tok.pad_token_id)
    target, labelled = batch.input_ids[:, 1:], batch.loss_mask[:, 1:].bool()
    for i, ex in enumerate(examples):
        assert int(((target[i] == eos) & labelled[i]).sum()) == 1
        last = len(ex) - 1  # the real final EOS: labelled; every pad after it (same id): not
        assert batch.input_ids[i, last] == eos and batch.loss_mask[i, last] == 1
        assert batch.loss_mask[i, last + 1:].sum() == 0
    assert (batch.input_ids == eos).sum() > len(examples)  # padding really uses the EOS id


def test_multi_turn_masking_is_exact_when_history_renders_the_same(tok):
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<answer>hello</answer>"},
            {"role": "user", "content": "What is 2+2 mod 10?"},
            {"role": "assistant", "reasoning_content": "2+2=4", "content": "<answer>4</answer>"}]
    (ex,) = encode_chat(chat, tok)  # turn 1 has no reasoning, so the history renders as trained: one sequence
    full = tok.apply_chat_template(chat[:4], tokenize=False, add_generation_prompt=True)
    assert _masked_text(tok, ex, 1) == "</think><answer>hello</answer><|end|>2+2=4</think><answer>4</answer><|end|>"
    ids = tok(full, add_special_tokens=False).input_ids
    assert ex.ids[:len(ids)] == ids  # the tokens before the last completion are the template's own
    runs = [c for k, c in enumerate(ex.completion) if k == 0 or c != ex.completion[k - 1]]
    assert runs == [0, 1, 0, 1]


def test_multi_turn_splits_where_the_template_drops_earlier_reasoning(tok):
    chat = _chat() + [{"role": "user", "content": "And 2+2?"},
                      {"role": "assistant", "reasoning_content": "2+2=4", "content": "<answer>4</answer>"}]
    first, second = encode_chat(chat, tok)
    assert _masked_text(tok, first, 1) == "1+2=3</think><answer>3</answer><|end|>"
    assert _masked_text(tok, second, 1) == "2+2=4</think><answer>4</answer><|end|>"
    prompt2 = tok.apply_chat_template(chat[:3], tokenize=False, add_generation_prompt=True)
    assert _masked_text(tok, second, 0) == prompt2
    assert "1+2=3" not in prompt2  # earlier reasoning is not in the second prompt, as at inference


def test_template_without_think_prefill_opens_the_think_block(tok):
    t = build_tokenizer()
    t.chat_template = CHATML
    assert end_of_turn_id(t) == t.convert_tokens_to_ids("<|end|>")
    chat = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}, {"role": "assistant", "reasoning_content": "r2", "content": "a2"}]
    (ex,) = encode_chat(chat, t)
    assert _masked_text(t, ex, 1) == "a1<|end|><think>r2</think>a2<|end|>"
    assert _masked_text(t, ex, 0) == "<|begin|>user\nq1<|end|>\n<|begin|>assistant\n\n<|begin|>user\nq2<|end|>\n<|begin|>assistant\n"
    assert assistant_text({"content": "<think>x</think>y"}, True) == "x</think>y"


def test_packing_restarts_positions_and_keeps_masks(tok):
    examples, _ = encode_chats([_chat(), _chat(q="What is 3+3 mod 10?"), _chat(r="")], tok)
    rows = pack_rows(examples, max_length=sum(len(e) for e in examples[:2]))
    assert [len(r) for r in rows] == [2, 1]
    batch = packed_batch(rows, tok.pad_token_id)
    n0 = len(examples[0])
    assert batch.position_ids[0, 0] == 0 and batch.position_ids[0, n0] == 0 and batch.position_ids[0, n0 - 1] == n0 - 1
    assert batch.loss_mask[0, :n0 + len(examples[1])].tolist() == examples[0].completion + examples[1].completion
    sched = SFTSchedule(examples, batch_size=1, seed=0, packing=True, max_length=200)
    assert sched.steps_per_epoch == 1 and sched.batch(0, 0).position_ids is not None


def test_bad_records_are_refused_with_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"messages": _chat()}) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(NanoseekError, match=r"d.jsonl:2: no assistant turn"):
        load_chat_jsonl(p)
    p.write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(NanoseekError, match="d.jsonl:1"):
        load_chat_jsonl(p)


def test_tiny_model_overfits_a_single_batch(tok):
    from nanoseek.model.config import ModelConfig
    from nanoseek.model.transformer import DeepseekV3ForCausalLM
    from nanoseek.train.optim import make_adamw
    from nanoseek.train.sft import SFTConfig, sft_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(ModelConfig.tiny(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                                   num_nextn_predict_layers=0, q_lora_rank=32, kv_lora_rank=32))
    chats = [_chat(q=f"What is {a}+{b} mod 10?", r=f"{a}+{b}={(a + b) % 10}", a=f"<answer>{(a + b) % 10}</answer>")
             for a, b in [(1, 2), (7, 8), (4, 9), (6, 6)]]
    examples, _ = encode_chats(chats, tok)
    batch = pad_batch(examples, tok.pad_token_id)
    opt = make_adamw(model, 3e-3, SFTConfig().weight_decay)
    model.train()
    first = None
    for _ in range(80):
        loss, m = sft_loss(model, batch)
        first = first if first is not None else m["sft/loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m["sft/loss"] < 0.05 * first and m["sft/accuracy"] == 1.0, (first, m)


def test_tokenizer_without_chat_template_uses_the_plain_prompt(tok):
    from nanoseek.tokenizer import render_prompt

    t = build_tokenizer()
    t.chat_template = None
    (ex,) = encode_chat(_chat(), t)
    assert _masked_text(t, ex, 0) == render_prompt(t, _chat()[0]["content"])
    assert _masked_text(t, ex, 1) == "<think>1+2=3</think><answer>3</answer><|end|>"
