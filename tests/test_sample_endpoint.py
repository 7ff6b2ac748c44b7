"""``nanoseek sample --endpoint``: a fake OpenAI-compatible teacher on 127.0.0.1 returns planted
``reasoning_content`` + ``content``; exactly the planted correct, readable replies are kept."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nanoseek.recipes.rejection import RejectionSamplingConfig, run_sample
from nanoseek.tasks.chain import ChainProblem, ChainTask


def _reply(question: str, seed: int) -> dict:
    """Planted by seed: even seeds answer right, odd wrong; seeds divisible by 3 mix languages."""
    expr = re.search(r"What is (.+?) mod", question).group(1)
    digits = [int(d) for d in re.findall(r"\d", expr)]
    ops = re.findall(r"[+-]", expr)
    p = ChainProblem(tuple(digits), tuple(ops))
    answer = p.answer if seed % 2 == 0 else (p.answer + 1) % 10
    reasoning = f"Let me add step by step: {p.worked()}" + (" 然后 我们 得到 答案 结果" if seed % 3 == 0 else "")
    return {"reasoning_content": reasoning, "content": f"The answer is \\boxed{{{answer}}}."}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        r = _reply(body["messages"][-1]["content"], int(body.get("seed") or 0))
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", **r}}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 20, "total_tokens": 21}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_endpoint_teacher_samples_are_graded_filtered_and_written(tmp_path, server, monkeypatch):
    from nanoseek.evaluation.evaluate import completion_seed

    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    task = ChainTask(n_test=20, n_train=100)
    cfg = RejectionSamplingConfig(prompts=6, samples=3, seed=5, decontaminate=True, eval_tasks=["chain"])
    out = tmp_path / "teacher.jsonl"
    counts = run_sample("teacher", task, cfg, out, endpoint=server, log=lambda *_: None)
    seeds = [completion_seed(cfg.seed, i, j) for i in range(6) for j in range(3)]
    right = [s % 2 == 0 for s in seeds]
    mixed = [s % 3 == 0 for s in seeds]
    assert counts["candidates"] == 18
    assert counts["incorrect"] == sum(not r for r in right)
    assert counts["mixed_language"] == sum(r and m for r, m in zip(right, mixed))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    good = [r and not m for r, m in zip(right, mixed)]
    problems = {k // 3 for k, g in enumerate(good) if g}  # the planted replies of one problem are identical
    assert counts["duplicate"] == sum(good) - len(problems)
    assert len(records) == counts["kept"] == len(problems)
    for rec in records:
        user, assistant = rec["messages"]
        assert user["role"] == "user" and "\\boxed{}" in user["content"]  # the R1 instruction, as asked
        assert assistant["reasoning_content"].startswith("Let me add step by step:")
        assert assistant["content"].startswith("The answer is \\boxed{")
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["counts"] == counts and "chain" in report["decontaminated_against"]
