"""Recipe configs: strict keys, overrides, and the embedded CPU recipe."""

import pytest

from nanoseek.errors import NanoseekError
from nanoseek.config import apply_overrides, load_config_dict
from nanoseek.recipes.config import ModelSource, build_zero_config, recipe_dict


def test_builtin_recipe_loads():
    cfg = build_zero_config(load_config_dict("zero-cpu"))
    assert cfg.task.name == "chain"
    assert cfg.eval.temperature == 0.6 and cfg.eval.top_p == 0.95 and cfg.eval.samples >= 4
    assert cfg.model.config["hidden_size"] > 0 and cfg.model.path is None


def test_unknown_key_is_named():
    data = load_config_dict("zero-cpu")
    data["grpo"]["stepz"] = 3
    with pytest.raises(NanoseekError, match=r"unknown config key grpo\.stepz"):
        build_zero_config(data)
    with pytest.raises(NanoseekError, match="unknown config key recipe.bogus"):
        build_zero_config({"bogus": {}})


def test_overrides_parse_toml_values():
    data = apply_overrides({}, ["grpo.steps=7", "grpo.lr=1e-4", "task.name=gsm8k", "run.out=\"x y\""])
    assert data == {"grpo": {"steps": 7, "lr": 1e-4}, "task": {"name": "gsm8k"}, "run": {"out": "x y"}}
    with pytest.raises(NanoseekError, match="section.key=value"):
        apply_overrides({}, ["nonsense"])


def test_missing_recipe_is_named():
    with pytest.raises(NanoseekError, match="config 'nope' not found"):
        load_config_dict("nope")


def test_wrong_value_type_is_named():
    with pytest.raises(NanoseekError, match=r"config key grpo\.steps must be int, got 'abc'"):
        build_zero_config({"grpo": {"steps": "abc"}})
    with pytest.raises(NanoseekError, match=r"config key run\.seed must be int, got 1.5"):
        build_zero_config({"run": {"seed": 1.5}})
    cfg = build_zero_config({"eval": {"temperature": 1}, "grpo": {"epsilon_high": None}})
    assert cfg.eval.temperature == 1.0 and isinstance(cfg.eval.temperature, float)


def test_model_table_is_a_path_or_fresh_model_fields_and_is_written_back_as_read():
    data = load_config_dict("zero-cpu")
    cfg = build_zero_config(data)
    assert recipe_dict(cfg)["model"] == data["model"]  # config.toml holds [model] as the recipe gave it
    cfg = build_zero_config({**data, "model": {"path": "runs/x"}})
    assert cfg.model == ModelSource(path="runs/x") and recipe_dict(cfg)["model"] == {"path": "runs/x"}
    both = {**data["model"], "path": "runs/x"}
    assert ModelSource.from_table(both).to_table() == both
    with pytest.raises(NanoseekError, match=r"config key model must be dict, got 'runs/x'"):
        build_zero_config({"model": "runs/x"})
    with pytest.raises(NanoseekError, match=r"config key model\.path must be str"):
        build_zero_config({"model": {"path": 3}})


# ---------------------------------------------------------------------------- value ranges
from dataclasses import fields  # noqa: E402

from nanoseek.config import build, check_ranges, range_problem  # noqa: E402
from nanoseek.evaluation.evaluate import EvalConfig  # noqa: E402
from nanoseek.evaluation.run import EvalSettings  # noqa: E402
from nanoseek.recipes.config import RunConfig  # noqa: E402
from nanoseek.recipes.r1 import ColdStartConfig, RejectionConfig, build_r1_config  # noqa: E402
from nanoseek.recipes.rejection import RejectionSamplingConfig  # noqa: E402
from nanoseek.rl.config import GRPOConfig  # noqa: E402
from nanoseek.rl.presets import PRESET_NAMES  # noqa: E402
from nanoseek.tasks import get_task  # noqa: E402
from nanoseek.train.pretrain import PretrainConfig  # noqa: E402
from nanoseek.train.sft import SFTConfig  # noqa: E402

SECTIONS = {"grpo": GRPOConfig, "pretrain": PretrainConfig, "sft": SFTConfig, "eval": EvalConfig, "run": RunConfig,
            "sample": RejectionSamplingConfig, "cold_start": ColdStartConfig, "rejection": RejectionConfig}


def test_range_rules():
    assert [range_problem(v, ">= 1") for v in (1, 7, 0, -5)] == [None, None, ">= 1", ">= 1"]
    assert [range_problem(v, "(0, 1]") for v in (1e-9, 1, 0, 1.5)] == [None, None, "in (0, 1]", "in (0, 1]"]
    assert [range_problem(v, "[0, 1)") for v in (0, 0.5, 1)] == [None, None, "in [0, 1)"]
    assert [range_problem(v, "[0, 65535]") for v in (0, 65535, 65536, -1)] == [None, None, "in [0, 65535]", "in [0, 65535]"]
    assert range_problem(0.0, "> 0") == "> 0" and range_problem(1e-12, "> 0") is None
    for bad in (float("nan"), float("inf"), True, "3"):  # never a number in range, whatever the rule
        assert range_problem(bad, ">= 0") == "a finite number >= 0"
    assert range_problem(float("nan"), "[0, 1]") == "a finite number in [0, 1]"
    with pytest.raises(ValueError, match="not a range rule"):
        range_problem(1, "between 0 and 1")


@pytest.mark.parametrize("section", SECTIONS)
def test_every_numeric_config_field_has_a_range(section):
    """A value no field accepts (a large negative number; NaN for floats) is refused for every
    numeric field of every config section, naming the key: a new field without a rule fails here."""
    cls = SECTIONS[section]
    numeric = [f for f in fields(cls) if {"int", "float"} & {t.strip() for t in str(f.type).split("|")}]
    assert numeric
    for f in numeric:
        bad = [-1e9, float("nan"), float("inf")] if "float" in str(f.type) else [-10**9]
        for value in bad:
            with pytest.raises(NanoseekError, match=rf"^config key {section}\.{f.name} must be .*, got {value!r}$"):
                build(cls, {f.name: value}, section)


def test_boundaries_of_the_ranges():
    ok = {"eval": {"limit": 0, "temperature": 0.0, "top_p": 1.0}, "grpo": {"top_p": 1.0, "epsilon_low": 10.0, "beta": 0.0},
          "pretrain": {"think_fraction": 1.0, "min_lr_ratio": 0.0}, "run": {"threads": 0, "max_wall_seconds": 0.0},
          "sft": {"steps": 3, "epochs": 0.0}}
    for section, values in ok.items():
        cfg = build(SECTIONS[section], values, section)
        assert {k: getattr(cfg, k) for k in values} == values
    refused = [("eval", "limit", -3, ">= 0"), ("grpo", "top_p", 0.0, r"in \(0, 1\]"), ("grpo", "temperature", 0.0, "> 0"),
               ("grpo", "steps", 0, ">= 1"), ("grpo", "group_size", 1, ">= 2"), ("run", "checkpoint_every", 0, ">= 1"),
               ("sample", "repeat_max_period", 7, ">= 8"), ("sample", "decontam_threshold", 0.0, r"in \(0, 1\]"),
               ("rejection", "non_reasoning_fraction", 1.0, r"in \[0, 1\)"), ("grpo", "overlong_buffer", 65, r"in \[0, 64\]")]
    for section, key, value, rule in refused:
        with pytest.raises(NanoseekError, match=rf"^config key {section}\.{key} must be {rule}, got {value!r}$"):
            build(SECTIONS[section], {key: value}, section)
    with pytest.raises(NanoseekError, match="sft needs epochs > 0 or steps > 0"):
        build(SFTConfig, {"steps": 0, "epochs": 0.0}, "sft")


def test_the_builtin_recipes_and_every_preset_are_in_range():
    assert build_zero_config(load_config_dict("zero-cpu")).grpo.steps == 100
    assert build_r1_config(load_config_dict("r1-cpu")).reasoning_rl.group_size >= 2
    eps = {name: GRPOConfig.from_dict({"preset": name}).epsilon_low for name in PRESET_NAMES}
    assert eps == {"deepseekmath": 0.2, "r1_zero": 10.0, "r1_stage1": 10.0, "dr_grpo": 0.2, "dapo": 0.2}


def test_a_range_error_names_the_table_the_value_came_from():
    with pytest.raises(NanoseekError, match=r"^grpo\.lr must be > 0, got -0\.5$"):
        GRPOConfig(lr=-0.5)  # built directly: the default section name
    with pytest.raises(NanoseekError, match=r"^config key reasoning_rl\.lr must be > 0, got -1\.0$"):
        build_r1_config({"reasoning_rl": {"lr": -1.0}})
    with pytest.raises(NanoseekError, match=r"^config key cold_start\.sft\.batch_size must be >= 1, got 0$"):
        build_r1_config({"cold_start": {"sft": {"batch_size": 0}}})
    with pytest.raises(NanoseekError, match=r"^config key rejection\.sample\.top_p must be in \(0, 1\], got 2\.0$"):
        build_r1_config({"rejection": {"sample": {"top_p": 2.0}}})


def test_reward_weights_must_be_finite_numbers():
    with pytest.raises(NanoseekError, match=r"grpo\.reward_weights must map reward names to finite numbers, got \{'format': 'x'\}"):
        build_zero_config({"grpo": {"reward_weights": {"accuracy": 1.0, "format": "x"}}})
    assert build_zero_config({"grpo": {"reward_weights": {"accuracy": 1.0, "format": -0.5}}}).grpo.reward_weights["format"] == -0.5


def test_a_fresh_model_table_is_checked_when_the_config_is_built():
    data = load_config_dict("zero-cpu")
    data["model"]["hidden_size"] = -1
    with pytest.raises(NanoseekError, match=r"config section \[model\]: ModelConfig\.hidden_size must be a positive integer, got -1"):
        build_zero_config(data)
    data["model"] = {"num_experts_per_tok": 2, "bogus_key": 1}
    with pytest.raises(NanoseekError, match=r"config section \[model\]: ModelConfig: unknown config keys \['bogus_key'\]"):
        build_zero_config(data)
    assert build_zero_config({"model": {"path": "anything"}}).model.path == "anything"  # a path is checked when resolved


def test_task_options_and_eval_settings_are_range_checked():
    with pytest.raises(NanoseekError, match=r"^chain task option n_test must be >= 1, got -5$"):
        get_task("chain", n_test=-5)
    with pytest.raises(NanoseekError, match=r"^countdown task option max_target must be >= 10, got 5$"):
        get_task("countdown", max_target=5)
    with pytest.raises(NanoseekError, match=r"^countdown task option num_operands \(each\) must be >= 2, got 1$"):
        get_task("countdown", num_operands=[1, 3])
    for kw, msg in [({"limit": -3}, "--limit must be >= 1, got -3"), ({"timeout": 0.0}, "--timeout must be > 0, got 0.0"),
                    ({"retries": -1}, "--retries must be >= 0, got -1"), ({"top_p": 0.0}, r"--top-p must be in \(0, 1\], got 0.0"),
                    ({"temperature": -0.5}, "--temperature must be >= 0, got -0.5"), ({"concurrency": 0}, "--concurrency must be >= 1")]:
        with pytest.raises(NanoseekError, match=msg):
            EvalSettings(model="m", **kw)
    assert EvalSettings(model="m", limit=None, temperature=0.0).limit is None


def test_check_ranges_leaves_unset_optional_fields_alone():
    class Cfg:
        epsilon_high = None
        lr = 0.1

    check_ranges(Cfg(), "grpo", {"epsilon_high": ">= 0", "lr": "> 0"})
