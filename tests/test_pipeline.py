"""The R1 recipe: config resolution, stage data, --from, and (slow) a tiny end-to-end run of every stage."""

import json

import pytest
import torch

from nanoseek.errors import NanoseekError
from nanoseek.config import load_config_dict
from nanoseek.recipes.r1 import STAGES, R1Pipeline, build_r1_config, builtin_non_reasoning, worked_candidates
from nanoseek.config import load


def test_r1_recipe_shares_the_zero_recipes_base_and_adds_the_language_reward():
    cfg = build_r1_config(load_config_dict("r1-cpu"))
    zero = load_config_dict("zero-cpu")
    assert cfg.model.to_table() == zero["model"] and cfg.task.name == zero["task"]["name"]
    assert cfg.pretrain.steps == zero["pretrain"]["steps"] and cfg.eval.limit == zero["eval"]["limit"]
    assert cfg.zero_grpo.steps == zero["grpo"]["steps"]
    for stage in (cfg.reasoning_rl, cfg.all_rl):
        assert stage.reward_weights.get("language", 0) > 0 and stage.reward_weights.get("accuracy") == 1.0
    assert cfg.cold_start.source == "worked" and cfg.rejection.non_reasoning == "builtin"


def test_overrides_and_unknown_keys():
    cfg = build_r1_config(load("r1-cpu", ["pretrain.steps=7", "model.hidden_size=32", "rejection.sample.samples=3"]))
    assert cfg.pretrain.steps == 7 and cfg.model.config["hidden_size"] == 32 and cfg.model.config["num_hidden_layers"] > 0
    assert cfg.rejection.sample.samples == 3
    with pytest.raises(NanoseekError, match=r"unknown config key rejection.sample.bogus"):
        build_r1_config(load("r1-cpu", ["rejection.sample.bogus=1"]))
    assert build_r1_config(load("r1-cpu", ["model.path=x"])).model.to_table() == {"path": "x"}


def test_cold_start_data_is_readable_worked_solutions_that_pass_the_filters():
    from nanoseek.recipes.rejection import RejectionSamplingConfig, chat_record, filter_candidates
    from nanoseek.train.sft_data import encode_chat
    from nanoseek.tasks.chain import ChainTask
    from nanoseek.tokenizer import build_tokenizer

    task = ChainTask(n_test=50, n_train=200)
    cands = worked_candidates(task, 100, seed=0)
    kept, counts, _ = filter_candidates(cands, RejectionSamplingConfig())
    assert len(kept) == 100 and sum(counts.values()) == 0
    test_ids = {e.id for e in task.examples("test")}
    assert not test_ids & {c.id for c in kept}
    rec = chat_record(kept[0])
    p = next(e for e in task.examples("train") if e.id == kept[0].id)
    assert rec["messages"][1]["reasoning_content"] == p.metadata["worked"]
    assert rec["messages"][1]["content"] == f"<answer>{p.answer}</answer>"
    (ex,) = encode_chat(rec["messages"], build_tokenizer())
    assert sum(ex.completion) > len(p.metadata["worked"])


def test_builtin_non_reasoning_data_answers_without_a_cot():
    chats = builtin_non_reasoning(10, seed=0)
    assert len(chats) == 10
    for messages in chats:
        assert "reasoning_content" not in messages[1] and messages[1]["content"].startswith("<answer>")


def test_from_stage_removes_that_stage_and_later_ones(tmp_path):
    from nanoseek.runs.rundir import RunDir

    cfg = build_r1_config(load_config_dict("r1-cpu"))
    run = RunDir.create(tmp_path / "r", {})
    for name in ("base", "zero", "cold_start", "reasoning_rl", "rejection", "rejection_sft", "all_rl"):
        (run.path / name).mkdir()
    (run.path / "cold_start_data.jsonl").write_text("")
    pipe = R1Pipeline(cfg, run)
    pipe.reset_from("reasoning_rl")
    left = sorted(p.name for p in run.path.iterdir() if p.name not in ("checkpoints", "plots", "config.toml"))
    assert left == ["base", "cold_start", "cold_start_data.jsonl", "zero"]
    pipe.reset_from("cold_start")
    assert not (run.path / "cold_start_data.jsonl").exists() and (run.path / "zero").exists()


def test_cli_refuses_from_without_resume(capsys):
    from nanoseek.cli.main import main

    assert main(["r1", "--from", "all_rl"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["r1", "--resume", "/nonexistent/run"]) == 2


# ------------------------------------------------------------------------------------ end to end
TINY = ["run.threads=1", "task.options.min_terms=2", "task.options.max_terms=3", "task.options.n_test=24", "task.options.n_train=500",
        "model.hidden_size=48", "model.num_hidden_layers=2", "model.q_lora_rank=32", "model.kv_lora_rank=32",
        "model.intermediate_size=96", "model.moe_intermediate_size=32", "model.max_position_embeddings=128",
        "pretrain.steps=200", "pretrain.batch_size=32", "pretrain.warmup_steps=10",
        "eval.limit=24", "eval.samples=2", "eval.max_new_tokens=24",
        "zero_grpo.steps=3", "zero_grpo.prompts_per_step=4", "zero_grpo.group_size=4", "zero_grpo.max_new_tokens=24",
        "zero_grpo.eval_every=0",
        "cold_start.examples=256", "cold_start.sft.epochs=2", "cold_start.sft.lr=3e-3",
        "reasoning_rl.steps=2", "reasoning_rl.prompts_per_step=4", "reasoning_rl.group_size=4",
        "reasoning_rl.max_new_tokens=24",
        "rejection.sample.prompts=64", "rejection.sample.samples=2", "rejection.sample.max_new_tokens=24",
        "rejection.sft.epochs=2", "rejection.sft.lr=3e-3", "rejection.non_reasoning_fraction=0.1",
        "all_rl.steps=2", "all_rl.prompts_per_step=4", "all_rl.group_size=4", "all_rl.max_new_tokens=24",
        "run.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def tiny_r1(tmp_path_factory):
    from nanoseek.recipes.r1 import run_r1

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("r1") / "run"
    run_r1(build_r1_config(load("r1-cpu", TINY)), out=str(out))
    return out


@pytest.mark.slow
def test_tiny_r1_runs_every_stage_and_reports_each(tiny_r1):
    summary = json.loads((tiny_r1 / "summary.json").read_text())
    assert set(summary["stages"]) == set(STAGES)
    for stage in STAGES:
        assert {"pass@1", "well_formed", "thinking", "mean_length"} <= set(summary["stages"][stage])
    counts = summary["rejection"]
    assert counts["kept"] > 0 and counts["candidates"] == 128
    report = (tiny_r1 / "report.md").read_text()
    for title in ("base model", "R1-Zero", "cold-start", "reasoning RL", "rejection sampling", "all scenarios"):
        assert title in report
    from nanoseek.model.load import resolve_model_dir

    assert resolve_model_dir(tiny_r1).resolve() == resolve_model_dir(tiny_r1 / "all_rl").resolve()  # the run is its final model


@pytest.mark.slow
def test_tiny_r1_resume_from_a_stage_redoes_it(tiny_r1):
    from nanoseek.recipes.r1 import run_r1

    before = json.loads((tiny_r1 / "summary.json").read_text())["stages"]
    cfg = build_r1_config(load("r1-cpu", TINY))
    run_r1(cfg, out=str(tiny_r1), resume=True, from_stage="all_rl")
    after = json.loads((tiny_r1 / "summary.json").read_text())["stages"]
    assert after["rejection_sft"] == before["rejection_sft"]  # earlier stages untouched
    assert after["all_rl"]["pass@1"] == pytest.approx(before["all_rl"]["pass@1"])  # same seeds: same result


def test_a_wrong_value_type_names_the_key():
    with pytest.raises(NanoseekError, match=r"rejection.sft.epochs must be float"):
        build_r1_config(load("r1-cpu", ['rejection.sft.epochs="two"']))
    cfg = build_r1_config(load("r1-cpu", ["cold_start.sft.lr=1"]))
    assert isinstance(cfg.cold_start.sft.lr, float)
