"""``nanoseek pretrain`` on a user corpus: text and JSONL corpora, MTP loss, run directory, resume."""

import json

import pytest

from nanoseek.recipes.pretrain import corpus_tokens, window_documents
from nanoseek.tokenizer import build_tokenizer

SMALL = ["--set", "run.threads=1", "--set", "pretrain.batch_size=2", "--set", "run.checkpoint_every=2",
         "--set", "model.hidden_size=32", "--set", "model.num_hidden_layers=2", "--set", "model.q_lora_rank=16",
         "--set", "model.kv_lora_rank=16", "--set", "model.intermediate_size=32", "--set", "model.moe_intermediate_size=16",
         "--set", "model.num_nextn_predict_layers=1", "--seq-len", "32"]


def test_corpus_readers(tmp_path):
    tok = build_tokenizer()
    txt = tmp_path / "c.txt"
    txt.write_text("hello world " * 10)
    assert len(corpus_tokens(txt, tok)) == 120  # byte-level: one token per byte
    js = tmp_path / "c.jsonl"
    js.write_text(json.dumps({"text": "ab"}) + "\n" + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    ids = corpus_tokens(js, tok)
    assert ids[:3] == tok("ab", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert ids.count(tok.eos_token_id) == 2
    docs = window_documents(list(range(100)), 10, seed=3)
    assert docs(5, 4) == docs(5, 4) and all(len(d) == 10 for d in docs(5, 4))


def test_pretrain_on_a_text_corpus_with_mtp_and_resume(tmp_path, monkeypatch):
    from nanoseek.atomic import remove_path
    from nanoseek.cli.main import main
    from nanoseek.model.load import load_model

    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    corpus = tmp_path / "c.txt"
    corpus.write_text("To be, or not to be, that is the question. " * 40)
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(corpus), "--steps", "2", "--out", str(out)] + SMALL) == 0
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in first] == [1, 2] and all("pretrain/mtp_loss" in m for m in first)
    assert (out / "checkpoints" / "step-2").is_dir() is False  # the last step is the base/, not a checkpoint
    assert load_model(out).config.num_nextn_predict_layers == 1  # --model RUN_DIR finds base/
    # a run stopped before base/ was written resumes from its newest checkpoint
    assert main(["pretrain", "--data", str(corpus), "--steps", "4", "--out", str(tmp_path / "r2")] + SMALL) == 0
    remove_path(tmp_path / "r2" / "base")
    lines = (tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "r2" / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1] + "\n")  # a step logged after the checkpoint
    assert main(["pretrain", "--resume", str(tmp_path / "r2")]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (tmp_path / "r2" / "report.md").exists() and (tmp_path / "r2" / "plots" / "pretrain_loss.png").exists()


def test_pretrain_refuses_a_missing_corpus(tmp_path, capsys):
    from nanoseek.cli.main import main

    assert main(["pretrain", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", ['{"x": 1}\n'])
def test_jsonl_corpus_rows_need_text_or_messages(tmp_path, bad):
    from nanoseek.errors import NanoseekError

    p = tmp_path / "c.jsonl"
    p.write_text(bad)
    with pytest.raises(NanoseekError, match="c.jsonl:1"):
        corpus_tokens(p, build_tokenizer())
