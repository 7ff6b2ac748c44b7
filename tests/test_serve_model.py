"""The server on a real nanoseek checkpoint (a tiny random DeepSeek-V3 saved with the R1-Zero chat
template): loading, seeded reproducibility, batched = alone, and the CLI."""

import concurrent.futures as cf

import httpx
import pytest
import torch

from nanoseek.serve.app import ServerThread, create_app
from nanoseek.serve.chat_model import ChatModel

TIMEOUT = 60


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models decode fastest on one thread (and the shared 2-core CI box thrashes with two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_checkpoint(folder):
    """A tiny random nanoseek model + tokenizer saved as a checkpoint folder."""
    from nanoseek.model.hf import save_model
    from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
    from nanoseek.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_nextn_predict_layers=0,
                           max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(DeepseekV3ForCausalLM(cfg), folder, tok)
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run") / "checkpoints" / "step-3")


@pytest.fixture(scope="module")
def server(ckpt):
    cm = ChatModel.load(ckpt, name="tiny")
    assert cm.think_prefilled and cm.answer_tags and cm.context_length == 256
    with ServerThread(create_app(cm)) as url:
        yield url


def chat(url, q, **kw):
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": q}], **kw},
                   timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def text_of(choice):
    m = choice["message"]
    return (m["reasoning_content"], m["content"], choice["finish_reason"])


def test_seeded_requests_repeat(server):
    a = chat(server, "hello", max_tokens=16, seed=7)
    b = chat(server, "hello", max_tokens=16, seed=7)
    c = chat(server, "hello", max_tokens=16, seed=8)
    assert text_of(a["choices"][0]) == text_of(b["choices"][0])
    assert text_of(a["choices"][0]) != text_of(c["choices"][0])
    assert a["usage"]["completion_tokens"] <= 16


def test_n_choices_sample_independently(server):
    j = chat(server, "hello", max_tokens=12, n=3, seed=1, temperature=1.0)
    texts = {text_of(c) for c in j["choices"]}
    assert len(texts) == 3
    # choice i is seeded seed + i: choice 1 of seed 1 == choice 0 of seed 2
    assert text_of(j["choices"][1]) == text_of(chat(server, "hello", max_tokens=12, seed=2)["choices"][0])


def test_batched_greedy_equals_alone(server):
    qs = ["a", "a longer question here", "两个字", "x" * 40]
    alone = [text_of(chat(server, q, max_tokens=12, temperature=0)["choices"][0]) for q in qs]
    with cf.ThreadPoolExecutor(len(qs)) as ex:
        together = list(ex.map(lambda q: text_of(chat(server, q, max_tokens=12, temperature=0)["choices"][0]), qs))
    assert together == alone


def test_stream_equals_non_stream(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "seed": 3}
    ref = httpx.post(server + "/v1/chat/completions", json=body, timeout=TIMEOUT).json()["choices"][0]["message"]
    r_parts, c_parts = [], []
    with httpx.stream("POST", server + "/v1/chat/completions", json={**body, "stream": True}, timeout=TIMEOUT) as r:
        import json

        for line in r.iter_lines():
            if line.startswith("data: {"):
                d = json.loads(line[6:])["choices"][0]["delta"]
                r_parts.append(d.get("reasoning_content") or "")
                c_parts.append(d.get("content") or "")
    assert ("".join(r_parts) or None, "".join(c_parts) or None) == (ref["reasoning_content"], ref["content"])


def test_cli_parses_serve_and_chat(ckpt):
    from nanoseek.cli.main import build_parser

    a = build_parser().parse_args(["serve", "--model", str(ckpt), "--port", "0", "--api-key", "k",
                                   "--served-model-name", "m"])
    assert (a.host, a.port, a.api_key, a.served_model_name) == ("127.0.0.1", 0, "k", "m")
    a = build_parser().parse_args(["chat", "--model", str(ckpt)])
    assert a.model == str(ckpt)


def test_cli_chat_runs_a_turn(ckpt, capsys, monkeypatch):
    import io

    from nanoseek.cli.main import main

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\n"))
    assert main(["chat", "--model", str(ckpt), "--max-tokens", "8", "--no-color", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out or "step-3" in out
