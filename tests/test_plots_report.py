"""Plots are real PNGs; the report holds the numbers, plots and samples it was given."""

import re
import struct

import pytest

from nanoseek.runs.plots import PlotSpec, plot_run, series_of
from nanoseek.progress import Progress
from nanoseek.runs.report import format_duration, markdown_table, write_report
from nanoseek.runs.rundir import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(n=40, eval_every=10, thinking=True):
    out = []
    for s in range(1, n + 1):
        rec = {"step": s, "reward/mean": s / n, "reward/std": 0.1, "reward/accuracy": s / (2 * n),
               "reward/format": 1.0, "completion/mean_length": 50.0 + s, "loss": 0.1}
        if thinking:
            rec["completion/thinking"] = 0.6
        if s % eval_every == 0:
            rec["eval/pass@1"] = s / (4 * n)
        out.append(rec)
    return out


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def plotted(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots")
    return out, plot_run(_metrics(), out)


def test_plots_are_valid_pngs(plotted):
    out, paths = plotted
    assert [p.name for p in paths] == ["reward.png", "accuracy.png", "length.png", "thinking.png"]
    for p in paths:
        assert p.parent == out and p.stat().st_size > 10_000
        assert _png_size(p) == (800, 500)
    assert not list(out.glob(".tmp-*"))


def test_plots_skip_missing_keys(tmp_path):
    metrics = [{"step": s, "reward/mean": 0.1 * s, "completion/mean_length": 10} for s in range(5)]
    assert [p.name for p in plot_run(metrics, tmp_path)] == ["reward.png", "length.png"]
    assert plot_run([], tmp_path / "empty") == []


def test_plots_extra_series_and_nonfinite(tmp_path):
    metrics = [{"step": s, "loss": None if s == 2 else 1.0 / (s + 1), "kl": 0.01 * s}
               for s in range(6)]
    paths = plot_run(metrics, tmp_path, series={
        "loss": ["loss"], "kl": PlotSpec("KL to the reference", "nats", ("kl",))})
    assert [p.name for p in paths] == ["loss.png", "kl.png"]
    assert series_of(metrics, "loss")[0] == [0, 1, 3, 4, 5]


def test_markdown_table():
    table = markdown_table(["name", "score"], [["a|b", 0.5], ["multi\nline", None]])
    assert table.splitlines() == [
        "| name | score |", "| :--- | ---: |", "| a\\|b | 0.500 |", "| multi<br>line | – |"]
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [[1]])


def test_format_duration():
    assert format_duration(42.04) == "42.0 s" and format_duration(3725.4) == "1:02:05"


def test_report_contents(tmp_path, plotted):
    run = RunDir.create(tmp_path / "run", {"recipe": "zero", "train": {"lr": 1e-6, "steps": 40}})
    plots = plot_run(_metrics(), run.plots_dir)
    summary = {
        "command": "nanoseek zero --task countdown --out runs/x",
        "base": {"pass@1": 0.125, "well_formed": 0.25, "thinking": 0.0, "mean_length": 211.5},
        "final": {"pass@1": 0.375, "well_formed": 0.875, "thinking": 0.5, "mean_length": 140.25},
        "wall_time_s": 3725.0, "steps": 40, "reward_final": 0.71,
    }
    before = [{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"}],
               "completion": "I think ``` 5", "reward": 0.0, "answer": "4"}]
    after = [{"prompt": "What is 3*3?", "completion": "<think>3*3=9</think> 9", "reward": 1.0,
              "rewards": {"accuracy": 1.0, "format": 1.0}}]
    path = write_report(run, title="R1-Zero on Countdown", summary=summary, plots=plots,
                        samples_before=before, samples_after=after, notes=["CPU smoke run"])
    assert path == run.path / "report.md"
    text = path.read_text()
    assert text.startswith("# R1-Zero on Countdown\n")
    for row in ("| pass@1 | 0.125 | 0.375 | +0.250 |",
                "| well_formed | 0.250 | 0.875 | +0.625 |",
                "| thinking | 0.000 | 0.500 | +0.500 |",
                "| mean length | 211.50 | 140.25 | -71.25 |"):
        assert row in text, row
    assert "| metric | base | final | change |" in text
    for name in ("reward", "accuracy", "length", "thinking"):
        assert f"](plots/{name}.png)" in text
    assert "nanoseek zero --task countdown" in text and "1:02:05" in text and "**40**" in text
    assert "2+2?" in text and "What is 3*3?" in text and "<think>3*3=9</think> 9" in text
    assert "````text\nI think ``` 5\n````" in text  # fence longer than the backticks inside
    assert "reward **1.000**" in text and "- CPU smoke run" in text
    assert "| train.lr | 1e-06 |" in text and "| reward_final | 0.71 |" in text
    assert not re.search(r"\]\(/", text)  # no absolute links


def test_report_without_numbers(tmp_path):
    run = RunDir.create(tmp_path / "run", {})
    text = write_report(run, title="t", summary={}, plots=[], samples_before=[],
                        samples_after=[]).read_text()
    assert "| pass@1 | – | – | – |" in text and "_No samples recorded._" in text


def test_progress_quiet(monkeypatch, capsys):
    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    with Progress(3, "train") as bar:
        for _ in range(3):
            bar.update(reward=0.5, acc=None)
        assert bar.n == 3 and bar.disabled
    assert capsys.readouterr().err == ""


def test_progress_shows_metrics(monkeypatch, tmp_path):
    monkeypatch.delenv("NANOSEEK_QUIET", raising=False)
    log = tmp_path / "log.txt"
    with open(log, "w") as f, Progress(2, "train", file=f) as bar:
        bar.update(reward=0.25)
        bar.update(acc=0.5)
    text = log.read_text()
    assert "train" in text and "2/2" in text and "acc=0.500" in text
