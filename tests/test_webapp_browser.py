"""Slow: the web chat app in a real browser (Playwright driving Debian's /usr/bin/chromium headless;
no browser download).

The server runs a real checkpoint: ``$NANOSEEK_SERVE_TEST_MODEL`` if set (e.g. a ``nanoseek zero``
run), else a tiny nanoseek model trained in the test to answer one question with a think block and
an R1-Zero ``<answer>`` (its head is then sharpened ×4 so that temperature-1 sampling follows it).
Decoding is slowed to ~40 ms a token so the page can be seen streaming. A screenshot is saved to
``tests/artifacts/webapp.png``.
"""

import os
import time
from pathlib import Path

import pytest
import torch

from nanoseek.serve.app import ServerThread, create_app
from nanoseek.serve.chat_model import ChatModel
from nanoseek.serve.runner import ModelRunner

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("NANOSEEK_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
QUESTION = "What is 2+2?"
COMPLETION = " 2 加 2 等于 4，检查一下：2+2=4。</think> <answer>4</answer><|end|>"


def trained_checkpoint(folder: Path) -> Path:
    """Overfit a tiny model on one conversation (a behavioural check that serving a trained
    checkpoint shows its reasoning and its answer) and save it as a checkpoint folder."""
    from nanoseek.model.hf import save_model
    from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
    from nanoseek.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_nextn_predict_layers=0,
                           max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = DeepseekV3ForCausalLM(cfg)
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    P = len(tok(prompt, add_special_tokens=False).input_ids)
    ids = torch.tensor([tok(prompt + COMPLETION, add_special_tokens=False).input_ids])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).logits[0, P - 1:], ids[0, P:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    save_model(model.eval(), folder, tok)
    return folder


class SlowRunner(ModelRunner):
    def decode(self, state, tokens):
        time.sleep(0.04)
        return super().decode(state, tokens)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)")
    pytest.importorskip("playwright")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    path = os.environ.get("NANOSEEK_SERVE_TEST_MODEL") or trained_checkpoint(tmp_path_factory.mktemp("ckpt"))
    cm = ChatModel.load(path, name="nanoseek-web")
    cm.runner = SlowRunner(cm.runner.model, cm.runner.pad_id)
    app = create_app(cm)
    with ServerThread(app) as url:
        yield url, app.state.engine
    torch.set_num_threads(n)


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        pg = browser.new_page(viewport={"width": 1100, "height": 760})
        pg.set_default_timeout(30_000)
        yield pg
        browser.close()


def test_chat_in_browser(server, page):
    url, engine = server
    page.goto(url + "/")
    page.wait_for_function("document.querySelector('#model-name').textContent === 'nanoseek-web'")

    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    # the thinking panel fills while the answer is still empty, and the stop button is shown
    page.wait_for_function("""() => {
        const m = [...document.querySelectorAll('.msg.assistant')].pop();
        return m && m.querySelector('.reasoning').textContent.length > 0 && m.querySelector('.answer').textContent === '';
    }""")
    assert page.is_visible("#stop") and page.is_visible(".msg.assistant .thinking")
    page.wait_for_function("document.querySelector('.msg.assistant .answer').textContent.length > 0")
    page.wait_for_selector("#send", state="visible")
    reasoning = page.text_content(".msg.assistant .reasoning")
    answer = page.text_content(".msg.assistant .answer")
    if not os.environ.get("NANOSEEK_SERVE_TEST_MODEL"):
        assert "2 加 2 等于 4" in reasoning and answer == "4"
    assert "<think>" not in reasoning + answer and "</think>" not in reasoning + answer
    assert page.text_content(".msg.assistant summary").startswith("Thought for")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webapp.png"), full_page=True)

    # DeepThink off hides the reasoning, on shows it again
    page.click("#deepthink")
    assert not page.is_visible(".msg.assistant .thinking")
    page.click("#deepthink")
    assert page.is_visible(".msg.assistant .thinking")
    page.click("#deepthink")

    # the conversation survives a reload (kept in the browser), and so does the toggle
    page.reload()
    page.wait_for_selector(".msg.user .bubble")
    assert page.text_content(".msg.user .bubble") == QUESTION
    assert page.text_content(".msg.assistant .answer") == answer
    assert not page.is_visible(".msg.assistant .thinking")
    assert page.text_content("#conversations li.active") == QUESTION
    page.click("#deepthink")
    assert page.text_content(".msg.assistant .reasoning") == reasoning

    # the stop button ends a reply mid-stream and the server stops generating
    page.fill("#input", "Tell me more about " + "this " * 20)
    page.press("#input", "Enter")
    page.wait_for_selector("#stop", state="visible")
    page.wait_for_function("[...document.querySelectorAll('.msg.assistant')].pop().querySelector('.reasoning').textContent.length > 0")
    page.click("#stop")
    page.wait_for_function("[...document.querySelectorAll('.msg.assistant .error')].pop().textContent === '(stopped)'")
    t0 = time.monotonic()
    while engine.active_rows and time.monotonic() - t0 < 3:
        time.sleep(0.05)
    assert engine.active_rows == 0

    # a new chat starts empty and the old one is still listed
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0 and page.locator("#conversations li").count() == 2
    page.screenshot(path=str(ARTIFACTS / "webapp-new-chat.png"))

