"""Bad input to `nanoseek zero` is refused with one line naming the problem, and loses nothing."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nanoseek.cli.main import main


def run_cli(*args, env=None, cwd=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "nanoseek.cli.main", *args], capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=120)


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_unknown_task(tmp_path):
    p = run_cli("zero", "--task", "nosuchtask", "--out", str(tmp_path / "r"))
    one_line_error(p, "nosuchtask", "gsm8k")
    assert not (tmp_path / "r").exists()


def test_missing_data_file(tmp_path):
    p = run_cli("zero", "--task", "gsm8k", "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path / "r"))
    one_line_error(p, "gsm8k", "train.jsonl")


def test_unknown_config_key(tmp_path):
    p = run_cli("zero", "--set", "grpo.stepz=3", "--out", str(tmp_path / "r"))
    one_line_error(p, "grpo.stepz")


def test_model_path_not_a_model(tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "x.txt").write_text("hello")
    p = run_cli("zero", "--model", str(tmp_path / "notamodel"), "--out", str(tmp_path / "r"))
    one_line_error(p, "notamodel", "not a model")
    p = run_cli("zero", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    one_line_error(p, "missing", "does not exist")


def test_existing_run_directory_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    p = run_cli("zero", "--out", str(run))
    one_line_error(p, "not empty", "--resume")
    assert (run / "precious.txt").read_text() == "keep me"
    assert sorted(x.name for x in run.iterdir()) == ["precious.txt"]


def test_resume_of_a_non_run(tmp_path):
    p = run_cli("zero", "--resume", str(tmp_path / "nope"))
    one_line_error(p, "does not exist")


# ----------------------------------------------------------- values out of range (issue 19 item 8)
# Each is refused with one line before anything is loaded: the --model given does not exist, so an
# error naming the value (not the missing model) shows the value was checked first, and no run
# directory or output file is made.
OUT_OF_RANGE = [
    (["zero", "--model", "/nonexistent-model", "--set", "grpo.lr=-0.001"], ["grpo.lr", "> 0", "-0.001"]),
    (["zero", "--model", "/nonexistent-model", "--set", "grpo.temperature=-1"], ["grpo.temperature", "> 0"]),
    (["zero", "--model", "/nonexistent-model", "--set", "eval.limit=-3"], ["eval.limit", ">= 0", "-3"]),
    (["serve", "--model", "/nonexistent-model", "--port", "70000"], ["--port", "[0, 65535]", "70000"]),
]


def test_steps_below_one_is_refused_before_pretraining(tmp_path):
    """The issue's case: `nanoseek zero --steps -5` started a multi-minute pretraining run."""
    p = run_cli("zero", "--steps", "-5", "--out", str(tmp_path / "r"))
    one_line_error(p, "config key grpo.steps must be >= 1, got -5")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,needles", OUT_OF_RANGE, ids=[" ".join(a[:1] + a[3:5]) for a, _ in OUT_OF_RANGE])
def test_values_out_of_range_are_refused_before_loading(tmp_path, args, needles):
    p = run_cli(*args, cwd=tmp_path)
    line = one_line_error(p, *needles)
    assert "nonexistent-model" not in line
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # no run directory (runs/...) made


def in_process(capsys, *args) -> str:
    """``nanoseek ARGS`` run in this process (cheaper than a subprocess): exit status 2 and the one
    line on stderr, returned."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


FLAGS = [  # (arguments, the error line); every command's numeric flags that are not config fields
    (["chat", "--temperature", "-1"], "nanoseek chat: error: argument --temperature: must be >= 0, got -1"),
    (["chat", "--top-p", "0"], "nanoseek chat: error: argument --top-p: must be in (0, 1], got 0"),
    (["chat", "--max-tokens", "0"], "nanoseek chat: error: argument --max-tokens: must be >= 1, got 0"),
    (["chat", "--seed", "-3"], "nanoseek chat: error: argument --seed: must be >= 0, got -3"),
    (["serve", "--port", "-1"], "nanoseek serve: error: argument --port: must be in [0, 65535], got -1"),
    (["serve", "--max-batch", "0"], "nanoseek serve: error: argument --max-batch: must be >= 1, got 0"),
    (["serve", "--context-length", "0"], "nanoseek serve: error: argument --context-length: must be >= 1, got 0"),
    (["serve", "--port", "abc"], "nanoseek serve: error: argument --port: must be an integer, got 'abc'"),
    (["pretrain", "--data", "c.txt", "--seq-len", "1"], "nanoseek pretrain: error: argument --seq-len: must be >= 2, got 1"),
]


@pytest.mark.parametrize("args,want", FLAGS, ids=[" ".join(a) for a, _ in FLAGS])
def test_numeric_flags_are_checked_while_parsing(capsys, args, want):
    model = ["--model", "/nonexistent-model"] if args[0] in ("chat", "serve") else []
    assert in_process(capsys, *args, *model) == f"{want} (see nanoseek {args[0]} --help)"


CONFIG_VALUES = [  # values that reach a config field through a flag or --set, in every command
    (["pretrain", "--steps", "-5"], "config key pretrain.steps must be >= 1, got -5"),
    (["zero", "--set", "run.threads=-2"], "config key run.threads must be >= 0, got -2"),
    (["zero", "--set", "pretrain.batch_size=0"], "config key pretrain.batch_size must be >= 1, got 0"),
    (["zero", "--set", "grpo.lr=nan"], "config key grpo.lr must be a finite number > 0, got nan"),
    (["zero", "--set", "model.hidden_size=-1"], "config section [model]: ModelConfig.hidden_size must be a positive integer, got -1"),
    (["sft", "--data", "x.jsonl", "--lr", "-1"], "config key sft.lr must be > 0, got -1.0"),
    (["sft", "--data", "x.jsonl", "--epochs", "-1"], "config key sft.epochs must be >= 0, got -1.0"),
    (["sft", "--data", "x.jsonl", "--batch-size", "0"], "config key sft.batch_size must be >= 1, got 0"),
    (["sample", "--out", "o.jsonl", "--samples", "0"], "config key sample.samples must be >= 1, got 0"),
    (["sample", "--out", "o.jsonl", "--temperature", "-1"], "config key sample.temperature must be >= 0, got -1.0"),
    (["sample", "--out", "o.jsonl", "--threshold", "0"], "config key sample.decontam_threshold must be in (0, 1], got 0.0"),
    (["eval", "--limit", "-3"], "--limit must be >= 1, got -3"),
    (["eval", "--samples", "0"], "--samples must be >= 1, got 0"),
    (["eval", "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["eval", "--timeout", "0"], "--timeout must be > 0, got 0.0"),
    (["eval", "--retries", "-1"], "--retries must be >= 0, got -1"),
    (["eval", "--concurrency", "0"], "--concurrency must be >= 1, got 0"),
    (["r1", "--set", "reasoning_rl.lr=-1"], "config key reasoning_rl.lr must be > 0, got -1.0"),
    (["r1", "--set", "cold_start.examples=0"], "config key cold_start.examples must be >= 1, got 0"),
    (["distill", "--teacher", "/nonexistent-model", "--student", "smollm2-135m", "--set", "sample.samples=0"],
     "config key sample.samples must be >= 1, got 0"),
]


@pytest.mark.parametrize("args,want", CONFIG_VALUES, ids=[" ".join(a) for a, _ in CONFIG_VALUES])
def test_config_values_are_checked_before_loading(capsys, tmp_path, tmp_path_factory, monkeypatch, args, want):
    monkeypatch.chdir(tmp_path)  # a run that started anyway would write runs/ here
    monkeypatch.setenv("NANOSEEK_CACHE", str(tmp_path_factory.mktemp("cache")))  # a short name converted anyway
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fails at once instead of downloading
    fresh = args[0] == "distill" or "model.hidden_size=-1" in args  # --model would replace the [model] table
    model = [] if fresh else ["--model", "/nonexistent-model"]
    assert in_process(capsys, *args, *model, "--out", str(tmp_path / "out")) == f"nanoseek {args[0]}: error: {want}"
    assert sorted(x.name for x in tmp_path.iterdir()) == []


def test_task_options_are_checked_before_a_run_directory_is_made(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")  # resolves as a model folder; loading it would fail
    line = in_process(capsys, "zero", "--model", str(tmp_path / "m"), "--set", "task.options.n_test=-5",
                      "--out", str(tmp_path / "out"))
    assert line == "nanoseek zero: error: chain task option n_test must be >= 1, got -5"
    assert not (tmp_path / "out").exists()


def test_serve_refuses_a_port_in_use_before_loading(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = in_process(capsys, "serve", "--model", "/nonexistent-model", "--port", str(port))
    assert line == f"nanoseek serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert in_process(capsys, "serve", "--model", "/nonexistent-model", "--host", "no-such-host.invalid").startswith(
        "nanoseek serve: error: --host no-such-host.invalid: cannot resolve it")


def test_usage_errors_are_one_line(capsys):
    assert in_process(capsys, "zero", "--bogus") == "nanoseek: error: unrecognized arguments: --bogus (see nanoseek --help)"
    assert in_process(capsys, "r1", "--until", "nope").startswith("nanoseek r1: error: argument --until: invalid choice: 'nope'")
