"""Bad input to `nanoseek zero` is refused with one line naming the problem, and loses nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


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
