"""Never lose a run: ``nanoseek zero`` killed with SIGKILL (between GRPO steps, in the middle of
writing a checkpoint, during pretraining, while writing the base model, and after the final
evaluation) and resumed gives the same metrics (all but timing fields), samples and weights as a
run that was never interrupted, its whole wall time and no temporary files. Tiny recipe,
subprocesses, one torch thread. ``bench/bench_resume_kill.py`` kills at random moments."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanoseek.atomic import TMP_PREFIX

SET = [
    "run.threads=1", "run.checkpoint_every=2", "run.keep_checkpoints=2",
    "task.options={ min_terms = 2, max_terms = 3, n_test = 8, n_train = 256 }",
    "model.hidden_size=32", "model.intermediate_size=64", "model.moe_intermediate_size=16",
    "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2",
    "model.q_lora_rank=16", "model.kv_lora_rank=16", "model.qk_nope_head_dim=8", "model.qk_rope_head_dim=8",
    "model.v_head_dim=8", "model.n_routed_experts=4", "model.num_experts_per_tok=2",
    "pretrain.steps=5", "pretrain.batch_size=8", "pretrain.warmup_steps=1",
    "grpo.steps=4", "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.max_new_tokens=16", "grpo.eval_every=2",
    "grpo.beta=0.04", "grpo.ref_reset_every=2", "grpo.mu=2",  # the reference is saved once it was reset
    "eval.limit=4", "eval.samples=2", "eval.max_new_tokens=16",
]
TIMING = re.compile(r"time|per_s|wall")

DRIVER = r'''
import os, signal, sys
mode, at = sys.argv[1], int(sys.argv[2])
if mode == "between":  # SIGKILL just before GRPO step index `at` runs
    from nanoseek.rl.trainer import GRPOTrainer
    step = GRPOTrainer.step
    def killing_step(self, s):
        if s == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, s)
    GRPOTrainer.step = killing_step
elif mode == "write":  # SIGKILL inside checkpoint step-`at`, after its files, before the rename
    import nanoseek.recipes.zero as zero
    run_zero = zero.run_zero
    def hook(tmp):
        if f"step-{at}-" in tmp.name:
            os.kill(os.getpid(), signal.SIGKILL)
    zero.run_zero = lambda *a, **k: run_zero(*a, **{**k, "fault_hook": hook})
elif mode == "pretrain":  # 3 s after logging pretraining step `at` (before its checkpoint), SIGKILL
    import time
    from nanoseek.runs.rundir import RunDir
    log = RunDir.log_metrics
    def killing_log(self, record):
        log(self, record)
        if record.get("pretrain/step") == at:
            time.sleep(3)
            os.kill(os.getpid(), signal.SIGKILL)
    RunDir.log_metrics = killing_log
elif mode == "base":  # SIGKILL just before base/ is renamed into place (written under .tmp-base-*)
    replace = os.replace
    def killing_replace(src, dst, *a, **k):
        if os.path.basename(os.fspath(dst)) == "base":
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst, *a, **k)
    os.replace = killing_replace
elif mode == "finish":  # SIGKILL after the final evaluation is logged and the report written
    from nanoseek.runs.rundir import RunDir
    RunDir.write_summary = lambda self, summary: os.kill(os.getpid(), signal.SIGKILL)
from nanoseek.cli.main import main
sys.exit(main(sys.argv[3:]))
'''


def _nanoseek(tmp_path: Path, args: list[str], mode: str = "none", at: int = -1) -> int:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "NANOSEEK_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, str(driver), mode, str(at), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    if mode == "none" or proc.returncode != -9:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode


def _records(run: Path, name: str) -> list[dict]:
    lines = (run / name).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not TIMING.search(k)} for line in lines if line.strip()]


def _weights(run: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors"))


def _zero(out: Path) -> list[str]:
    return ["zero", "--out", str(out), *[a for s in SET for a in ("--set", s)]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    _nanoseek(tmp, _zero(tmp / "run"))
    return tmp / "run"


@pytest.mark.parametrize(("mode", "at"), [("between", 3), ("write", 4)])
def test_killed_run_resumes_bit_for_bit(tmp_path, uninterrupted, mode, at):
    ref = uninterrupted
    run = tmp_path / "killed"
    assert _nanoseek(tmp_path, _zero(run), mode, at) == -9
    assert (run / "checkpoints" / "step-2").is_dir() and not (run / "checkpoints" / "step-4").exists()
    if mode == "write":  # the half-written checkpoint is under its temporary name only
        assert any(p.name.startswith(".tmp-step-4-") for p in (run / "checkpoints").iterdir())
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-2"
    killed_steps = [r["step"] for r in _records(run, "metrics.jsonl") if "reward/mean" in r]
    assert max(killed_steps) >= 3  # lines after the last checkpoint exist before the resume...
    _nanoseek(tmp_path, ["zero", "--resume", str(run)])
    assert _records(run, "metrics.jsonl") == _records(ref, "metrics.jsonl")  # ...and were redone identically
    assert _records(run, "samples.jsonl") == _records(ref, "samples.jsonl")
    a, b = _weights(ref, 4), _weights(run, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "summary.json").read_text())["final"] == json.loads((ref / "summary.json").read_text())["final"]
    ts = run / "checkpoints" / "step-4" / "trainer_state"
    state = torch.load(ts / "state.pt", weights_only=True)  # tensors and plain data only (issue 19)
    assert {"optimizer", "data_pos", "ref_model", "config"} <= state.keys() and (ts / "config.toml").is_file()
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    assert json.loads((run / "summary.json").read_text())["command"].startswith("nanoseek zero --out")


def _temporaries(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(f"{TMP_PREFIX}*"))


@pytest.mark.parametrize(("mode", "at"), [("pretrain", 3), ("base", 0), ("finish", 0)])
def test_killed_outside_grpo_leaves_no_trace(tmp_path, uninterrupted, mode, at):
    """Killed during pretraining (3 s after a step whose checkpoint is not yet written), before the
    base model's rename, or after the final evaluation's line: the resumed run's metrics equal the
    uninterrupted run's (no repeated pretraining or final-evaluation line), the seconds before the
    kill are counted in its wall time, and no temporary file or folder is left."""
    ref, run = uninterrupted, tmp_path / "killed"
    assert _nanoseek(tmp_path, _zero(run), mode, at) == -9
    killed = _records(run, "metrics.jsonl")
    if mode == "pretrain":
        assert [r["pretrain/step"] for r in killed] == [1, 2, 3] and not (run / "base").exists()
        assert json.loads((run / "wall.json").read_text())["seconds"] >= 1.5  # the 3 s slept before the kill
    if mode == "base":
        assert [p.name.split("-")[1] for p in run.glob(".tmp-base-*")] == ["base"] and not (run / "base").exists()
    if mode == "finish":
        assert killed == _records(ref, "metrics.jsonl") and not (run / "summary.json").exists()
    wall_before = json.loads((run / "wall.json").read_text())["seconds"] if (run / "wall.json").exists() else 0.0
    _nanoseek(tmp_path, ["zero", "--resume", str(run)])
    assert _records(run, "metrics.jsonl") == _records(ref, "metrics.jsonl")
    assert _records(run, "samples.jsonl") == _records(ref, "samples.jsonl")
    a, b = _weights(ref, 4), _weights(run, 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _temporaries(run) == []
    summary = json.loads((run / "summary.json").read_text())
    assert summary["wall_seconds"] > wall_before  # the killed call's seconds, then the resumed call's
    assert summary["command"].startswith("nanoseek zero --out")  # the command that started it, not --resume
