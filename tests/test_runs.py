"""Run directory and atomic-write semantics: create/refuse/resume, log truncation, checkpoints."""

import json
import math
import os
import tomllib

import numpy as np
import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.atomic import atomic_dir, atomic_write_json, atomic_write_text, clear_temporaries
from nanoseek.runs.rundir import RunDir, default_path, dumps_toml, is_run_dir, to_jsonable

CONFIG = {"recipe": "zero", "seed": 0, "lr": 1e-6, "model": {"name": "tiny", "layers": [1, 2]}}


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "f.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_text(p, '{"a": 2}')
    assert json.loads(p.read_text()) == {"a": 2}
    assert [x.name for x in p.parent.iterdir()] == ["f.json"]


def test_atomic_write_json_unserialisable_keeps_old(tmp_path):
    p = tmp_path / "f.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]


def test_atomic_dir_success_and_replace(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_dir(final) as d:
        assert d.name == f".tmp-ckpt-{os.getpid()}" and d.parent == tmp_path
        (d / "w.txt").write_text("v1")
    assert (final / "w.txt").read_text() == "v1"
    with atomic_dir(final) as d:
        (d / "w.txt").write_text("v2")
    assert (final / "w.txt").read_text() == "v2"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_atomic_dir_keeps_previous_when_body_raises(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_dir(final) as d:
        (d / "w.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final) as d:
            (d / "w.txt").write_text("half")
            raise RuntimeError("boom")
    assert (final / "w.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


# ---------------------------------------------------------------- create / refuse / resume


def test_create_new_run_layout(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    assert (run.path / "config.toml").is_file()
    assert run.checkpoints_path.is_dir() and run.plots_dir.is_dir()
    assert run.read_config() == CONFIG
    assert is_run_dir(run.path) and not is_run_dir(tmp_path)


def test_create_in_empty_existing_dir(tmp_path):
    (tmp_path / "r").mkdir()
    assert RunDir.create(tmp_path / "r", CONFIG).read_config() == CONFIG


def test_create_refuses_non_empty_dir(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    with pytest.raises(NanoseekError, match="is not empty; pass --resume"):
        RunDir.create(d, CONFIG)
    assert (d / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(d)) == ["precious.txt"]


def test_create_refuses_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(NanoseekError, match="is a file"):
        RunDir.create(f, CONFIG)


def test_resume_requires_existing_run(tmp_path):
    with pytest.raises(NanoseekError, match="does not exist"):
        RunDir.create(tmp_path / "missing", CONFIG, resume=True)
    (tmp_path / "bare").mkdir()
    with pytest.raises(NanoseekError, match="config.toml"):
        RunDir.create(tmp_path / "bare", CONFIG, resume=True)


def test_resume_keeps_logs_and_tracks_config_change(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    run.log_metrics({"step": 1, "loss": 0.5})
    again = RunDir.create(tmp_path / "r", None, resume=True)
    assert again.read_metrics() == [{"step": 1, "loss": 0.5}]
    assert again.read_config() == CONFIG
    RunDir.create(tmp_path / "r", CONFIG, resume=True)  # same config: nothing kept aside
    assert not (run.path / "config.previous.toml").exists()
    changed = {**CONFIG, "seed": 1}
    RunDir.create(tmp_path / "r", changed, resume=True)
    assert run.read_config() == changed
    assert tomllib.loads((run.path / "config.previous.toml").read_text()) == CONFIG


def test_default_path(tmp_path):
    p = default_path("zero", root=tmp_path)
    assert p.parent == tmp_path and p.name.startswith("zero-") and len(p.name) == len("zero-") + 15
    p.mkdir()
    assert default_path("zero", root=tmp_path) != p  # taken: a "-2" suffix or a later second


# ---------------------------------------------------------------- config serialisation


def test_toml_round_trip():
    cfg = {
        "a": 1, "b": -2.5, "c": True, "d": "quote \" back\\slash\nnew\tline é", "e": [1, 2.0, "x"],
        "weird key": 3, "inf": math.inf, "t": {"x": {"y": [True, False]}, "z": 0.1},
        "rewards": [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.5}],
        "mixed": [1, {"k": [1, 2]}], "empty": {}, "small": 1e-7, "big": 12345678901234567890,
    }
    assert tomllib.loads(dumps_toml(cfg)) == cfg


def test_config_none_is_left_out_of_toml(tmp_path):
    cfg = {"run": {"out": None, "seed": 0}, "top": None}
    run = RunDir.create(tmp_path / "r", cfg)
    assert run.config_path.name == "config.toml"
    assert run.read_config() == {"run": {"seed": 0}}
    assert "# out is unset (None)" in run.config_path.read_text()
    RunDir.create(tmp_path / "r", cfg, resume=True)  # the same config: not seen as a change
    assert not (run.path / "config.previous.toml").exists()


def test_config_none_in_list_falls_back_to_json(tmp_path):
    run = RunDir.create(tmp_path / "r", {"b": [1, None]})
    assert run.config_path.name == "config.json"
    assert run.read_config() == {"b": [1, None]}
    run.write_config({"a": 1})  # back to TOML: the JSON file goes
    assert run.config_path.name == "config.toml" and not (run.path / "config.json").exists()


# ---------------------------------------------------------------- logs


def test_log_metrics_converts_scalars(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    run.log_metrics({
        "step": 1, "t": torch.tensor(0.25), "n": np.float32(0.5), "i": np.int64(3),
        "v": torch.tensor([1, 2]), "nan": float("nan"),
    })
    assert run.read_metrics() == [
        {"step": 1, "t": 0.25, "n": 0.5, "i": 3, "v": [1, 2], "nan": None}
    ]
    line = run.metrics_path.read_text()
    assert "NaN" not in line and line.endswith("\n")
    with pytest.raises(ValueError, match="step"):
        run.log_metrics({"loss": 1.0})
    with pytest.raises(TypeError):
        to_jsonable({"x": object()})


def test_torn_last_line_is_skipped_and_closed_off(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    run.log_metrics({"step": 1})
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 2, "lo')  # a crash mid-write
    with pytest.warns(RuntimeWarning, match="malformed"):
        assert run.read_metrics() == [{"step": 1}]
    run.log_metrics({"step": 2})
    with pytest.warns(RuntimeWarning):
        assert run.read_metrics() == [{"step": 1}, {"step": 2}]


def test_truncate_logs_after(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    for s in range(1, 6):
        run.log_metrics({"step": s, "reward/mean": s / 10})
        run.log_samples([{"prompt": "p", "completion": f"c{s}", "reward": 1.0}] * 2, step=s)
    run.log_samples([{"prompt": "no step", "completion": "x"}])
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 6, "rew')
    with pytest.warns(RuntimeWarning, match="malformed"):  # the torn line is dropped too
        run.truncate_logs_after(3)
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    samples = run.read_samples()
    assert [r.get("step") for r in samples] == [1, 1, 2, 2, 3, 3, None]
    assert not any(p.name.startswith(".tmp-") for p in run.path.iterdir())
    run.truncate_logs_after(0)
    assert run.read_metrics() == [] and len(run.read_samples()) == 1


# ---------------------------------------------------------------- checkpoints


def _write_ckpt(run, step):
    with run.checkpoint(step) as d:
        (d / "model.safetensors").write_bytes(b"w" * 8)
        (d / "trainer_state").mkdir()


def test_checkpoint_and_latest(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    assert run.latest_checkpoint() is None and run.latest_step() is None
    _write_ckpt(run, 10)
    _write_ckpt(run, 20)
    assert run.latest_checkpoint() == run.checkpoint_dir(20)
    assert (run.checkpoints_path / "latest").read_text().strip() == "step-20"
    run.mark_latest(10)  # `latest` wins over the highest number
    assert run.latest_step() == 10
    with pytest.raises(FileNotFoundError):
        run.mark_latest(99)


def test_latest_checkpoint_ignores_half_written_tmp(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    _write_ckpt(run, 5)
    (run.checkpoints_path / "latest").unlink()
    half = run.checkpoints_path / ".tmp-step-9-12345"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert run.latest_checkpoint() == run.checkpoint_dir(5)
    assert [s for s, _ in run.checkpoints()] == [5]
    (run.checkpoints_path / "latest").write_text("step-9\n")  # names a missing folder
    assert run.latest_checkpoint() == run.checkpoint_dir(5)


def test_failed_checkpoint_changes_nothing(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    _write_ckpt(run, 1)
    with pytest.raises(KeyboardInterrupt):
        with run.checkpoint(2) as d:
            (d / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert run.latest_step() == 1 and [s for s, _ in run.checkpoints()] == [1]
    assert sorted(os.listdir(run.checkpoints_path)) == ["latest", "step-1"]


def test_prune_checkpoints(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    for s in (1, 2, 3, 4):
        _write_ckpt(run, s)
    stale = run.checkpoints_path / ".tmp-step-5-999999999"  # no such process
    stale.mkdir()
    removed = run.prune_checkpoints(2)
    assert sorted(p.name for p in removed) == ["step-1", "step-2"]
    assert [s for s, _ in run.checkpoints()] == [3, 4] and not stale.exists()
    run.mark_latest(3)
    _write_ckpt(run, 5)
    run.mark_latest(3)  # e.g. the newest is a bad one: latest stays protected
    run.prune_checkpoints(1)
    assert [s for s, _ in run.checkpoints()] == [3, 5]
    assert run.prune_checkpoints(None) == []
    with pytest.raises(ValueError):
        run.prune_checkpoints(0)


def test_summary_round_trip(tmp_path):
    run = RunDir.create(tmp_path / "r", CONFIG)
    assert run.read_summary() is None
    run.write_summary({"steps": 3, "final": {"pass@1": torch.tensor(0.5)}})
    assert run.read_summary() == {"steps": 3, "final": {"pass@1": 0.5}}


# ---------------------------------------------------------------- after a crash (issue 19)


def test_temporary_names_carry_the_writers_pid(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(os.path.basename(a)), real(a, b))[1])
    atomic_write_text(tmp_path / "metrics.jsonl", "x\n")
    with atomic_dir(tmp_path / "step-4"):
        pass
    assert seen[0].startswith(f".tmp-metrics.jsonl-{os.getpid()}.") and seen[1] == f".tmp-step-4-{os.getpid()}"


def test_clear_temporaries_removes_dead_writers_and_restores_a_set_aside_folder(tmp_path):
    dead = 2**22 + 12345  # above Linux's pid_max: no such process
    for name in (f".tmp-step-4-{dead}", f".tmp-step-4-{dead}-old", f".tmp-base-{dead}-old",
                 f".tmp-step-2-{os.getpid()}", f".tmp-step-6-{os.getppid()}"):
        (tmp_path / name).mkdir()
    (tmp_path / f".tmp-base-{dead}-old" / "config.json").write_text("{}")
    (tmp_path / "base").mkdir()  # base/ made it: its set-aside predecessor goes
    (tmp_path / f".tmp-latest-{dead}.k2_x9").write_text("step-4\n")
    (tmp_path / ".tmp-latest-legacy_name").write_text("step-2\n")  # before names had a pid
    removed = clear_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".tmp-step-4-{dead}", f".tmp-base-{dead}-old",
                                                     f".tmp-latest-{dead}.k2_x9", ".tmp-latest-legacy_name"])
    # step-4 was renamed aside and the new one never arrived: the complete old one is back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["base", "step-4", f".tmp-step-2-{os.getpid()}", f".tmp-step-6-{os.getppid()}"])  # live writers' stay


def test_resume_clears_temporaries_of_a_killed_run(tmp_path):
    run = RunDir.create(tmp_path / "run", CONFIG)
    dead = 2**22 + 7
    for folder in (run.path, run.checkpoints_path, run.plots_dir):
        (folder / f".tmp-x-{dead}").mkdir()
    RunDir.create(run.path, None, resume=True)
    assert list(run.path.rglob(".tmp-*")) == []


@pytest.mark.parametrize("content", [b"", b"  \n# nothing\n", b"\xff\xfe\x00", b"x = [1,", b"[1, 2]"])
def test_unreadable_config_is_one_line_and_kept(tmp_path, content):
    run = RunDir.create(tmp_path / "run", CONFIG)
    (run.path / "config.toml").write_bytes(content)
    with pytest.raises(NanoseekError) as e:
        RunDir.create(run.path, CONFIG, resume=True)
    assert str(run.path / "config.toml") in str(e.value) and "\n" not in str(e.value)
    assert (run.path / "config.toml").read_bytes() == content
    assert not (run.path / "config.previous.toml").exists()


def test_record_command_keeps_the_first(tmp_path):
    run = RunDir.create(tmp_path / "run", CONFIG)
    assert run.commands() == []
    assert run.record_command("nanoseek zero --out run") == ["nanoseek zero --out run"]
    assert run.record_command("nanoseek zero --resume run") == ["nanoseek zero --out run", "nanoseek zero --resume run"]
    assert RunDir(run.path).commands()[0] == "nanoseek zero --out run"


def test_put_metrics_takes_the_place_of_the_line_it_redoes(tmp_path):
    run = RunDir.create(tmp_path / "run", CONFIG)
    for rec in ({"step": 0, "a": 1}, {"step": 0, "eval": 0.1}, {"step": 1, "a": 2}, {"step": 0, "eval": 0.9}):
        run.log_metrics(rec)
    run.put_metrics({"step": 0, "eval": 0.5}, lambda r: "eval" in r)
    assert run.read_metrics() == [{"step": 0, "a": 1}, {"step": 0, "eval": 0.5}, {"step": 1, "a": 2}]
    run.put_metrics({"step": 2, "eval": 0.7}, lambda r: r["step"] == 2)  # no match: appended
    assert run.read_metrics()[-1] == {"step": 2, "eval": 0.7}
    assert run.drop_records(lambda r: r["step"] == 0) == 2
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
