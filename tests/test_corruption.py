"""A damaged run directory (issue 19, item 2): every kind of damage either stops with one line
naming the file (exit status 2, nothing the user wrote overwritten) or, for a checkpoint, is passed
over for the newest intact one with a printed line saying so; the run then ends bit for bit as the
undamaged one did. ``serve --model`` on a truncated checkpoint is one line too."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nanoseek.cli.main import main

TINY = [
    "run.threads=1", "run.checkpoint_every=1", "run.keep_checkpoints=3",
    "task.options={ min_terms = 2, max_terms = 2, operators = \"+\", n_test = 4 }",
    "model.hidden_size=32", "model.intermediate_size=64", "model.moe_intermediate_size=16",
    "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2",
    "model.q_lora_rank=16", "model.kv_lora_rank=16", "model.qk_nope_head_dim=8", "model.qk_rope_head_dim=8",
    "model.v_head_dim=8", "model.n_routed_experts=4", "model.num_experts_per_tok=2",
    "pretrain.steps=4", "pretrain.batch_size=4", "pretrain.warmup_steps=1",
    "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2", "grpo.max_new_tokens=4", "grpo.eval_every=0",
    "eval.limit=2", "eval.samples=1", "eval.max_new_tokens=4",
]
TIMING = ("time", "per_s", "wall")


def nanoseek(*argv) -> int:
    threads = torch.get_num_threads()
    try:
        return main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)


def sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not any(t in k for t in TIMING)}
            for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """A finished tiny zero run: pretrain_checkpoint/, base/, checkpoints step-1 and step-2."""
    tmp = tmp_path_factory.mktemp("ref")
    os.environ["NANOSEEK_QUIET"] = "1"
    assert nanoseek("zero", "--out", tmp / "zero", *sets(TINY)) == 0
    assert {p.name for p in (tmp / "zero" / "checkpoints").iterdir()} == {"latest", "step-1", "step-2"}
    return tmp / "zero"


@pytest.fixture
def stopped(ref, tmp_path, monkeypatch) -> Path:
    """A copy of ``ref`` as a run killed after its last checkpoint, before its summary."""
    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    run = tmp_path / "zero"
    shutil.copytree(ref, run)
    (run / "summary.json").unlink()
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


DAMAGE = {
    "model.safetensors truncated": ("model.safetensors", truncate),
    "state.pt truncated": ("trainer_state/state.pt", truncate),
    "rng.pt garbage": ("trainer_state/rng.pt", lambda p: p.write_bytes(b"\x00garbage" * 10)),
    "meta.json not JSON": ("trainer_state/meta.json", lambda p: p.write_text("{\"step\": 2,")),
    "meta.json without step": ("trainer_state/meta.json", lambda p: p.write_text("{}")),
}


# ------------------------------------------------------------------------ checkpoints: fall back
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_intact_one(ref, stopped, capsys, kind):
    name, damage = DAMAGE[kind]
    damage(stopped / "checkpoints" / "step-2" / name)
    assert nanoseek("zero", "--resume", stopped) == 0
    out = capsys.readouterr().out
    assert f"checkpoint step-2 is damaged (cannot read {stopped / 'checkpoints' / 'step-2' / name}" in out
    assert "resuming from step-1, the newest intact checkpoint" in out
    # step 2 was redone from step-1: the same weights, metrics and final numbers as the undamaged run
    assert same_weights(ref / "checkpoints" / "step-2", stopped / "checkpoints" / "step-2")
    assert metrics(stopped) == metrics(ref)
    assert json.loads((stopped / "summary.json").read_text())["final"] == json.loads((ref / "summary.json").read_text())["final"]


def test_every_checkpoint_damaged_starts_grpo_again(ref, stopped, capsys):
    for step in (1, 2):
        truncate(stopped / "checkpoints" / f"step-{step}" / "model.safetensors")
    assert nanoseek("zero", "--resume", stopped) == 0
    out = capsys.readouterr().out
    assert "checkpoint step-1 is damaged" in out and "no intact checkpoint" in out
    assert "training starts again from step 0" in out
    assert same_weights(ref / "checkpoints" / "step-2", stopped / "checkpoints" / "step-2")
    assert metrics(stopped) == metrics(ref)


def test_damaged_pretraining_checkpoint_pretrains_again(ref, stopped, capsys):
    """Killed during pretraining (no base/ yet) with a damaged pretrain_checkpoint: pretraining is
    redone from step 0 (it is seeded), and its lines are logged once."""
    for name in ("base", "checkpoints"):
        shutil.rmtree(stopped / name)
    (stopped / "eval_base.json").unlink()
    lines = (stopped / "metrics.jsonl").read_text().splitlines(keepends=True)
    (stopped / "metrics.jsonl").write_text("".join(line for line in lines if '"phase": "pretrain"' in line))
    truncate(stopped / "pretrain_checkpoint" / "trainer_state" / "state.pt")
    assert nanoseek("zero", "--resume", stopped) == 0
    out = capsys.readouterr().out
    assert f"pretrain_checkpoint is damaged (cannot read {stopped / 'pretrain_checkpoint' / 'trainer_state' / 'state.pt'}" in out
    assert "pretraining starts again from step 0" in out
    assert same_weights(ref / "base", stopped / "base")
    assert metrics(stopped) == metrics(ref)


def test_unreadable_base_evaluation_is_evaluated_again(ref, stopped, capsys):
    (stopped / "eval_base.json").write_text("{\"metrics\": ")
    assert nanoseek("zero", "--resume", stopped) == 0
    assert f"cannot read {stopped / 'eval_base.json'}" in capsys.readouterr().out
    assert json.loads((stopped / "eval_base.json").read_text()) == json.loads((ref / "eval_base.json").read_text())
    assert metrics(stopped) == metrics(ref)  # the base evaluation's line once


def test_damaged_checkpoint_of_a_pretrain_corpus_run_falls_back(tmp_path, capsys, monkeypatch):
    """The shared resume path of ``nanoseek pretrain --data`` and ``nanoseek sft`` (``resume_from_latest``)."""
    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{a} + {b} = {a + b}\n" for a in range(20) for b in range(20)))
    args = ["pretrain", "--data", corpus, "--seq-len", 16, *sets(TINY), "--set", "pretrain.steps=3"]
    assert nanoseek(*args, "--out", tmp_path / "ref") == 0
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "ref", run)
    for name in ("base", "summary.json"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    shutil.rmtree(run / "checkpoints" / "step-3", ignore_errors=True)
    truncate(run / "checkpoints" / "step-2" / "trainer_state" / "state.pt")
    capsys.readouterr()
    assert nanoseek("pretrain", "--resume", run) == 0
    out = capsys.readouterr().out
    assert "checkpoint step-2 is damaged" in out and "resuming from step-1" in out
    assert same_weights(tmp_path / "ref" / "base", run / "base")
    assert metrics(run) == metrics(tmp_path / "ref")


# ------------------------------------------------------------------------ the rest: one line, untouched
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\x00\xff\xfe binary \x80", b"[run\nseed = ", b"# only a comment\n"])
def test_broken_config_is_one_line_and_never_overwritten(stopped, capsys, content):
    config = stopped / "config.toml"
    config.write_bytes(content)
    before = sorted(p.name for p in stopped.iterdir())
    assert nanoseek("zero", "--resume", stopped, "--steps", 3) == 2
    line = one_line_error(capsys)
    assert line.startswith("nanoseek zero: error: ") and str(config) in line
    assert config.read_bytes() == content  # not replaced by the built-in defaults
    assert sorted(p.name for p in stopped.iterdir()) == before  # no config.previous.toml, nothing new


@pytest.mark.parametrize("content", ["garbage", "{}"])
def test_garbage_tokenizer_is_one_line_naming_the_folder(stopped, capsys, content):
    shutil.rmtree(stopped / "checkpoints")  # stopped before GRPO: the base model is loaded from base/
    (stopped / "base" / "tokenizer.json").write_text(content)
    assert nanoseek("zero", "--resume", stopped) == 2
    assert f"cannot load the tokenizer in {stopped / 'base'}" in one_line_error(capsys)


def test_truncated_base_model_is_one_line_naming_the_file(stopped, capsys):
    shutil.rmtree(stopped / "checkpoints")
    truncate(stopped / "base" / "model.safetensors")
    assert nanoseek("zero", "--resume", stopped) == 2
    line = one_line_error(capsys)
    assert f"cannot read {stopped / 'base' / 'model.safetensors'}: " in line and "truncated" in line


def test_serve_on_a_truncated_checkpoint_is_one_line(stopped, capsys):
    truncate(stopped / "checkpoints" / "step-2" / "model.safetensors")
    for model in (stopped, stopped / "checkpoints" / "step-2"):  # the run directory names step-2 as latest
        assert nanoseek("serve", "--model", model, "--port", 0) == 2
        line = one_line_error(capsys)
        assert line.startswith("nanoseek serve: error: cannot read ")
        assert str(stopped / "checkpoints" / "step-2" / "model.safetensors") in line
