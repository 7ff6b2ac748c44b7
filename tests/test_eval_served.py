"""``nanoseek eval --endpoint`` against ``nanoseek serve`` equals local evaluation of the same model
(issue 19 item 10). The model is a deterministic causal LM (``PlantedLM``): after each test prompt
it writes a planted R1-Zero completion, right for some problems and wrong for others, and at the
answer digit it puts part of its probability on a second digit, so sampled answers depend on the
seed. Both paths render the same prompt, sample with the same per-sample seeds and grade with the
same task: every sample and every number must agree. Before the fix the endpoint scored 0% (the
server returns the answer as bare ``content``, without the ``<answer>`` tags)."""

import json
from types import SimpleNamespace

import pytest
import torch

from nanoseek.evaluation.run import EvalSettings, LocalSampler, run_evaluation
from nanoseek.policy.policy import Policy
from nanoseek.serve.app import ServerThread, create_app
from nanoseek.serve.chat_model import ChatModel
from nanoseek.tasks import get_task
from nanoseek.tokenizer import build_tokenizer, render_prompt

LIMIT, SAMPLES, SEED = 8, 3, 1234
OFF = -30.0  # logit of every token the model does not mean (finite: softmax ~1e-13, cut by top-p)


class TokenCache:
    """PlantedLM's cache: the token ids seen so far, ``[B, S]``, -1 where the batch is padded. It
    has the row surgery of ``MLACache`` (select, trim_left, merge), so the server's continuous
    batching and ``generate`` handle it as they handle the real one."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def select(self, rows: torch.Tensor) -> None:
        self.ids = self.ids.index_select(0, rows)

    def trim_left(self, k: int) -> None:
        self.ids = self.ids[:, k:]

    @classmethod
    def merge(cls, a: "TokenCache", b: "TokenCache", headroom: int = 0) -> "TokenCache":
        S = max(a.ids.shape[1], b.ids.shape[1])

        def pad(t):
            return torch.cat([t.new_full((t.shape[0], S - t.shape[1]), -1), t], dim=1)

        return cls(torch.cat([pad(a.ids), pad(b.ids)]))


class PlantedLM(torch.nn.Module):
    """Next-token logits from a table: ``plants[prompt ids] = [(token, alternative or None), ...]``.
    After a planted prompt and ``k`` generated tokens it means token ``k`` of the plan (logit 0) and
    its alternative (logit -0.5, about 38% at temperature 1), then EOS; after any other text, EOS."""

    def __init__(self, plants: dict, vocab_size: int, eos_id: int):
        super().__init__()
        self.plants, self.vocab_size, self.eos_id = plants, vocab_size, eos_id
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # callers read the device from a parameter

    def next_logits(self, seq: list[int]) -> torch.Tensor:
        out = torch.full((self.vocab_size,), OFF)
        prompt = next((p for p in self.plants if tuple(seq[:len(p)]) == p), None)
        plan = self.plants.get(prompt, [])
        k = len(seq) - len(prompt or ())
        if k >= len(plan):
            out[self.eos_id] = 0.0
            return out
        token, alternative = plan[k]
        out[token] = 0.0
        if alternative is not None:
            out[alternative] = -0.5
        return out

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0, **_):
        T = input_ids.shape[1]
        new = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask[:, -T:] == 0, -1)
        ids = new if past_key_values is None else torch.cat([past_key_values.ids, new], dim=1)
        logits = torch.stack([self.next_logits([t for t in row.tolist() if t >= 0]) for row in ids])
        return SimpleNamespace(logits=logits[:, None, :], past_key_values=TokenCache(ids))


@pytest.fixture(scope="module")
def planted():
    tok = build_tokenizer()
    task = get_task("chain")
    examples = task.examples("test")[:LIMIT]
    digit = {d: tok.convert_tokens_to_ids(str(d)) for d in range(10)}

    def ids(text):
        return tok(text, add_special_tokens=False).input_ids

    plants, expected = {}, []
    for i, ex in enumerate(examples):
        prompt = ids(render_prompt(tok, ex.prompt))  # the prompt as Policy renders it (no system prompt)
        answer = int(ex.answer)
        said = answer if i % 4 != 3 else (answer + 1) % 10  # every 4th problem planted wrong
        alt = digit[(said + 5) % 10] if i % 2 == 0 else None  # even problems: a second digit competes
        plan = [(t, None) for t in ids(f"thinking {i}</think><answer>")] + [(digit[said], alt)]
        plants[tuple(prompt)] = plan + [(t, None) for t in ids("</answer>")]
        expected.append(said == answer)
    model = PlantedLM(plants, len(tok), tok.eos_token_id)
    return {"tok": tok, "model": model, "task": task, "expected": expected}


def rows_of(out):
    keep = ("problem", "sample", "extracted", "correct", "well_formed", "thinking", "length", "finish_reason")
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return sorted(tuple(r[k] for k in keep) for r in rows)


@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_endpoint_eval_of_nanoseek_serve_equals_local_eval(planted, tmp_path, monkeypatch, temperature):
    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    tok, model = planted["tok"], planted["model"]
    common = dict(tasks=["chain"], limit=LIMIT, samples=SAMPLES, temperature=temperature, top_p=0.95, max_tokens=64,
                  seed=SEED, instruction="none")
    local = run_evaluation(EvalSettings(model="planted", out=str(tmp_path / "local"), **common),
                           sampler=LocalSampler(Policy(model, tok), batch_size=5), log=lambda *a: None)["chain"]
    cm = ChatModel(model, tok, "planted")
    assert cm.answer_tags and cm.think_prefilled  # content comes back without tags, reasoning separate
    with ServerThread(create_app(cm, max_batch=4)) as url:
        remote = run_evaluation(EvalSettings(model="planted", endpoint=url + "/v1", out=str(tmp_path / "remote"),
                                             concurrency=6, timeout=60, **common), log=lambda *a: None)["chain"]

    assert rows_of(tmp_path / "remote") == rows_of(tmp_path / "local")
    for key in ("pass@1", "pass@k", f"cons@{SAMPLES}", "well_formed", "thinking", "mean_length", "truncated", "n",
                "samples", "failed"):
        assert remote[key] == local[key], key
    # the numbers are the planted ones: wrong problems score 0; a right one scores 1 unless its answer
    # digit competes with another, where sampling at 0.6 picks the other one some of the time
    greedy = sum(planted["expected"]) / LIMIT
    if temperature == 0:
        assert local["pass@1"] == greedy == 6 / 8
    else:
        assert 3 / 8 < local["pass@1"] < greedy
    assert local["well_formed"] == 1.0 and local["thinking"] == 1.0 and local["failed"] == 0
