"""`nanoseek zero` end to end on a shortened recipe (smaller model, fewer steps), twice with the
same seed: both runs give identical summary.json numbers, and the run directory holds everything
the main-job issue names (config, metrics, samples, checkpoints, plots, report, summary)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHORT = [
    "run.threads=1", "run.checkpoint_every=3",
    "task.options={ min_terms = 4, max_terms = 4, operators = \"+\", n_test = 16, n_train = 512 }",
    "model.hidden_size=48", "model.intermediate_size=96", "model.moe_intermediate_size=32",
    "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2",
    "model.q_lora_rank=16", "model.kv_lora_rank=16", "model.qk_nope_head_dim=8", "model.qk_rope_head_dim=8",
    "model.v_head_dim=8", "model.n_routed_experts=4", "model.num_experts_per_tok=2",
    "pretrain.steps=40", "pretrain.batch_size=16", "pretrain.warmup_steps=5",
    "grpo.steps=6", "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.max_new_tokens=24", "grpo.eval_every=3",
    "eval.limit=16", "eval.samples=4", "eval.max_new_tokens=24",
]


def run_zero(tmp_path: Path, name: str, seed: int = 3) -> Path:
    out = tmp_path / name
    args = ["zero", "--out", str(out), "--seed", str(seed)] + [a for s in SHORT for a in ("--set", s)]
    env = {**os.environ, "NANOSEEK_QUIET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "nanoseek.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in proc.stdout
    return out


def numbers(summary: dict) -> dict:
    return {k: summary[k] for k in ("base", "final", "steps", "task", "seed")}


def test_zero_twice_same_seed_same_numbers_and_complete_run_dir(tmp_path):
    a = run_zero(tmp_path, "a")
    b = run_zero(tmp_path, "b")
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert numbers(sa) == numbers(sb)
    for part in ("base", "final"):
        for key in ("pass@1", "well_formed", "thinking", "mean_length"):
            assert 0 <= sa[part][key] <= (1 if key != "mean_length" else 24), (part, key, sa[part][key])
    assert sa["steps"] == 6 and sa["wall_seconds"] > 0

    # the run directory
    metrics = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    grpo = [m for m in metrics if m.get("phase") != "pretrain" and "reward/mean" in m]
    assert [m["step"] for m in grpo] == [1, 2, 3, 4, 5, 6]
    assert all("completion/mean_length" in m and "reward/accuracy" in m for m in grpo)
    assert [m["step"] for m in metrics if "eval/pass@1" in m] == [0, 3, 6]
    assert (a / "samples.jsonl").read_text().strip()
    assert (a / "checkpoints" / "latest").read_text().strip() == "step-6"
    ckpt = a / "checkpoints" / "step-6"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "trainer_state/state.pt", "trainer_state/rng.pt", "trainer_state/meta.json"):
        assert (ckpt / f).is_file(), f
    assert "chat_template" in json.loads((ckpt / "tokenizer_config.json").read_text())
    for png in ("reward.png", "accuracy.png", "length.png"):
        data = (a / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    report = (a / "report.md").read_text()
    assert f"| pass@1 | {sa['base']['pass@1']:.3f} | {sa['final']['pass@1']:.3f} |" in report
    assert "plots/length.png" in report and "## Samples after training" in report
    assert (a / "config.toml").is_file()
