"""``nanoseek chat`` handles its slash commands itself (issue 19 item 11): ``/help`` and unknown
``/words`` never reach the model; ``//text`` sends ``/text``. The model is a ``ScriptedRunner`` that
records every prompt it is given."""

import io

import pytest

from nanoseek.cli.chat import COMMANDS, slash_command
from nanoseek.cli.main import main
from nanoseek.serve.chat_model import ChatModel
from nanoseek.serve.runner import ScriptedRunner
from nanoseek.tokenizer import build_tokenizer


@pytest.fixture
def scripted(monkeypatch):
    tok = build_tokenizer()
    prompts = []

    def script(prompt_ids):
        prompts.append(tok.decode(prompt_ids))
        return tok("r</think><answer>pong</answer>", add_special_tokens=False).input_ids + [tok.eos_token_id]

    cm = ChatModel(None, tok, "scripted", runner=ScriptedRunner(script, len(tok), tok.eos_token_id), context_length=256)
    monkeypatch.setattr(ChatModel, "load", classmethod(lambda cls, *a, **k: cm))
    return prompts


def chat(monkeypatch, capsys, lines: str) -> str:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["chat", "--model", "unused", "--no-color", "--seed", "1"]) == 0
    return capsys.readouterr().out


def test_help_and_unknown_commands_stay_local(scripted, monkeypatch, capsys):
    out = chat(monkeypatch, capsys, "/help\n/bogus now\n/\nping\n/exit\nnever sent\n")
    assert [p.rsplit("User: ", 1)[1].split("\n", 1)[0] for p in scripted] == ["ping"]  # one turn reached the model
    for command, what in COMMANDS.items():
        assert f"{command}" in out and what in out
    assert "(unknown command /bogus: /help lists the commands" in out
    assert "(unknown command /:" in out
    assert out.endswith("you> scripted> [thinking]\nr\n\npong\nyou> ")  # the reply, then /exit


def test_double_slash_sends_the_text_and_quit_quits(scripted, monkeypatch, capsys):
    out = chat(monkeypatch, capsys, "//etc/hosts?\n/think\n/new\n/quit\nnever sent\n")
    assert len(scripted) == 1 and "User: /etc/hosts?\n" in scripted[0]
    assert "(reasoning hidden)" in out and "(new conversation)" in out


def test_slash_command():
    assert [slash_command(x) for x in ("/new", "/quit", "/exit now", "/Help", "//x", "hi /new", "")] == [
        "/new", "/exit", "/exit", "/Help", None, None, None]
