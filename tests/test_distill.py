"""Distillation: student specs, the dense CPU student's size, and (slow) a tiny end-to-end distillation."""

import json

import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.config import load_config_dict
from nanoseek.recipes.distill import build_distill_config
from nanoseek.model.config import ModelConfig
from nanoseek.model.transformer import DeepseekV3ForCausalLM


def _params(fields: dict) -> int:
    model = DeepseekV3ForCausalLM(ModelConfig.from_dict({**fields, "vocab_size": 263}))
    return sum(p.numel() for p in model.parameters())


def test_cpu_student_is_dense_and_at_most_a_quarter_of_the_teacher():
    data = load_config_dict("distill-cpu")
    cfg = build_distill_config({**data, "teacher": "t"})
    student = ModelConfig.from_dict({**cfg.student.config, "vocab_size": 263})
    assert not any(student.is_moe_layer(i) for i in range(student.num_hidden_layers))  # every layer dense
    model = DeepseekV3ForCausalLM(student)
    assert not model.moe_layers()
    teacher = load_config_dict("zero-cpu")["model"]
    assert _params(cfg.student.config) <= 0.25 * _params(teacher)


def test_config_needs_a_teacher_and_inherits_the_zero_recipe():
    with pytest.raises(NanoseekError, match="--teacher"):
        build_distill_config(load_config_dict("distill-cpu"))
    cfg = build_distill_config({**load_config_dict("distill-cpu"), "teacher": "runs/x"})
    zero = load_config_dict("zero-cpu")
    assert cfg.pretrain.steps == zero["pretrain"]["steps"] and cfg.grpo.lr == zero["grpo"]["lr"]
    assert cfg.task.name == zero["task"]["name"]


def test_student_spec(tmp_path):
    from nanoseek.cli.distill import student_spec

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert student_spec(str(tmp_path / "m")) == {"path": str(tmp_path / "m")}
    with pytest.raises(NanoseekError, match="not a model"):
        student_spec(str(tmp_path))
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"model_type": "deepseek_v3", "hidden_size": 32, "first_k_dense_replace": 2}))
    assert student_spec(str(f)) == {"hidden_size": 32, "first_k_dense_replace": 2}
    with pytest.raises(NanoseekError):
        student_spec(str(tmp_path / "missing.json"))


@pytest.mark.slow
def test_tiny_distillation_end_to_end(tmp_path):
    from nanoseek.recipes.distill import run_distill
    from nanoseek.recipes.r1 import build_r1_config, run_r1
    from nanoseek.config import load

    from test_pipeline import TINY

    torch.set_num_threads(1)
    teacher = tmp_path / "teacher"
    run_r1(build_r1_config(load("r1-cpu", TINY + ["compare_zero=false"])), out=str(teacher), until="cold_start")
    task = [o for o in TINY if o.startswith(("task.", "eval.", "run.threads"))]
    student = ["student.hidden_size=32", "student.num_hidden_layers=2", "student.first_k_dense_replace=2",
               "student.intermediate_size=64", "pretrain.steps=120", "pretrain.batch_size=32",
               "sample.prompts=48", "sample.samples=2", "sample.max_new_tokens=24", "sft.epochs=2", "sft.lr=3e-3",
               "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.max_new_tokens=24", "run.checkpoint_every=1000"]
    data = load("distill-cpu", task + student)
    cfg = build_distill_config({**data, "teacher": str(teacher)})
    out = run_distill(cfg, out=str(tmp_path / "d"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params_ratio"] < 0.5 and summary["teacher_samples"]["kept"] > 0
    assert {"pass@1", "well_formed"} <= set(summary["distilled"]) and summary["grpo_only"] is not None
    assert summary["grpo_only_steps"] >= 1
    report = (out / "report.md").read_text()
    assert "GRPO only (same wall time" in report and "distilled" in report
