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
