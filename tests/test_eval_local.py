"""``nanoseek eval --model RUN_DIR`` on a tiny random nanoseek checkpoint: the three files, the same
samples as ``evaluate_policy`` (what ``nanoseek zero`` reports), resume; and, through ``nanoseek
serve``, the same numbers from the endpoint path at temperature 0."""

import json

import pytest
import torch

pytest.importorskip("nanoseek.model.load")
pytest.importorskip("nanoseek.policy.generate")

ARGS = ["--task", "gsm8k", "--limit", "3", "--samples", "2", "--max-tokens", "12"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory shaped like nanoseek zero's: config.toml + checkpoints/step-1 + latest."""
    from nanoseek.runs.checkpoint import save_checkpoint
    from nanoseek.model import DeepseekV3ForCausalLM, ModelConfig
    from nanoseek.runs.rundir import RunDir
    from nanoseek.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=len(tok), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                           num_hidden_layers=2, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                           qk_nope_head_dim=8, v_head_dim=8, num_attention_heads=2, num_key_value_heads=2,
                           num_nextn_predict_layers=0, max_position_embeddings=1024,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    run = RunDir.create(tmp_path_factory.mktemp("zero") / "run", {"task": {"name": "chain"}, "eval": {"samples": 2}})
    save_checkpoint(run, 1, DeepseekV3ForCausalLM(cfg), tok, {})
    return run.path


def test_eval_run_dir_matches_evaluate_policy(run_dir, tmp_path, data_dir, monkeypatch):
    from nanoseek.cli.main import main
    from nanoseek.evaluation.evaluate import evaluate_policy
    from nanoseek.model.load import load_model
    from nanoseek.policy.policy import Policy
    from nanoseek.tasks import get_task
    from nanoseek.tokenizer import load_tokenizer

    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(run_dir), *ARGS, "--out", str(out)]) == 0
    for name in ("results.json", "results.md", "samples.jsonl", "settings.json"):
        assert (out / name).is_file()
    res = json.loads((out / "results.json").read_text())["gsm8k"]
    assert res["n"] == 3 and res["samples"] == 2 and set(res["pass@k"]) == {"1", "2"} and "cons@2" in res
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    # R1-Zero template recorded in the checkpoint: the question goes in as is, no \boxed instruction
    task = get_task("gsm8k")
    assert rows[0]["prompt"] == task.examples("test")[0].prompt

    # the evaluator of the zero recipe, same settings and seed: the same samples, the same numbers
    ckpt = run_dir / "checkpoints" / "step-1"
    policy = Policy(load_model(ckpt), load_tokenizer(ckpt), None)
    metrics, results = evaluate_policy(policy, task, task.examples("test")[:3], samples=2, temperature=0.6,
                                       top_p=0.95, max_new_tokens=12, seed=1234, batch_size=256)
    for key, value in metrics.items():
        assert res[key] == (value if value is None else pytest.approx(value)), key
    assert [r.completion for r in results] == [r["completion"] for r in sorted(rows, key=lambda r: (r["problem"], r["sample"]))]

    # a rerun reuses everything; more samples only samples the new ones
    assert main(["eval", "--model", str(run_dir), *ARGS, "--out", str(out)]) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6
    more = [a if a != "2" else "3" for a in ARGS]
    assert main(["eval", "--model", str(run_dir), *more, "--out", str(out)]) == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == 9


def test_endpoint_through_nanoseek_serve_matches_local(run_dir, tmp_path, data_dir, monkeypatch):
    """End to end through ``nanoseek serve`` at temperature 0: the endpoint path reports the local
    numbers (same prompt: no system prompt, no instruction; greedy decoding)."""
    serve_app = pytest.importorskip("nanoseek.serve.app")
    from nanoseek.cli.main import main
    from nanoseek.serve.chat_model import ChatModel

    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    common = [*ARGS, "--temperature", "0", "--instruction", "none"]
    assert main(["eval", "--model", str(run_dir), *common, "--out", str(tmp_path / "local")]) == 0
    with serve_app.ServerThread(serve_app.create_app(ChatModel.load(run_dir, name="tiny"))) as url:
        assert main(["eval", "--endpoint", url + "/v1", "--model", "tiny", *common, "--timeout", "60",
                     "--out", str(tmp_path / "remote")]) == 0
    local = json.loads((tmp_path / "local" / "results.json").read_text())["gsm8k"]
    remote = json.loads((tmp_path / "remote" / "results.json").read_text())["gsm8k"]
    for key in ("pass@1", "pass@k", "cons@2", "truncated", "mean_length", "thinking", "well_formed", "n", "samples"):
        assert remote[key] == pytest.approx(local[key]), key
    assert remote["failed"] == 0


@pytest.mark.slow
def test_zero_run_summary_is_reproduced(tmp_path, data_dir, monkeypatch):
    """A (very short) nanoseek zero run, then: ``nanoseek eval`` with the run's eval settings and
    seed reproduces summary.json's final numbers; the README's GSM8K command runs on the CPU."""
    from nanoseek.cli.main import main

    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    run = tmp_path / "zero"
    sets = ["pretrain.steps=3", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.group_size=2", "eval.limit=8",
            "eval.samples=2", "grpo.eval_every=0", "run.checkpoint_every=1"]
    assert main(["zero", "--out", str(run)] + [a for s in sets for a in ("--set", s)]) == 0
    final = json.loads((run / "summary.json").read_text())["final"]
    out = tmp_path / "ev"
    assert main(["eval", "--model", str(run), "--limit", "8", "--samples", "2", "--max-tokens", "64",
                 "--out", str(out)]) == 0  # the task defaults to the run's own (chain, with its options)
    res = json.loads((out / "results.json").read_text())["chain"]
    assert {k: res[k] for k in final} == final

    out = tmp_path / "gsm8k"
    assert main(["eval", "--model", str(run), "--task", "gsm8k", "--limit", "50", "--samples", "4",
                 "--max-tokens", "256", "--out", str(out)]) == 0
    assert {"results.json", "results.md", "samples.jsonl"} <= {p.name for p in out.iterdir()}


def test_threads_flag_and_the_runs_thread_setting(run_dir, tmp_path, data_dir, monkeypatch):
    """Issue 19 item 11: ``--threads`` sets torch's threads while a local model samples (restored
    after); without it the run's ``run.threads`` is used, as training used it."""
    import nanoseek.evaluation.run as ev_run
    from nanoseek.cli.main import main

    monkeypatch.setenv("NANOSEEK_QUIET", "1")
    seen = []
    real = ev_run.generate_results

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        yield from real(*args, **kwargs)

    monkeypatch.setattr(ev_run, "generate_results", spy)
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    small = ["--task", "gsm8k", "--limit", "1", "--samples", "1", "--max-tokens", "4"]
    assert main(["eval", "--model", str(run_dir), *small, "--threads", str(other), "--out", str(tmp_path / "a")]) == 0
    assert seen == [other] and torch.get_num_threads() == before
    assert main(["eval", "--model", str(run_dir), *small, "--out", str(tmp_path / "b")]) == 0
    assert seen[-1] == before  # the run recorded no threads: torch's default, untouched
    assert ev_run.local_sampler(str(run_dir), 4, {"run": {"threads": other}}).threads == other
    assert ev_run.local_sampler(str(run_dir), 4, {"run": {"threads": other}}, threads=0).threads == 0
    assert ev_run.local_sampler(str(run_dir), 4, {}).threads == 0
    assert main(["eval", "--model", str(run_dir), *small, "--threads", "-1", "--out", str(tmp_path / "c")]) == 2
