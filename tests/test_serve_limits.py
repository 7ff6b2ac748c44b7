"""What one request cannot do to the server (issue 19, items 4-6): a body over the size limit is a
413 before it is read, the prompt is tokenized off the event loop (``/health`` and running streams go
on while a tokenizer is busy), a lone surrogate is a 400 and the keep-alive connection stays usable,
an unexpected failure is a JSON 500 on a connection that stays usable, and a non-streamed request is
cancelled when its client leaves. Driven by ``ScriptedRunner`` through the real engine and uvicorn."""

import http.client
import json
import socket
import threading
import time

import httpx
import pytest

from nanoseek.serve.app import ServerThread, create_app
from nanoseek.serve.chat_model import ChatModel
from nanoseek.serve.intake import DEFAULT_MAX_REQUEST_BYTES, lone_surrogate_path
from nanoseek.serve.runner import ScriptedRunner
from nanoseek.tokenizer import build_tokenizer

NAME = "limits"
LIMIT = 4096  # bytes, the server's --max-request-bytes in these tests
LONG = "思" * 4000  # 12,000 byte-level tokens: 24 s at 2 ms a step unless cancelled


@pytest.fixture(scope="module")
def server():
    tok = build_tokenizer()
    eos = tok.eos_token_id
    long_ids = tok(LONG, add_special_tokens=False).input_ids
    short_ids = tok("r</think><answer>ok</answer>", add_special_tokens=False).input_ids

    def script(prompt_ids):
        return (long_ids if "long" in tok.decode(prompt_ids) else short_ids) + [eos]

    runner = ScriptedRunner(script, len(tok), eos, step_delay=0.002)
    cm = ChatModel(None, tok, NAME, runner=runner, context_length=100_000)
    app = create_app(cm, max_request_bytes=LIMIT)
    with ServerThread(app) as url:
        host, port = url.removeprefix("http://").split(":")
        yield {"url": url, "host": host, "port": int(port), "runner": runner, "engine": app.state.engine, "cm": cm}


def body_of(text, **kw) -> bytes:
    return json.dumps({"model": NAME, "messages": [{"role": "user", "content": text}], **kw}).encode()


def exchange(conn, body: bytes, headers=None):
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    return r.status, r.getheader("connection"), json.loads(r.read())


def assert_openai_error(obj, code=None, param=None):
    err = obj["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param


def wait_idle(engine, seconds: float) -> float:
    """Seconds until the engine has no rows (``seconds`` + 1 if it never gets there)."""
    t0 = time.monotonic()
    while engine.active_rows and time.monotonic() - t0 < seconds:
        time.sleep(0.01)
    return time.monotonic() - t0 if not engine.active_rows else seconds + 1


# ------------------------------------------------------------------------------- item 4: size limit
def test_default_limit_is_two_mib():
    assert DEFAULT_MAX_REQUEST_BYTES == 2 * 1024 * 1024


def test_body_at_the_limit_passes_and_one_byte_more_is_413(server):
    base = body_of("hi")
    at_limit = base[:-1] + b" " * (LIMIT - len(base)) + b"}"
    assert len(at_limit) == LIMIT
    conn = http.client.HTTPConnection(server["host"], server["port"], timeout=30)
    status, _, obj = exchange(conn, at_limit)
    assert status == 200 and obj["choices"][0]["message"]["content"] == "ok"
    sock = conn.sock
    status, connection, obj = exchange(conn, at_limit[:-1] + b" }")
    assert status == 413 and connection != "close"
    assert_openai_error(obj, code="request_too_large")
    assert str(LIMIT) in obj["error"]["message"] and "--max-request-bytes" in obj["error"]["message"]
    # a 4 MB body too; the connection is the same one throughout and still answers
    status, _, obj = exchange(conn, body_of("x" * 4_000_000))
    assert status == 413 and obj["error"]["code"] == "request_too_large"
    status, _, obj = exchange(conn, body_of("hi"))
    assert status == 200 and conn.sock is sock
    conn.close()


def test_413_comes_before_the_body_is_read(server):
    """Headers announcing 4 MB and only 1 kB of body: the answer must come without the rest."""
    with socket.create_connection((server["host"], server["port"]), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 4000000\r\n\r\n" + b" " * 1000)
        head = s.recv(65536)
        while b"\r\n\r\n" in head and len(head.split(b"\r\n\r\n", 1)[1]) < int(
                head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
            more = s.recv(65536)  # the body may come in a later segment than the headers
            if not more:
                break
            head += more
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"request_too_large"' in head


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():
        for _ in range(100):
            yield b" " * 1000

    r = httpx.post(server["url"] + "/v1/chat/completions", content=chunks(), timeout=30)
    assert r.status_code == 413
    assert_openai_error(r.json(), code="request_too_large")
    ok = httpx.post(server["url"] + "/v1/chat/completions", content=iter([body_of("hi")]), timeout=30)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "ok"


def test_tokenizing_runs_off_the_event_loop(server, monkeypatch):
    """While one request's prompt is being encoded (held here by an event), /health answers and a
    running stream keeps sending; then the held request completes normally."""
    cm, release, entered = server["cm"], threading.Event(), threading.Event()
    encode = cm.encode

    def slow_encode(messages):
        if messages[-1]["content"] == "held":
            entered.set()
            assert release.wait(20)
        return encode(messages)

    monkeypatch.setattr(cm, "encode", slow_encode)
    with httpx.Client(timeout=30) as client, \
            client.stream("POST", server["url"] + "/v1/chat/completions", content=body_of("long", stream=True)) as stream:
        lines = stream.iter_lines()
        next(lines)
        held = threading.Thread(target=lambda: client.post(server["url"] + "/v1/chat/completions",
                                                           content=body_of("held")))
        held.start()
        assert entered.wait(10)
        health = httpx.get(server["url"] + "/health", timeout=5)  # on the loop's thread it would hang
        assert health.status_code == 200 and health.json()["active_rows"] == 1
        got = sum(1 for _, line in zip(range(20), lines) if line.startswith("data: {"))
        assert got >= 10 and entered.is_set() and not release.is_set()  # the stream flowed while encoding was held
        release.set()
        held.join(20)
        assert not held.is_alive()


# ------------------------------------------------------------------------------- item 5: invalid text
@pytest.mark.parametrize("raw,param", [
    ('{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "\\udfff"}]}', "messages[0].content"),
    ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}', "messages[0].content[0].text"),
    ('{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    ('{"messages": [{"role": "user", "content": "hi"}], "stop": ["x", "\\ud800"]}', "stop[1]"),
])
def test_lone_surrogate_is_400_and_the_connection_stays_usable(server, raw, param):
    conn = http.client.HTTPConnection(server["host"], server["port"], timeout=30)
    status, connection, obj = exchange(conn, raw.encode())
    assert status == 400 and connection != "close"
    assert_openai_error(obj, code="invalid_value", param=param)
    assert "surrogate" in obj["error"]["message"]
    sock = conn.sock
    for _ in range(2):
        status, _, obj = exchange(conn, body_of("hi"))
        assert status == 200 and obj["choices"][0]["message"]["content"] == "ok"
    assert conn.sock is sock  # the same TCP connection: never closed and reopened
    conn.close()


def test_surrogate_pairs_and_escaped_backslashes_are_fine(server):
    for raw in ('{"messages": [{"role": "user", "content": "\\ud83d\\ude00 hi"}]}',  # one emoji, escaped as a pair
                '{"messages": [{"role": "user", "content": "\\\\ud800 is how JSON writes it"}]}'):
        r = httpx.post(server["url"] + "/v1/chat/completions", content=raw.encode(), timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
    # a surrogate written as raw UTF-8 bytes is not UTF-8 at all
    r = httpx.post(server["url"] + "/v1/chat/completions",
                   content=b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_lone_surrogate_path():
    assert lone_surrogate_path({"a": [1, "ok", {"b": "x\ud800"}]}) == "a[2].b"
    assert lone_surrogate_path({"\udc00": 1}) == "body"
    assert lone_surrogate_path({"a": ["\U0001F600", None, 2.5]}) is None


def test_unexpected_error_is_json_500_and_the_connection_stays_usable(server, monkeypatch):
    cm = server["cm"]
    encode = cm.encode

    def broken(messages):
        if messages[-1]["content"] == "boom":
            raise RuntimeError("a bug")
        return encode(messages)

    monkeypatch.setattr(cm, "encode", broken)
    conn = http.client.HTTPConnection(server["host"], server["port"], timeout=30)
    status, connection, obj = exchange(conn, body_of("boom"))
    assert status == 500 and connection != "close"
    assert_openai_error(obj) and obj["error"]["type"] == "server_error"
    assert "a bug" not in obj["error"]["message"]  # internals stay in the server log
    sock = conn.sock
    status, _, obj = exchange(conn, body_of("hi"))
    assert status == 200 and conn.sock is sock
    conn.close()


# ------------------------------------------------------------------------------- item 6: abandoned requests
@pytest.mark.parametrize("stream", [False, True])
def test_abandoned_request_stops_generating_within_a_second(server, stream):
    """A 12,000-token generation (24 s) whose client goes away: its rows leave the batch within 1 s
    and no more steps run for it. Before the fix a non-streamed one ran to its natural end."""
    engine, runner = server["engine"], server["runner"]
    assert wait_idle(engine, 5) <= 5
    s = socket.create_connection((server["host"], server["port"]), timeout=10)
    body = body_of("long", stream=stream)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    t0 = time.monotonic()
    while engine.active_rows == 0 and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    time.sleep(0.3)
    assert engine.active_rows == 1
    s.close()
    assert wait_idle(engine, 5) < 1.0
    steps = runner.steps
    time.sleep(0.3)
    assert runner.steps == steps  # nothing else was running: no step at all after the rows left


def test_cli_flag(capsys):
    from nanoseek.cli.main import build_parser, main

    assert build_parser().parse_args(["serve", "--model", "m"]).max_request_bytes == DEFAULT_MAX_REQUEST_BYTES
    assert build_parser().parse_args(["serve", "--model", "m", "--max-request-bytes", "1000"]).max_request_bytes == 1000
    assert main(["serve", "--model", "m", "--max-request-bytes", "0"]) == 2
    assert "--max-request-bytes" in capsys.readouterr().err


def test_intake_thread_runs_at_lower_priority_than_the_engine():
    """Tokenizing a large prompt must leave the CPU to the engine thread: the intake worker's nice
    value is raised by INTAKE_NICENESS, the calling (engine-side) thread keeps its own."""
    import os
    import threading

    from nanoseek.serve.app import INTAKE_NICENESS, lower_priority

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = {}

    def worker():
        lower_priority()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["nice"] == min(19, before + INTAKE_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_a_prompt_far_over_the_context_is_refused_without_encoding_it():
    """The UTF-8 size of the messages bounds their token count from below (no token stands for more
    than ``max_token_bytes`` bytes), so a prompt that cannot fit is a 400 before the tokenizer runs;
    one that may fit is encoded and judged by its real length."""
    from nanoseek.serve import protocol as P
    from nanoseek.serve.intake import prepare

    tok = build_tokenizer()
    cm = ChatModel(None, tok, NAME, runner=ScriptedRunner(lambda ids: [tok.eos_token_id], len(tok), tok.eos_token_id),
                   context_length=64)
    vocab_max = max(len(t.encode("utf-8")) for t in tok.get_vocab())
    assert cm.max_token_bytes == vocab_max
    text = "x" * (64 * vocab_max + 5)
    assert cm.min_prompt_tokens([{"role": "user", "content": text}]) >= 64
    assert len(cm.encode([{"role": "user", "content": text}])) >= cm.min_prompt_tokens([{"role": "user", "content": text}])

    calls = []
    cm.encode = lambda messages: calls.append(messages) or list(range(10))
    with pytest.raises(P.APIError) as e:
        prepare(cm, body_of(text))
    assert e.value.status == 400 and e.value.code == "context_length_exceeded" and calls == []
    assert prepare(cm, body_of("short")).generation.prompt_ids == list(range(10)) and len(calls) == 1
