"""No silent ``except Exception`` (issue 19 item 18): each broad catch that was there now handles a
named failure and says why (a warning, a listed reason, a line in the report), and anything else gets out."""

import pytest

from nanoseek.runs import report as report_module
from nanoseek.runs.report import write_report
from nanoseek.runs.rundir import RunDir
from nanoseek.tasks import decontaminate
from nanoseek.tasks.decontaminate import eval_sources
from nanoseek.tokenizer import build_tokenizer
from nanoseek.train.sft_data import end_of_turn_id


def test_a_template_that_refuses_the_probe_falls_back_to_the_stop_token_and_says_so():
    t = build_tokenizer()
    t.chat_template = "{{ raise_exception('this template needs a system turn') }}"
    with pytest.warns(UserWarning, match=r"refused a one-turn probe \(this template needs a system turn\)"):
        assert end_of_turn_id(t) == 2  # <|end|>, the tokenizer's stop token
    t.chat_template = "{{ messages[0]['content'] + 1 }}"  # a broken template is not a refusal
    with pytest.raises(TypeError):
        end_of_turn_id(t)


def test_decontamination_skips_a_task_without_data_with_its_reason_and_lets_a_bug_out(tmp_path, monkeypatch):
    texts, skipped = eval_sources(tmp_path, names=["gsm8k", "chain"])
    assert sorted(texts) == ["chain"] and len(texts["chain"]) == 200
    assert list(skipped) == ["gsm8k"] and skipped["gsm8k"].startswith("GSM8K data not found: expected")

    class Broken:
        def examples(self, split):
            raise RuntimeError("a bug in a task")

    monkeypatch.setattr(decontaminate, "get_task", lambda name, data_dir=None: Broken())
    with pytest.raises(RuntimeError, match="a bug in a task"):
        eval_sources(tmp_path, names=["chain"])


def test_a_report_says_why_the_config_is_missing_and_lets_a_bug_out(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "run", {"grpo": {"lr": 1e-3}})
    run.config_path.write_text("grpo = [unclosed")
    text = write_report(run, title="t", summary={}, plots=[], samples_before=[], samples_after=[]).read_text()
    assert f"## Configuration\n\nNot shown: cannot parse {run.config_path}" in text
    assert "| grpo.lr |" not in text

    def broken(self):
        raise RuntimeError("a bug in read_config")

    monkeypatch.setattr(report_module.RunDir, "read_config", broken)
    with pytest.raises(RuntimeError, match="a bug in read_config"):
        write_report(run, title="t", summary={}, plots=[], samples_before=[], samples_after=[])
