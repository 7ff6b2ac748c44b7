"""Resuming a finished run (issue 19, item 9) says it is complete and changes nothing: no repeated
final evaluation, no rewritten report or summary, the command that started it kept. A conflicting
``--out`` or changed settings are refused in one line; more steps continue it, and its report
still shows the command that started it."""

import json
import os
from pathlib import Path

import pytest
import torch

from nanoseek.cli.main import main

TINY = [
    "run.threads=1", "run.checkpoint_every=1",
    "task.options={ min_terms = 2, max_terms = 2, operators = \"+\", n_test = 4 }",
    "model.hidden_size=32", "model.intermediate_size=64", "model.moe_intermediate_size=16",
    "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2",
    "model.q_lora_rank=16", "model.kv_lora_rank=16", "model.qk_nope_head_dim=8", "model.qk_rope_head_dim=8",
    "model.v_head_dim=8", "model.n_routed_experts=4", "model.num_experts_per_tok=2",
    "pretrain.steps=2", "pretrain.batch_size=4", "pretrain.warmup_steps=1",
    "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2", "grpo.max_new_tokens=4", "grpo.eval_every=0",
    "eval.limit=2", "eval.samples=1", "eval.max_new_tokens=4",
]


def nanoseek(*argv) -> int:
    threads = torch.get_num_threads()
    try:
        return main([str(a) for a in argv])
    finally:
        torch.set_num_threads(threads)


def sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder``: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Finished tiny runs: ``zero``, ``pretrain`` (on a text corpus) and ``sft`` (of zero's base)."""
    tmp = tmp_path_factory.mktemp("finished")
    os.environ["NANOSEEK_QUIET"] = "1"
    assert nanoseek("zero", "--out", tmp / "zero", *sets(TINY)) == 0
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(f"{a} + {b} = {a + b}\n" for a in range(20) for b in range(20)))
    assert nanoseek("pretrain", "--data", corpus, "--seq-len", 16, "--out", tmp / "pretrain", *sets(TINY)) == 0
    chats = tmp / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}+1?"},
                                                      {"role": "assistant", "content": str(a + 1)}]}) + "\n"
                             for a in range(8)))
    assert nanoseek("sft", "--model", tmp / "zero" / "base", "--data", chats, "--steps", 2, "--batch-size", 2,
                    "--max-length", 64, "--out", tmp / "sft", "--set", "run.threads=1") == 0
    return tmp


@pytest.mark.parametrize(("command", "what"), [("zero", "2 GRPO steps"), ("pretrain", "2 pretraining steps"),
                                               ("sft", "fine-tuning finished")])
def test_resuming_a_complete_run_changes_nothing(runs, capsys, command, what):
    run = runs / command
    before = snapshot(run)
    original = json.loads((run / "summary.json").read_text())["command"]
    assert original.startswith(f"nanoseek {command} ")
    capsys.readouterr()
    assert nanoseek(command, "--resume", run) == 0
    assert f"{run} is already complete ({what}); nothing to do" in capsys.readouterr().out
    assert snapshot(run) == before  # no file written, none added: no second final evaluation, same report


@pytest.mark.parametrize("command", ["zero", "pretrain", "sft", "r1", "distill"])
def test_a_conflicting_out_is_refused(runs, tmp_path, capsys, command):
    run = runs / "zero"
    before = snapshot(run)
    assert nanoseek(command, "--resume", run, "--out", tmp_path / "elsewhere") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nanoseek {command}: error: --out {tmp_path / 'elsewhere'} conflicts with --resume {run}: a "
                   "resumed run stays in its own directory (drop --out, or start a new run with --out alone)"]
    assert not (tmp_path / "elsewhere").exists() and snapshot(run) == before


def test_the_same_out_is_not_a_conflict(runs, capsys):
    run = runs / "zero"
    assert nanoseek("zero", "--resume", run, "--out", f"{run}/") == 0
    assert "is already complete" in capsys.readouterr().out


def test_changed_settings_on_a_complete_run_are_refused(runs, capsys):
    run = runs / "zero"
    before = snapshot(run)
    assert nanoseek("zero", "--resume", run, "--set", "eval.limit=1", "--set", "run.seed=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run} is a complete run (2 GRPO steps); this call changes eval.limit, run.seed" in err[0]
    assert snapshot(run) == before  # config.toml kept, no config.previous.toml


def test_more_steps_continue_a_complete_run_and_keep_its_command(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "zero"
    shutil.copytree(runs / "zero", run)
    original = json.loads((run / "summary.json").read_text())["command"]
    finals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["step"] == 2]
    assert nanoseek("zero", "--resume", run, "--steps", 3) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["command"] == original
    assert json.loads((run / "commands.json").read_text()) == [original, f"nanoseek zero --resume {run} --steps 3"]
    report = (run / "report.md").read_text()
    assert f"{original}\n# resumed with: nanoseek zero --resume {run} --steps 3\n" in report
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r["step"] == 2] == finals  # step 2's lines (GRPO, then its final evaluation) kept
    assert [sorted(k for k in r if k.startswith("eval/")) != [] for r in records if r["step"] == 3] == [False, True]
    assert (run / "config.previous.toml").is_file()
