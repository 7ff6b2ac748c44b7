"""The DeepSeek-compatible API driven by a scripted generator (``ScriptedRunner``): chosen text is
emitted one byte-level token at a time (so Chinese characters are cut across tokens and ``</think>``
is a token of its own), through the real engine, HTTP server and SSE stream."""

import concurrent.futures as cf
import json
import time

import httpx
import pytest

from nanoseek.serve.app import ServerThread, create_app
from nanoseek.serve.chat_model import ChatModel
from nanoseek.serve.runner import ScriptedRunner
from nanoseek.tokenizer import build_tokenizer, split_reasoning

NAME = "nanoseek-scripted"
SCRIPTS = {  # user message -> generated text (the template pre-fills "<think>")
    "add": " 先算 3+4，得到七。</think> <answer> 7（七） </answer>",
    "noanswer": "想一想 </th" + "ink>\n就是这样",
    "long": "思" * 4000,
    "stopword": "一二三四 STOP 五六</think><answer>x</answer>",
}
TIMEOUT = 30


@pytest.fixture(scope="module")
def server():
    tok = build_tokenizer()
    eos = tok.eos_token_id
    prompts = []

    def script(prompt_ids):
        text = tok.decode(prompt_ids)
        prompts.append(text)
        last_user = text.rsplit("User: ", 1)[1].split("\n", 1)[0]
        return tok(SCRIPTS.get(last_user, SCRIPTS["add"]), add_special_tokens=False).input_ids + [eos]

    runner = ScriptedRunner(script, len(tok), eos, step_delay=0.002)
    cm = ChatModel(None, tok, NAME, runner=runner, context_length=512)
    app = create_app(cm, max_batch=64)
    with ServerThread(app) as url:
        yield {"url": url, "runner": runner, "prompts": prompts, "engine": app.state.engine, "tok": tok}


def post(server, body, **kw):
    return httpx.post(server["url"] + "/v1/chat/completions", json=body, timeout=TIMEOUT, **kw)


def ask(q, **kw):
    return {"model": NAME, "messages": [{"role": "user", "content": q}], **kw}


def stream_chunks(server, body):
    chunks = []
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=TIMEOUT) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: ")
                chunks.append(line[6:])
    assert chunks[-1] == "[DONE]"
    return [json.loads(c) for c in chunks[:-1]]


def fields_from_stream(chunks, index=0):
    r = "".join(c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks
                if c["choices"] and c["choices"][0]["index"] == index)
    a = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                if c["choices"] and c["choices"][0]["index"] == index)
    return r or None, a or None


# ------------------------------------------------------------------------------- rule 1
def test_non_stream_splits_reasoning_and_answer(server):
    r = post(server, ask("add"))
    assert r.status_code == 200
    j = r.json()
    msg = j["choices"][0]["message"]
    assert (msg["reasoning_content"], msg["content"]) == ("先算 3+4，得到七。", "7（七）")
    assert j["choices"][0]["finish_reason"] == "stop" and j["model"] == NAME and j["object"] == "chat.completion"
    u = j["usage"]
    n_gen = len(SCRIPTS["add"].encode()) - len("</think>") + 1 - len("<answer></answer>") + 2 + 1  # tags are 1 token
    assert u["completion_tokens"] == n_gen
    assert u["completion_tokens_details"]["reasoning_tokens"] == len("先算 3+4，得到七。".encode()) + 2  # " " + </think>
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_cut_off_while_thinking(server):
    j = post(server, ask("long", max_tokens=10)).json()
    c = j["choices"][0]
    assert c["finish_reason"] == "length" and c["message"]["content"] is None
    assert c["message"]["reasoning_content"] == "思" * 3  # 10 bytes: three whole characters, one cut
    assert j["usage"]["completion_tokens"] == 10 == j["usage"]["completion_tokens_details"]["reasoning_tokens"]


def test_earlier_reasoning_dropped_and_earlier_close_tag_harmless(server):
    msgs = [{"role": "user", "content": "first"},
            {"role": "assistant", "content": "<think>SECRET-THOUGHT</think>", "reasoning_content": "OTHER-SECRET"},
            {"role": "user", "content": "add"}]
    j = post(server, {"model": NAME, "messages": msgs}).json()
    prompt = server["prompts"][-1]
    assert "SECRET" not in prompt and "first" in prompt
    assert prompt.count("</think>") == 1  # only the earlier turn's empty think block of the template
    m = j["choices"][0]["message"]
    assert (m["reasoning_content"], m["content"]) == ("先算 3+4，得到七。", "7（七）")


def test_stop_strings(server):
    m = post(server, ask("stopword", stop=["STOP"])).json()["choices"][0]
    assert m["finish_reason"] == "stop" and m["message"]["reasoning_content"] == "一二三四" and m["message"]["content"] is None
    m2 = post(server, ask("stopword", stop="STOP", stream=False)).json()["choices"][0]
    assert m2 == m


def test_models_and_health(server):
    r = httpx.get(server["url"] + "/v1/models", timeout=TIMEOUT).json()
    assert r["data"][0]["id"] == NAME
    assert httpx.get(server["url"] + "/health", timeout=TIMEOUT).json()["status"] == "ok"


# ------------------------------------------------------------------------------- rule 2
def test_stream_order_and_same_fields_as_non_stream(server):
    for q in ("add", "noanswer"):
        chunks = stream_chunks(server, ask(q, stream_options={"include_usage": True}))
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        body = chunks[1:-2]
        kinds = []
        for c in body:
            d = c["choices"][0]["delta"]
            assert (d["content"] is None) != (d["reasoning_content"] is None)  # exactly one field per delta
            kinds.append("r" if d["content"] is None else "c")
            assert "<think>" not in json.dumps(d, ensure_ascii=False) and "</think>" not in json.dumps(d, ensure_ascii=False)
        assert kinds == sorted(kinds, key=lambda k: k != "r"), kinds  # reasoning first, then content
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
        non_stream = post(server, ask(q)).json()
        m = non_stream["choices"][0]["message"]
        assert fields_from_stream(chunks) == (m["reasoning_content"], m["content"])
        assert chunks[-1]["usage"] == non_stream["usage"]
    assert fields_from_stream(stream_chunks(server, ask("noanswer"))) == split_reasoning(
        SCRIPTS["noanswer"], think_prefilled=True, answer_tags=True)


def test_stream_boundary_crossing_delta_is_two_chunks(server):
    # "。</think> <answer> 7": the token "</think>" closes the block; content arrives in later chunks,
    # and no chunk carries both fields.
    chunks = stream_chunks(server, ask("add"))
    both = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")
            and c["choices"][0]["delta"].get("reasoning_content")]
    assert not both


def test_n_choices_have_their_own_parsers(server):
    j = post(server, ask("add", n=3)).json()
    assert [c["index"] for c in j["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "7（七）" for c in j["choices"])
    chunks = stream_chunks(server, ask("add", n=3))
    for i in range(3):
        assert fields_from_stream(chunks, i) == ("先算 3+4，得到七。", "7（七）")
    assert sum(1 for c in chunks if c["choices"][0]["finish_reason"]) == 3


# ------------------------------------------------------------------------------- batching
def test_concurrent_requests_join_the_running_batch(server):
    runner = server["runner"]
    runner.max_batch_seen = 0
    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(stream_chunks, server, ask("add" if i % 2 else "noanswer")) for i in range(8)]
        results = [f.result() for f in futs]
    for i, chunks in enumerate(results):
        expect = split_reasoning(SCRIPTS["add" if i % 2 else "noanswer"], True, True)
        assert fields_from_stream(chunks) == expect
    assert runner.max_batch_seen > 1


def test_late_request_does_not_wait_for_running_one(server):
    """A request that arrives mid-generation gets its answer while the first is still running."""
    with cf.ThreadPoolExecutor(2) as ex:
        long = ex.submit(post, server, ask("long", max_tokens=1500))  # ~1500 steps x 2 ms
        time.sleep(0.5)
        t0 = time.monotonic()
        short = post(server, ask("add"))
        short_s = time.monotonic() - t0
        assert not long.done(), "the long request finished before the short one: not batched"
        assert short.status_code == 200 and short_s < 3
        assert long.result().json()["choices"][0]["finish_reason"] == "length"


def test_client_disconnect_stops_generation(server):
    engine = server["engine"]
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", json=ask("long", stream=True),
                      timeout=TIMEOUT) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        assert engine.active_rows >= 1
    t0 = time.monotonic()
    while engine.active_rows and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert engine.active_rows == 0 and time.monotonic() - t0 < 1.5


# ------------------------------------------------------------------------------- rule 4
@pytest.mark.parametrize("body,status,param", [
    ({"model": NAME}, 400, "messages"),
    ({"model": NAME, "messages": []}, 400, "messages"),
    ({"model": NAME, "messages": "hi"}, 400, "messages"),
    ({"model": NAME, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    (ask("add", max_tokens=0), 400, "max_tokens"),
    (ask("add", max_tokens=-5), 400, "max_tokens"),
    (ask("add", max_tokens=1.5), 400, "max_tokens"),
    (ask("add", max_tokens="10"), 400, "max_tokens"),
    (ask("add", temperature=-0.1), 400, "temperature"),
    (ask("add", top_p=0), 400, "top_p"),
    (ask("add", n=0), 400, "n"),
    (ask("add", logprobs=True), 400, "logprobs"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    r = post(server, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    if status == 404:
        assert NAME in err["message"] and "gpt-4o" in err["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'{"messages": [{"role": "user"'])
def test_malformed_json(server, raw):
    r = httpx.post(server["url"] + "/v1/chat/completions", content=raw, timeout=TIMEOUT,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_400_before_any_stream_bytes(server, stream):
    r = post(server, ask("x" * 600, stream=stream))
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    msg = r.json()["error"]["message"]
    assert "512" in msg and str(len(server["tok"](f"<|begin|>User: {'x' * 600}\nAssistant: <think>").input_ids)) in msg
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_server_keeps_serving_after_errors(server):
    for _ in range(3):
        post(server, {"messages": []})
        httpx.post(server["url"] + "/v1/chat/completions", content=b"{", timeout=TIMEOUT)
    assert post(server, ask("add")).json()["choices"][0]["message"]["content"] == "7（七）"
    assert httpx.get(server["url"] + "/nope", timeout=TIMEOUT).json()["error"]["message"]


# ------------------------------------------------------------------------------- auth
def test_api_key():
    tok = build_tokenizer()
    runner = ScriptedRunner(lambda p: tok("r</think><answer>a</answer>").input_ids, len(tok), tok.eos_token_id)
    app = create_app(ChatModel(None, tok, NAME, runner=runner, context_length=128), api_key="s3cret")
    with ServerThread(app) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(url + "/v1/chat/completions", json=ask("add"), headers=headers, timeout=TIMEOUT)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(url + "/v1/models", timeout=TIMEOUT).status_code == 401
        ok = httpx.post(url + "/v1/chat/completions", json=ask("add"), headers={"Authorization": "Bearer s3cret"},
                        timeout=TIMEOUT)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "a"
        assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200


# ------------------------------------------------------------------------------- openai client
def test_official_openai_client(server):
    from openai import OpenAI

    client = OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    out = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "add"}])
    assert out.choices[0].message.content == "7（七）"
    assert out.choices[0].message.reasoning_content == "先算 3+4，得到七。"
    assert out.usage.completion_tokens_details.reasoning_tokens > 0
    reasoning, content, usage = "", "", None
    for ch in client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "add"}], stream=True,
                                             stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
    assert (reasoning, content) == ("先算 3+4，得到七。", "7（七）") and usage.total_tokens == out.usage.total_tokens
    with pytest.raises(Exception) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert getattr(e.value, "status_code", None) == 404


def test_one_token_crossing_the_boundary_is_sent_as_two_chunks(server):
    # The stop string holds "。</think> <answer> " back until " 7" disproves it; the released text
    # then holds the end of the reasoning and the start of the answer in one token's output.
    body = ask("add", stop=["。</think> <answer> 8"])
    chunks = stream_chunks(server, body)
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    i = next(k for k, d in enumerate(deltas) if d.get("content"))
    assert deltas[i - 1] == {"content": None, "reasoning_content": "。"} and deltas[i]["content"].startswith("7")
    m = post(server, body).json()["choices"][0]["message"]
    assert fields_from_stream(chunks) == (m["reasoning_content"], m["content"]) == ("先算 3+4，得到七。", "7（七）")


@pytest.mark.parametrize("body", [
    ask("add", seed=2**70), ask("add", seed=-1), ask("add", max_tokens=10**12, n=2),
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "add"}]}]},  # no model: the served one
    ask("add", temperature=0, top_p=0.5, presence_penalty=1.0, user="u", thinking={"type": "enabled"}),
])
def test_odd_but_valid_requests(server, body):
    r = post(server, body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "7（七）"


@pytest.mark.parametrize("body", [
    ask("add", temperature=float("inf")), ask("add", stop=[1]), ask("add", stop=["a"] * 5),
    {"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    ask("add", tools=[{"type": "function"}]), ask("add", n=100), ask("add", stream="yes"),
])
def test_more_bad_requests(server, body):
    r = httpx.post(server["url"] + "/v1/chat/completions", content=json.dumps(body), timeout=TIMEOUT)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_deeply_nested_json_and_wrong_method(server):
    r = httpx.post(server["url"] + "/v1/chat/completions", content=b"[" * 100_000, timeout=TIMEOUT)
    assert r.status_code == 400
    r = httpx.get(server["url"] + "/v1/chat/completions", timeout=TIMEOUT)
    assert r.status_code == 405 and r.json()["error"]["message"]
