"""``nanoseek eval --endpoint``: a fake OpenAI-compatible server on 127.0.0.1 answers real GSM8K and
MATH-500 test problems with planted completions; the evaluation must report exactly the planted
pass@1, cons@4 and pass@k, survive 429/503/timeouts, count a dead request as a failure, resume, and
refuse other settings in the same directory."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nanoseek.errors import NanoseekError
from nanoseek.evaluation.endpoint import EndpointConfig
from nanoseek.evaluation.run import EndpointSampler, EvalSettings, run_evaluation
from nanoseek.evaluation.evaluate import completion_seed
from nanoseek.tasks.base import R1_MATH_INSTRUCTION

SEED, K, MODEL = 1234, 4, "planted-model"


def ok(content, reasoning=None, tokens=None, finish="stop", fail=()):
    """A planted reply; ``fail`` lists what the first attempts get instead (HTTP codes or "hang")."""
    return {"content": content, "reasoning": reasoning, "tokens": tokens, "finish": finish, "fail": list(fail)}


DEAD = {"dead": True}  # every attempt gets HTTP 500

# GSM8K test problems 0-4 (answers 18, 3, 70000, 540, 20). Correct per problem: 4, 1, 2, 1, 1.
GSM8K = [
    [ok("So she makes \\boxed{18} dollars."), ok("16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18"),
     ok("The final answer is $18$."), ok("\\boxed{\\$18.00}", reasoning="9 eggs at $2")],   # cons: 18, right
    [ok("\\boxed{3}"), ok("\\boxed{4}"), ok("\\boxed{4}"), ok("no idea")],                  # cons: 4, wrong
    [ok("\\boxed{70,000}"), ok("\\boxed{70000}"), ok("\\boxed{7000}"),
     ok("", reasoning="The house costs 80,000 and", finish="length")],                      # cons: 70000, right
    [ok("\\boxed{540}", fail=[429]), ok("\\boxed{450}", fail=[503]), ok("I don't know"),
     ok("The answer is unclear")],                                                           # 1-1 tie: 540, right
    [ok("I could not decide.", reasoning="maybe \\boxed{20}"), ok("\\boxed{20}", fail=["hang"]),
     ok("\\boxed{21}"), ok("\\boxed{21}")],                                                  # cons: 21, wrong
]
# MATH-500 test problems 0-4. Correct per problem: 2, 2, 3, 1, 3 (the dead request counts as wrong).
MATH500 = [
    [ok("\\boxed{(3, \\frac{\\pi}{2})}"), ok("\\boxed{\\left(3,\\frac{\\pi}{2}\\right)}"), ok("\\boxed{(3, \\pi)}"),
     ok("I am not sure.")],                                                                  # (r, θ): right
    [ok("\\boxed{q - p}"), ok("\\boxed{p-q}"), ok("\\boxed{-q+p}"), ok("\\boxed{q-p}")],   # 2-2 tie: q - p, wrong
    [ok("\\boxed{\\frac{14}{3}}"), ok("\\boxed{14/3}"), ok("\\boxed{4.67}"),
     ok("So \\boxed{\\dfrac{14}{3}}", reasoning="first guess \\boxed{5}, no")],              # 14/3: right
    [ok("\\boxed{8}"), ok("\\boxed{8.0}"), ok("\\boxed{9}"), DEAD],                          # 8: wrong
    [ok("\\boxed{42}"), ok("The answer is 42."), ok("\\boxed{24}"), ok("\\boxed{42.0}")],        # 42: right
]


class FakeServer:
    """A bounded OpenAI-compatible chat server: planted replies keyed by (user message, seed)."""

    def __init__(self, planted: dict, lifetime: float = 120.0):
        self.planted = planted
        self.attempts: dict = {}
        self.requests: list = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client that timed out closed the socket
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(lifetime, self.stop)  # stops by itself even if a test hangs
        self.timer.daemon = True
        self.timer.start()

    def stop(self):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def send(self, h, code, obj, headers=()):
        data = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def handle(self, h, body):
        if h.path != "/v1/chat/completions" or body.get("model") != MODEL:
            return self.send(h, 404, {"error": {"message": f"model {body.get('model')} not found"}})
        msgs = body["messages"]
        assert [m["role"] for m in msgs] == ["user"], "no system prompt (DeepSeek-R1 usage recommendation)"
        assert body["temperature"] == 0.6 and body["top_p"] == 0.95 and body["max_tokens"] == 256
        key = (msgs[0]["content"], body["seed"])
        with self.lock:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
            self.requests.append(key)
        plant = self.planted.get(key)
        if plant is None:
            return self.send(h, 400, {"error": {"message": "unplanted request"}})
        if plant.get("dead"):
            return self.send(h, 500, {"error": {"message": "boom"}})
        if attempt < len(plant["fail"]):
            what = plant["fail"][attempt]
            if what == "hang":
                time.sleep(1.5)  # longer than the client's per-request timeout
                return None
            return self.send(h, what, {"error": {"message": "busy"}}, [("Retry-After", "0")])
        msg = {"role": "assistant", "content": plant["content"]}
        if plant["reasoning"] is not None:
            msg["reasoning_content"] = plant["reasoning"]
        tokens = plant["tokens"] if plant["tokens"] is not None else 10 * (body["seed"] % 7 + 1)
        self.send(h, 200, {"id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
                           "choices": [{"index": 0, "message": msg, "finish_reason": plant["finish"]}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5}})


@pytest.fixture
def server(data_dir):
    from nanoseek.tasks import get_task

    planted = {}
    for name, table in (("gsm8k", GSM8K), ("math500", MATH500)):
        examples = get_task(name).examples("test")
        for i, row in enumerate(table):
            for j, plant in enumerate(row):
                user = f"{examples[i].prompt.strip()}\n{R1_MATH_INSTRUCTION}"
                planted[(user, completion_seed(SEED, i, j))] = plant
    s = FakeServer(planted)
    yield s
    s.stop()


def settings(server, out, **kw):
    base = dict(model=MODEL, endpoint=server.url, tasks=["gsm8k", "math500"], samples=K, max_tokens=256,
                out=str(out), limit=None)
    base.update(kw)
    return EvalSettings(**base)


def fast_sampler(server, **kw):
    return EndpointSampler(EndpointConfig(server.url, MODEL, concurrency=8, timeout=1.0, max_retries=3,
                                          backoff=0.01, max_backoff=0.05, **kw))


def test_planted_pass1_and_cons(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    out = tmp_path / "ev"
    m = run_evaluation(settings(server, out, limit=5), sampler=fast_sampler(server), log=lambda *a: None)
    assert list(m) == ["gsm8k", "math500"]
    g, mt = m["gsm8k"], m["math500"]

    # GSM8K: correct 4, 1, 2, 1, 1 of 4; votes right, wrong, right, right (tie), wrong
    assert g["n"] == 5 and g["samples"] == 4
    assert g["pass@1"] == pytest.approx(9 / 20)
    assert g["cons@4"] == pytest.approx(3 / 5)
    assert g["pass@k"] == pytest.approx({"1": 9 / 20, "2": 2 / 3, "3": 0.85, "4": 1.0})
    assert g["truncated"] == pytest.approx(1 / 20) and g["failed"] == 0
    # three replies carried reasoning_content; the one cut off with no content never closed its think block
    assert g["thinking"] == pytest.approx(2 / 20)
    # MATH-500: correct 2, 2, 3, 1, 3 of 4 (one request dead: a failure, never dropped)
    assert mt["pass@1"] == pytest.approx(11 / 20)
    assert mt["cons@4"] == pytest.approx(3 / 5)
    assert mt["pass@k"] == pytest.approx({"1": 11 / 20, "2": 5 / 6, "3": 0.95, "4": 1.0})
    assert mt["pass@1_stderr"] == pytest.approx(((0.175 / 4) / 5) ** 0.5)
    assert mt["failed"] == 1 and mt["errors"] == {"HTTP 500": 1}
    assert mt["by_level"]["2"] == {"pass@1": 0.625, "n": 2} and mt["by_subject"]["Algebra"] == {"pass@1": 0.75, "n": 1}
    assert mt["by_subject_level"]["all"]["all"] == {"pass@1": 0.55, "n": 5}

    # retries: the 429, the 503 and the timed-out request were retried and then answered
    retried = {k: n for k, n in server.attempts.items() if n > 1}
    counts = sorted(retried.values())
    # three one-off failures, each retried once; the dead one is tried 1 + 3 times by the client, of
    # which the server sees at least two (under load an attempt can time out before it arrives)
    assert counts[:3] == [2, 2, 2] and 2 <= counts[3] <= 4, counts

    # the files
    results = json.loads((out / "results.json").read_text())
    assert results["math500"]["cons@4"] == pytest.approx(0.6) and results["gsm8k"]["pass@1"] == pytest.approx(0.45)
    md = (out / "results.md").read_text()
    assert "| gsm8k | 5 | 45.0 ± " in md and "| math500 | 5 | 55.0 ± 9.4 | 60.0 |" in md
    assert "level 2" in md and "HTTP 500: 1" in md
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    r = next(r for r in rows if r["task"] == "math500" and r["problem"] == 2 and r["sample"] == 3)
    assert r["reasoning"] == "first guess \\boxed{5}, no" and r["answer"] == "So \\boxed{\\dfrac{14}{3}}"
    assert r["extracted"] == "\\dfrac{14}{3}" and r["correct"] is True and r["reference"] == "\\frac{14}{3}"
    assert r["prompt"].endswith(R1_MATH_INSTRUCTION)
    dead = next(r for r in rows if r["task"] == "math500" and r["problem"] == 3 and r["sample"] == 3)
    assert dead["error"].startswith("HTTP 500") and dead["correct"] is False
    g4 = next(r for r in rows if r["task"] == "gsm8k" and r["problem"] == 4 and r["sample"] == 0)
    # the answer is read from content (all of it, as it has no mark), never from the reasoning's \boxed{20}
    assert g4["extracted"] == "I could not decide." and g4["correct"] is False


def test_resume_refuse_and_cli(server, tmp_path, monkeypatch, capsys):
    from nanoseek.cli.main import main

    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    out = tmp_path / "ev"
    run_evaluation(settings(server, out, tasks=["gsm8k"], limit=3), sampler=fast_sampler(server), log=lambda *a: None)
    before = len(server.requests)
    # "interrupted": extend to 5 problems and lose the last line mid-write; only the missing samples are asked
    path = out / "samples.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20])
    with pytest.warns(RuntimeWarning, match="malformed"):
        argv = ["eval", "--endpoint", server.url, "--model", MODEL, "--task", "gsm8k", "--limit", "5",
                "--samples", "4", "--max-tokens", "256", "--out", str(out), "--timeout", "0.5"]
        assert main(argv) == 0
    asked = server.requests[before:]
    assert len(set(asked)) == 1 + 2 * 4  # the torn sample + problems 3 and 4
    assert "| gsm8k | 5 | 45.0 ± " in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["gsm8k"]["cons@4"] == pytest.approx(0.6)

    # the same command again asks nothing
    before = len(server.requests)
    assert main(argv) == 0 and len(server.requests) == before
    # other settings in the same directory are refused with a message
    assert main(argv[:-4] + ["--temperature", "1.0", "--out", str(out)]) == 2
    assert "other settings: temperature 1.0 (the directory has 0.6)" in capsys.readouterr().err
    with pytest.raises(NanoseekError, match="other settings"):
        run_evaluation(settings(server, out, tasks=["gsm8k"], limit=5, seed=7), sampler=fast_sampler(server))
    # a wrong model name is a 404: the run stops with one line instead of failing every request
    assert main(["eval", "--endpoint", server.url, "--model", "nope", "--task", "gsm8k", "--limit", "1",
                 "--max-tokens", "256", "--out", str(tmp_path / "other")]) == 2
    assert "refused the request (HTTP 404" in capsys.readouterr().err


def test_content_is_the_answer_when_the_reasoning_comes_separately():
    """Issue 19 item 10: nanoseek serve (like DeepSeek's API) returns an R1-Zero model's answer as
    bare ``content`` ("7") beside ``reasoning_content``; that content is the answer. Without a separate
    reasoning the content is the whole completion and needs its own mark."""
    from nanoseek.evaluation.endpoint import ChatReply
    from nanoseek.evaluation.run import endpoint_completion
    from nanoseek.tasks import get_task

    task = get_task("chain")
    ex = task.examples("test")[0]
    right, wrong = str(ex.answer), str((int(ex.answer) + 1) % 10)
    sampler = EndpointSampler(EndpointConfig("http://127.0.0.1:1/v1", MODEL))

    def grade(content, reasoning, finish="stop"):
        g = sampler.grade(task, ex, ex.prompt, 0, 0, ChatReply(content, reasoning, finish, 12))
        return g.extracted, g.correct, g.well_formed, g.thinking

    assert grade(right, "1+2=3") == (right, True, True, True)
    assert grade(f" {right}\n", "1+2=3") == (right, True, True, True)
    assert grade(wrong, "1+2=3") == (wrong, False, True, True)
    assert grade(f"So \\boxed{{{right}}}.", "") == (right, True, True, False)  # its own mark decides
    assert grade(f"#### {wrong}\nor {right}", "x") == (wrong, False, True, True)
    assert grade(right, None) == (None, False, False, False)  # no separate reasoning: no marked answer
    assert grade("", f"thinking about {right}", "length") == (None, False, False, False)  # cut off while thinking
    assert endpoint_completion("7", "r") == "<think>r</think><answer>7</answer>"
    assert endpoint_completion("\\boxed{7}", "r") == "<think>r</think>\\boxed{7}"
    assert endpoint_completion("7", None) == "7" and endpoint_completion(" ", "r") == "<think>r"
