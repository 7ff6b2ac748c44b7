"""Rejection sampling: planted completions are kept or dropped by each filter exactly as planted;
planted near-copies of evaluation problems are removed by decontamination."""

import json

import pytest
import torch

from nanoseek.tasks.decontaminate import EvalIndex, build_index, ngrams, tokens
from nanoseek.recipes.rejection import (FILTERS, Candidate, RejectionSamplingConfig, chat_record, filter_candidates,
                                        mixed_language, rejection_sample, repetition_loop)

GOOD_COT = "7+3=0 0-9=1 1+2=3"


def cand(prompt="What is 7+3-9+2 mod 10?", reasoning=GOOD_COT, content="<answer>3</answer>", correct=True,
         well_formed=True, length=30, finish="stop", completion=None):
    completion = completion if completion is not None else f"{reasoning}</think>{content}"
    return Candidate(prompt, completion, reasoning, content, correct, well_formed, length, finish, id=prompt, answer="3")


def test_each_planted_candidate_is_dropped_by_exactly_its_filter():
    eval_problem = "What is 1+6+5+1-7-2+8-6 mod 10?"
    index = EvalIndex.build({"chain": [eval_problem, "What is 4-4+2+9-1 mod 10?"]}, n=8)
    cfg = RejectionSamplingConfig(max_length=40, max_per_prompt=2, max_paragraph_chars=60)
    loop = "0+0=0 " * 10
    planted = [
        ("keep", cand()),
        ("contaminated", cand(prompt="what is 1 + 6 + 5 + 1 - 7 - 2 + 8 - 6 mod 10 ?")),
        ("incorrect", cand(prompt="What is 1+1 mod 10?", correct=False)),
        ("too_long", cand(prompt="What is 1+2 mod 10?", length=41)),
        ("too_long", cand(prompt="What is 1+3 mod 10?", finish="length")),
        ("malformed", cand(prompt="What is 1+4 mod 10?", well_formed=False)),
        ("code_block", cand(prompt="What is 1+5 mod 10?", reasoning="```python\nprint(5)\n```")),
        ("long_paragraph", cand(prompt="What is 1+6 mod 10?", reasoning="step " * 20)),
        ("repetition", cand(prompt="What is 1+7 mod 10?", reasoning=loop)),
        ("mixed_language", cand(prompt="What is 1+8 mod 10?", reasoning="first add 一 加 三 等于 四 then done")),
        ("keep", cand(prompt="What is 1+9 mod 10?", reasoning="Add one and nine, that is ten, so zero.")),
        ("duplicate", cand()),
        ("duplicate", cand(reasoning="7+3=0  0-9=1\n1+2=3")),  # the same up to whitespace
        ("keep", cand(reasoning="7+3=10, so 0; 0-9=1; 1+2=3")),  # a second correct chain for this prompt
        ("per_prompt_cap", cand(reasoning="7+3=10 10-9=1 1+2=3")),  # a third one: over max_per_prompt=2
    ]
    kept, counts, reasons = filter_candidates([c for _, c in planted], cfg, index)
    assert reasons == [None if want == "keep" else want for want, _ in planted]
    assert set(counts) == set(FILTERS)
    for name in FILTERS:
        assert counts[name] == sum(want == name for want, _ in planted), name
    assert len(kept) == sum(want == "keep" for want, _ in planted)


def test_planted_near_copies_of_evaluation_problems_are_removed(data_dir):
    from nanoseek.tasks import get_task

    index = build_index(data_dir=data_dir, n=8)
    assert {"gsm8k", "math500", "countdown", "chain"} <= set(index.sources)
    gsm = get_task("gsm8k", data_dir=data_dir).examples("test")[3].prompt
    chain = get_task("chain").examples("test")[5].prompt
    near = [gsm.replace(".", " .").upper(),  # case and spacing
            "Please solve: " + gsm + " Show your work.",  # pasted into a longer prompt
            " ".join(gsm.split()[:-3]) + " in total?",  # the end reworded
            chain.replace("What is", "Compute").replace("?", ".")]
    for text in near:
        assert index.is_contaminated(text, 0.5), text
    train = get_task("chain").examples("train")[:300]
    assert sum(bool(index.is_contaminated(e.prompt, 0.5)) for e in train) == 0
    gsm_train = get_task("gsm8k", data_dir=data_dir).examples("train")[:200]
    assert sum(bool(index.is_contaminated(e.prompt, 0.5)) for e in gsm_train) <= 2


def test_template_ngrams_do_not_make_every_templated_prompt_a_copy():
    template = "Using the numbers [{}, {}, {}], create an equation that equals {}. You can use basic arithmetic."
    problems = [template.format(a, b, c, t) for a, b, c, t in [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16),
                                                               (17, 18, 19, 20), (21, 22, 23, 24)]]
    index = EvalIndex.build({"countdown": problems}, n=8)
    assert not index.is_contaminated(template.format(40, 41, 42, 43), 0.5)
    assert index.is_contaminated(template.format(9, 10, 11, 12), 0.5)


def test_filter_helpers():
    assert tokens("What is 7+3?") == ["what", "is", "7", "+", "3", "?"]
    assert ngrams("a b", 8) == {("a", "b")}
    assert repetition_loop("abc " * 10) and repetition_loop("x" + "wait, " * 8) and repetition_loop("0 " * 16)
    assert not repetition_loop("7+3=0 0-9=1 1+2=3 3+5=8") and not repetition_loop("")
    assert not repetition_loop("+8=8+3=1+0=1+0=1+0=1+0=1+8=9+8=7")  # a worked sum adding zeros is not a loop
    assert not mixed_language("7+3=0 0-9=1") and not mixed_language("so x = 3")
    assert mixed_language("Let me think 让我想想 again") and not mixed_language("让我想想", "zh")


def test_chat_record_round_trips_through_sft_encoding():
    from nanoseek.train.sft_data import encode_chat
    from nanoseek.tokenizer import build_tokenizer

    tok = build_tokenizer()
    rec = chat_record(cand(), system_prompt=None)
    assert rec["messages"][1] == {"role": "assistant", "content": "<answer>3</answer>", "reasoning_content": GOOD_COT}
    (ex,) = encode_chat(json.loads(json.dumps(rec))["messages"], tok)
    text = tok.decode([t for t, c in zip(ex.ids, ex.completion) if c], skip_special_tokens=False)
    assert text == cand().completion + "<|end|>"


def test_rejection_sample_with_a_tiny_local_model_writes_only_kept_records():
    from nanoseek.evaluation.run import LocalSampler
    from nanoseek.model.config import ModelConfig
    from nanoseek.model.transformer import DeepseekV3ForCausalLM
    from nanoseek.policy.policy import Policy
    from nanoseek.tasks.chain import ChainTask
    from nanoseek.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = DeepseekV3ForCausalLM(ModelConfig.tiny(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                   num_nextn_predict_layers=0, q_lora_rank=16, kv_lora_rank=16,
                                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    task = ChainTask(n_test=20, n_train=50)
    cfg = RejectionSamplingConfig(prompts=6, samples=2, max_new_tokens=8, require_format=False)
    sampler = LocalSampler(Policy(model, tok), batch_size=64)
    # plant: a grader that calls the first sample of every problem correct
    orig = sampler.sample

    def sample(task, examples, questions, rows, settings, on_batch):
        def mark(batch):
            for r in batch:
                r.correct = r.sample == 0
            on_batch(batch)
        orig(task, examples, questions, rows, settings, mark)

    sampler.sample = sample
    records, counts = rejection_sample(sampler, task, cfg)
    assert counts["candidates"] == 12 and counts["incorrect"] == 6
    assert counts["kept"] == len(records) == 12 - sum(counts[f] for f in FILTERS)
    assert all(r["sample"] == 0 for r in records)
